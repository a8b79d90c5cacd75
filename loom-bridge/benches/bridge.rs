//! Bridge publish → delivery over loopback gRPC, with real tonic clients: throughput (pipelined)
//! and latency (one event in flight at a time), with tracing sampled and not sampled, and sampled
//! with the real export path (OTLP/gRPC to a running release `loom-sidecar`, when it is built).
//!
//! Run: `cargo bench -p loom-bridge --bench bridge` (prints one table, about half a minute).

use std::time::{Duration, Instant};

#[path = "../../loom-core/benches/common/sidecar.rs"]
mod sidecar;

use loom_bridge::{serve, Bridge, BridgeConfig};
use loom_core::proto::bridge_client::BridgeClient;
use loom_core::proto::client_message::Msg as ClientMsg;
use loom_core::proto::server_message::Msg as ServerMsg;
use loom_core::proto::{
    ClientMessage, Event, Hello, Publish, Qos, RegisterAgentRequest, ServerMessage, Subscription,
};
use loom_core::telemetry::SamplerSpec;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer as _;

#[derive(Debug)]
struct NullExporter;

impl SpanExporter for NullExporter {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Ok(())
    }
}

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
    /// Spans to a batch processor with a discarding exporter.
    Null(SamplerSpec),
    /// Spans to `telemetry::otlp_provider` (what the bridge binary installs) sending to this
    /// OTLP endpoint.
    Otlp(SamplerSpec, String),
}

fn measure(case: &Case) -> Figures {
    // One thread: the bridge, both clients and the (thread-local) tracing subscriber share it.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let base = Instant::now();
    let (provider, s) = match case {
        Case::Off => return rt.block_on(run_case(base)),
        Case::Null(s) => (
            loom_core::telemetry::provider_builder(*s)
                .with_batch_exporter(NullExporter)
                .build(),
            *s,
        ),
        Case::Otlp(s, endpoint) => {
            // The tonic exporter's connection lives on this runtime.
            let _enter = rt.enter();
            let p = loom_core::telemetry::otlp_provider(*s, "bench", endpoint).expect("exporter");
            (p, *s)
        }
    };
    let subscriber = tracing_subscriber::registry().with(
        loom_core::telemetry::otel_layer_for(provider.tracer("bench"), s)
            .with_filter(loom_core::telemetry::otel_filter()),
    );
    let out = tracing::subscriber::with_default(subscriber, || rt.block_on(run_case(base)));
    // The last batch goes out through this runtime: keep it running while the processor flushes.
    let _ =
        rt.block_on(async move { tokio::task::spawn_blocking(move || provider.shutdown()).await });
    out
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
    ];
    match &sidecar {
        Some((_, endpoint)) => cases.push((
            "tracing on, sampled, OTLP to loom-sidecar",
            Case::Otlp(SamplerSpec::AlwaysOn, endpoint.clone()),
        )),
        None => eprintln!("target/release/loom-sidecar not built: no OTLP row"),
    }
    println!(
        "loom-bridge publish → delivery over loopback gRPC (bridge and both clients on one thread)"
    );
    println!("| mode | events/s (pipelined) | p50 latency µs | p99 latency µs |");
    println!("|---|---:|---:|---:|");
    for (name, case) in &cases {
        let f = measure(case);
        println!(
            "| {name} | {:.0} | {:.0} | {:.0} |",
            f.events_per_s, f.p50_us, f.p99_us
        );
    }
    if let Some((mut child, _)) = sidecar {
        let _ = child.kill();
        let _ = child.wait();
    }
}
