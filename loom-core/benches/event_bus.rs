//! EventBus publish → deliver throughput on one core, with tracing off, on-but-not-sampled, and
//! sampled; in the summary table also sampled with the real export path (OTLP/gRPC to a running
//! release `loom-sidecar`, when it is built), and both sampled rows again as they were before the
//! span sink (SDK spans, the SDK's batch processor). Criterion measures the first three; a
//! summary table with the ratios and the spans dropped follows.
//!
//! Run: `cargo bench -p loom-core --bench event_bus` (add `-- --quick` for a shorter run).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

mod common {
    pub mod exporters;
    pub mod sidecar;
}

use criterion::{Criterion, Throughput};
use loom_core::event_bus::{EventBus, QoS};
use loom_core::proto::Event;
use loom_core::telemetry::{LoomProvider, SamplerSpec, SinkConfig};
use opentelemetry::trace::TracerProvider as _;
use tracing_subscriber::layer::SubscriberExt;

use common::exporters::{export_runtime, NullExporter};

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// No tracing subscriber installed.
    Off,
    /// tracing-opentelemetry installed, sampler drops every trace.
    NotSampled,
    /// tracing-opentelemetry installed, every span sampled and handed to the span sink with a
    /// discarding exporter.
    Sampled,
    /// As `Sampled`, before the sink: SDK spans and the SDK's batch processor.
    SampledBefore,
    /// As `Sampled`, with the provider `init_telemetry` installs exporting to [`OTLP_ENDPOINT`].
    SampledOtlp,
    /// As `SampledOtlp`, before the sink: SDK spans, the SDK's batch processor, the same OTLP
    /// exporter.
    SampledOtlpBefore,
}

/// The running sidecar's OTLP endpoint, set once in `main`.
static OTLP_ENDPOINT: OnceLock<String> = OnceLock::new();

/// The exporter's gRPC connection runs here, off the bench's one-core runtime (which only runs
/// while a batch is measured), as it runs on the bridge's worker threads in the binary.
impl Mode {
    fn label(self) -> &'static str {
        match self {
            Mode::Off => "tracing off",
            Mode::NotSampled => "tracing on, not sampled",
            Mode::Sampled => "tracing on, sampled",
            Mode::SampledBefore => "tracing on, sampled — before the sink",
            Mode::SampledOtlp => "tracing on, sampled, OTLP to loom-sidecar",
            Mode::SampledOtlpBefore => {
                "tracing on, sampled, OTLP to loom-sidecar — before the sink"
            }
        }
    }

    fn sampled(self) -> bool {
        !matches!(self, Mode::Off | Mode::NotSampled)
    }
}

const BATCH: u64 = 10_000;

/// What the published events look like.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Shape {
    /// No metadata at all: the bus adds the trace context map from scratch.
    Bare,
    /// As an agent's event reaches the bus through the bridge: `loom.sender` and the agent's
    /// `traceparent` already in the metadata.
    Agent,
}

impl Shape {
    fn label(self) -> &'static str {
        match self {
            Shape::Bare => "bare event",
            Shape::Agent => "agent event (sender + traceparent)",
        }
    }
}

fn event(shape: Shape) -> Event {
    let mut e = Event {
        r#type: "reading".into(),
        payload: br#"{"value": 21.5}"#.to_vec(),
        ..Event::default()
    };
    if shape == Shape::Agent {
        e.metadata.insert("loom.sender".into(), "sensor".into());
        e.metadata.insert(
            "traceparent".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        );
    }
    e
}

/// Publishes `n` events through the bus to one reliable subscriber on a single-threaded runtime.
fn run_batch(rt: &tokio::runtime::Runtime, bus: &EventBus, n: u64, shape: Shape) -> Duration {
    rt.block_on(async {
        let mut sub = bus
            .subscribe_with_capacity("sensor.*", QoS::Reliable, 1024)
            .expect("subscribe");
        let consumer = tokio::spawn(async move {
            let mut got = 0u64;
            while got < n {
                if sub.recv().await.is_none() {
                    break;
                }
                got += 1;
            }
            got
        });
        let start = Instant::now();
        for _ in 0..n {
            bus.publish("sensor.data", event(shape))
                .await
                .expect("publish");
        }
        let got = consumer.await.expect("consumer");
        let elapsed = start.elapsed();
        assert_eq!(got, n, "every event delivered");
        elapsed
    })
}

/// Runs `f` under `mode`'s tracing set-up; with the spans exported by the time the provider has
/// shut down (every one accepted, unless the queue was full or an export failed).
fn with_mode<T>(mode: Mode, f: impl FnOnce() -> T) -> (T, u64) {
    let spec = if mode == Mode::NotSampled {
        SamplerSpec::AlwaysOff
    } else {
        SamplerSpec::AlwaysOn
    };
    let endpoint = OTLP_ENDPOINT.get();
    match mode {
        Mode::Off => (f(), 0),
        Mode::NotSampled | Mode::Sampled | Mode::SampledOtlp => {
            // As `init_telemetry` sets a process up.
            let loom = match (mode, endpoint) {
                (Mode::SampledOtlp, Some(endpoint)) => {
                    let _enter = export_runtime().enter();
                    loom_core::telemetry::otlp_provider(spec, "bench", endpoint).expect("exporter")
                }
                _ => LoomProvider::new(spec, NullExporter, SinkConfig::from_env(), None)
                    .expect("span sink"),
            };
            let subscriber = tracing_subscriber::registry().with(loom.layer("bench"));
            let out = tracing::subscriber::with_default(subscriber, f);
            let _ = loom.shutdown();
            (out, loom.sink().stats().exported)
        }
        Mode::SampledBefore | Mode::SampledOtlpBefore => {
            let exported = Arc::new(AtomicU64::new(0));
            let otlp = match (mode, endpoint) {
                (Mode::SampledOtlpBefore, Some(endpoint)) => Some(endpoint.as_str()),
                _ => None,
            };
            let provider =
                common::exporters::provider_before(spec, otlp, &exported, export_runtime());
            let subscriber = tracing_subscriber::registry().with(
                loom_core::telemetry::otel_layer_for(provider.tracer("bench"), spec),
            );
            let out = tracing::subscriber::with_default(subscriber, f);
            let _ = provider.shutdown();
            (out, exported.load(Ordering::Relaxed))
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

fn criterion_benches(c: &mut Criterion) {
    let mut group = c.benchmark_group("event_bus_publish_deliver");
    group.throughput(Throughput::Elements(BATCH));
    group.sample_size(10);
    for mode in [Mode::Off, Mode::NotSampled, Mode::Sampled] {
        group.bench_function(mode.label(), |b| {
            let _ = with_mode(mode, || {
                let rt = runtime();
                let bus = EventBus::default();
                b.iter_custom(|iters| {
                    (0..iters)
                        .map(|_| run_batch(&rt, &bus, BATCH, Shape::Bare))
                        .sum::<Duration>()
                });
            });
        });
    }
    group.finish();
}

/// Events per second over about `window` of batches, and how many of the spans those events
/// made (one each when sampled, warm-up included) were dropped instead of exported.
fn rate(mode: Mode, shape: Shape, window: Duration) -> (f64, Spans) {
    let ((rate, published), exported) = with_mode(mode, || {
        let rt = runtime();
        let bus = EventBus::default();
        run_batch(&rt, &bus, BATCH, shape); // warm-up
        let mut total = Duration::ZERO;
        let mut events = 0u64;
        while total < window {
            total += run_batch(&rt, &bus, BATCH, shape);
            events += BATCH;
        }
        (events as f64 / total.as_secs_f64(), events + BATCH)
    });
    let made = if mode.sampled() { published } else { 0 };
    (
        rate,
        Spans {
            made,
            dropped: made.saturating_sub(exported),
        },
    )
}

#[derive(Default, Clone, Copy)]
struct Spans {
    made: u64,
    dropped: u64,
}

impl Spans {
    fn cell(self) -> String {
        if self.made == 0 {
            "–".to_owned()
        } else {
            format!(
                "{} of {} ({:.1} %)",
                self.dropped,
                self.made,
                self.dropped as f64 * 100.0 / self.made as f64
            )
        }
    }
}

/// The best rate of each case over interleaved rounds: on a shared machine, load from other
/// processes comes and goes, and interleaving exposes every case to it alike, while the best
/// round is the one least disturbed. Spans are summed over all rounds.
fn rates(cases: &[(Shape, Mode)], rounds: usize) -> Vec<(f64, Spans)> {
    let mut best = vec![(0.0f64, Spans::default()); cases.len()];
    for _ in 0..rounds {
        for (i, (shape, mode)) in cases.iter().enumerate() {
            let (r, spans) = rate(*mode, *shape, Duration::from_millis(300));
            best[i].0 = best[i].0.max(r);
            best[i].1.made += spans.made;
            best[i].1.dropped += spans.dropped;
        }
    }
    best
}

fn main() {
    let mut c = Criterion::default()
        .configure_from_args()
        .measurement_time(Duration::from_secs(3))
        .warm_up_time(Duration::from_millis(500));
    criterion_benches(&mut c);
    c.final_summary();

    let dir = std::env::temp_dir().join(format!("loom-event-bus-bench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&dir);
    let sidecar = common::sidecar::start(&dir);
    let mut modes = vec![
        Mode::Off,
        Mode::NotSampled,
        Mode::Sampled,
        Mode::SampledBefore,
    ];
    match &sidecar {
        Some(sc) => {
            let _ = OTLP_ENDPOINT.set(sc.endpoint.clone());
            modes.extend([Mode::SampledOtlp, Mode::SampledOtlpBefore]);
        }
        None => eprintln!("target/release/loom-sidecar or nullbackend not built: no OTLP row"),
    }
    // For profiling: `LOOM_BENCH_MODES="<label>|<label>"` keeps only those modes (the first
    // one is then the ratios' base).
    if let Ok(only) = std::env::var("LOOM_BENCH_MODES") {
        modes.retain(|m| only.split('|').any(|l| l == m.label()));
    }
    let cases: Vec<(Shape, Mode)> = [Shape::Bare, Shape::Agent]
        .iter()
        .flat_map(|s| modes.iter().map(move |m| (*s, *m)))
        .collect();
    let best = rates(&cases, 7);
    println!();
    println!(
        "EventBus publish → deliver, one core (current-thread runtime), {BATCH}-event batches, best of 7 interleaved rounds"
    );
    println!("| event | mode | events/s | vs tracing off | spans dropped |");
    println!("|---|---|---:|---:|---:|");
    for (i, (shape, mode)) in cases.iter().enumerate() {
        let off = best[i - i % modes.len()].0;
        println!(
            "| {} | {} | {:.0} | {:.2} | {} |",
            shape.label(),
            mode.label(),
            best[i].0,
            best[i].0 / off,
            best[i].1.cell()
        );
    }
    for (shape, at) in [(Shape::Bare, 0), (Shape::Agent, modes.len())] {
        println!(
            "{}: tracing overhead when not sampled {:.1} % of throughput (target ≤ 10 %)",
            shape.label(),
            (1.0 - best[at + 1].0 / best[at].0) * 100.0
        );
    }
    drop(sidecar);
    let _ = std::fs::remove_dir_all(&dir);
}
