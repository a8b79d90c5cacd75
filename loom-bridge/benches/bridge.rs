//! Bridge publish → delivery over loopback gRPC, with real tonic clients: throughput (pipelined)
//! and latency (one event in flight at a time), with tracing sampled and not sampled, and sampled
//! with the real export path (OTLP/gRPC to a running release `loom-sidecar`, when it is built);
//! both sampled rows also as before the span sink (SDK spans, the SDK's batch processor), and
//! every sampled row with the spans it dropped.
//!
//! Run: `cargo bench -p loom-bridge --bench bridge` (prints one table, well under a minute).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "../../loom-core/benches/common/exporters.rs"]
mod exporters;
#[path = "../../loom-core/benches/common/sidecar.rs"]
mod sidecar;

use exporters::{export_runtime, NullExporter};

use loom_bridge::{serve, Bridge, BridgeConfig};
use loom_core::proto::bridge_client::BridgeClient;
use loom_core::proto::client_message::Msg as ClientMsg;
use loom_core::proto::server_message::Msg as ServerMsg;
use loom_core::proto::{
    ClientMessage, Event, Hello, Publish, Qos, RegisterAgentRequest, ServerMessage, Subscription,
};
use loom_core::telemetry::{LoomProvider, SamplerSpec, SinkConfig};
use opentelemetry::trace::TracerProvider as _;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer as _;

struct Agent {
    tx: mpsc::Sender<ClientMessage>,
    rx: Streaming<ServerMessage>,
}

async fn join(addr: &str, id: &str, topics: &[&str]) -> Agent {
    let mut c = BridgeClient::connect(format!("http://{addr}"))
        .await
        .expect("connect");
    let session = c
        .register_agent(RegisterAgentRequest {
            agent_id: id.into(),
            subscriptions: topics
                .iter()
                .map(|t| Subscription {
                    pattern: (*t).into(),
                    qos: Qos::Reliable as i32,
                })
                .collect(),
            ..Default::default()
        })
        .await
        .expect("register")
        .into_inner()
        .session_id;
    let (tx, rx) = mpsc::channel(1024);
    tx.send(ClientMessage {
        msg: Some(ClientMsg::Hello(Hello {
            agent_id: id.into(),
            session_id: session,
        })),
    })
    .await
    .expect("hello");
    let rx = c
        .event_stream(ReceiverStream::new(rx))
        .await
        .expect("stream")
        .into_inner();
    Agent { tx, rx }
}

fn publish(seq: u64, sent_at: Duration) -> ClientMessage {
    let mut payload = seq.to_le_bytes().to_vec();
    payload.extend_from_slice(&(sent_at.as_nanos() as u64).to_le_bytes());
    ClientMessage {
        msg: Some(ClientMsg::Publish(Publish {
            topic: "bench.data".into(),
            event: Some(Event {
                payload,
                ..Event::default()
            }),
        })),
    }
}

struct Figures {
    events_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

async fn run_case(rt_base: Instant) -> Figures {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let bridge = Bridge::new(BridgeConfig {
        dashboard_listen: None,
        ..BridgeConfig::default()
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(bridge, listener, None, async {
        let _ = stop_rx.await;
    }));
    let publisher = join(&addr, "pub", &[]).await;
    let mut subscriber = join(&addr, "sub", &["bench.*"]).await;
    // Acks are not the subject here: drain them.
    let mut pub_rx = publisher.rx;
    tokio::spawn(async move { while let Ok(Some(_)) = pub_rx.message().await {} });

    // Throughput: pipelined publishes, count deliveries.
    let n: u64 = 20_000;
    let start = Instant::now();
    let tx = publisher.tx.clone();
    tokio::spawn(async move {
        for i in 0..n {
            if tx.send(publish(i, rt_base.elapsed())).await.is_err() {
                return;
            }
        }
    });
    let mut got = 0u64;
    while got < n {
        match subscriber
            .rx
            .message()
            .await
            .expect("stream")
            .expect("open")
            .msg
        {
            Some(ServerMsg::Delivery(_)) => got += 1,
            _ => continue,
        }
    }
    let events_per_s = n as f64 / start.elapsed().as_secs_f64();

    // Latency: one event in flight.
    let mut lat = Vec::with_capacity(2000);
    for i in 0..2000u64 {
        publisher
            .tx
            .send(publish(i, rt_base.elapsed()))
            .await
            .unwrap();
        loop {
            if let Some(ServerMsg::Delivery(d)) =
                subscriber.rx.message().await.unwrap().unwrap().msg
            {
                let p = d.event.unwrap().payload;
                let sent = u64::from_le_bytes(p[8..16].try_into().unwrap());
                lat.push(rt_base.elapsed().as_nanos() as u64 - sent);
                break;
            }
        }
    }
    lat.sort_unstable();
    let pct = |q: f64| lat[((lat.len() as f64 - 1.0) * q) as usize] as f64 / 1000.0;
    let _ = stop_tx.send(());
    let _ = server.await;
    Figures {
        events_per_s,
        p50_us: pct(0.50),
        p99_us: pct(0.99),
    }
}

enum Case {
    Off,
    /// Spans to the span sink with a discarding exporter.
    Null(SamplerSpec),
    /// Spans to `telemetry::otlp_provider` (what the bridge binary installs) sending to this
    /// OTLP endpoint.
    Otlp(SamplerSpec, String),
    /// As `Null`, before the sink: SDK spans, the SDK's batch processor.
    NullBefore(SamplerSpec),
    /// As `Otlp`, before the sink: SDK spans, the SDK's batch processor, the same exporter.
    OtlpBefore(SamplerSpec, String),
}

/// The exporter's gRPC connection runs here, as in the EventBus bench: off the bench's one
/// thread (which stands for one core of the bridge), as it runs on any of the bridge's worker
/// threads in the binary. Before the span sink it shared the bench's thread, so the OTLP rows
/// of earlier README tables are not comparable with these.
/// Spans each sampled event makes: `bridge.publish`, `event_bus.publish`, `bridge.forward`.
const SPANS_PER_EVENT: u64 = 3;
/// Events each case publishes: the pipelined run and the latency run.
const EVENTS: u64 = 20_000 + 2_000;
/// Interleaved rounds of all cases.
const ROUNDS: usize = 7;

/// The figures, and the spans exported by the time the provider shut down.
fn measure(case: &Case) -> (Figures, u64) {
    // One thread: the bridge, both clients and the (thread-local) tracing subscriber share it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let base = Instant::now();
    let loom = match case {
        Case::Off => return (rt.block_on(run_case(base)), 0),
        Case::Null(s) => {
            LoomProvider::new(*s, NullExporter, SinkConfig::from_env(), None).expect("span sink")
        }
        Case::Otlp(s, endpoint) => {
            let _enter = export_runtime().enter();
            loom_core::telemetry::otlp_provider(*s, "bench", endpoint).expect("exporter")
        }
        Case::NullBefore(s) | Case::OtlpBefore(s, _) => return measure_before(case, *s, rt, base),
    };
    let subscriber = tracing_subscriber::registry().with(
        loom.layer("bench")
            .with_filter(loom_core::telemetry::otel_filter()),
    );
    let out = tracing::subscriber::with_default(subscriber, || rt.block_on(run_case(base)));
    // Flushing blocks until the export thread is done; not on a runtime thread.
    let l = loom.clone();
    let _ = rt.block_on(async move { tokio::task::spawn_blocking(move || l.shutdown()).await });
    (out, loom.sink().stats().exported)
}

fn measure_before(
    case: &Case,
    s: SamplerSpec,
    rt: tokio::runtime::Runtime,
    base: Instant,
) -> (Figures, u64) {
    let exported = Arc::new(AtomicU64::new(0));
    let otlp = match case {
        Case::OtlpBefore(_, endpoint) => Some(endpoint.as_str()),
        _ => None,
    };
    let provider = exporters::provider_before(s, otlp, &exported, export_runtime());
    let subscriber = tracing_subscriber::registry().with(
        loom_core::telemetry::otel_layer_for(provider.tracer("bench"), s)
            .with_filter(loom_core::telemetry::otel_filter()),
    );
    let out = tracing::subscriber::with_default(subscriber, || rt.block_on(run_case(base)));
    let _ =
        rt.block_on(async move { tokio::task::spawn_blocking(move || provider.shutdown()).await });
    (out, exported.load(Ordering::Relaxed))
}

fn main() {
    // `cargo bench` passes --bench; nothing else to parse.
    let dir = tempfile::tempdir().expect("temp dir");
    let sidecar = sidecar::start(dir.path());
    let mut cases = vec![
        ("tracing off", Case::Off),
        (
            "tracing on, not sampled",
            Case::Null(SamplerSpec::AlwaysOff),
        ),
        ("tracing on, sampled", Case::Null(SamplerSpec::AlwaysOn)),
        (
            "tracing on, sampled — before the sink",
            Case::NullBefore(SamplerSpec::AlwaysOn),
        ),
    ];
    match &sidecar {
        Some(sc) => cases.extend([
            (
                "tracing on, sampled, OTLP to loom-sidecar",
                Case::Otlp(SamplerSpec::AlwaysOn, sc.endpoint.clone()),
            ),
            (
                "tracing on, sampled, OTLP to loom-sidecar — before the sink",
                Case::OtlpBefore(SamplerSpec::AlwaysOn, sc.endpoint.clone()),
            ),
        ]),
        None => eprintln!("target/release/loom-sidecar or nullbackend not built: no OTLP row"),
    }
    // For profiling one case: `LOOM_BENCH_CASE=<its name>`.
    if let Ok(only) = std::env::var("LOOM_BENCH_CASE") {
        cases.retain(|(name, _)| *name == only);
    }
    // Interleaved rounds, as the EventBus bench does: on a shared machine one run of a case can
    // swing 2×; every case sees the same background load, and the best round is the least
    // disturbed. Latency is the median over rounds; spans are summed.
    let mut rounds: Vec<Vec<(Figures, u64)>> = cases.iter().map(|_| Vec::new()).collect();
    for _ in 0..ROUNDS {
        for (i, (_, case)) in cases.iter().enumerate() {
            rounds[i].push(measure(case));
        }
    }
    println!(
        "loom-bridge publish → delivery over loopback gRPC (bridge and both clients on one thread), best of {ROUNDS} interleaved rounds"
    );
    println!(
        "| mode | events/s (pipelined) | vs tracing off | p50 latency µs | p99 latency µs | spans dropped |"
    );
    println!("|---|---:|---:|---:|---:|---:|");
    let best = |r: &[(Figures, u64)]| r.iter().map(|f| f.0.events_per_s).fold(0.0, f64::max);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let off_rate = best(&rounds[0]);
    for ((name, case), r) in cases.iter().zip(&rounds) {
        let made = match case {
            Case::Off | Case::Null(SamplerSpec::AlwaysOff) => 0,
            _ => EVENTS * SPANS_PER_EVENT * r.len() as u64,
        };
        let exported: u64 = r.iter().map(|f| f.1).sum();
        let dropped = if made == 0 {
            "–".to_owned()
        } else {
            let d = made.saturating_sub(exported);
            format!("{d} of {made} ({:.1} %)", d as f64 * 100.0 / made as f64)
        };
        let rate = best(r);
        println!(
            "| {name} | {rate:.0} | {:.2} | {:.0} | {:.0} | {dropped} |",
            rate / off_rate,
            median(r.iter().map(|f| f.0.p50_us).collect()),
            median(r.iter().map(|f| f.0.p99_us).collect()),
        );
    }
    drop(sidecar);
}
