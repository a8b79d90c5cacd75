//! The span sink end to end, over loopback OTLP/gRPC to a real capture server.
//!
//! Hot-path spans exported through the official OTLP exporter, compared with the SDK path; one
//! pipeline for `tracing` and hot-path spans; a bounded queue that counts drops while the
//! collector is down; and a shutdown that exports what is queued.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use loom_core::event_bus::{EventBus, QoS};
use loom_core::proto::Event;
use loom_core::telemetry::{LoomProvider, SamplerSpec, SinkConfig};
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceFlags, TraceId, TraceState};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::trace::v1::Span as ProtoSpan;
use parking_lot::Mutex;
use tracing_subscriber::layer::SubscriberExt as _;

/// Every request an OTLP/gRPC backend (the official proto service) received.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<ExportTraceServiceRequest>>>);

struct Capture(Captured);

#[tonic::async_trait]
impl TraceService for Capture {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0 .0.lock().push(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Captured {
    fn requests(&self) -> usize {
        self.0.lock().len()
    }

    /// Every span received, with its scope's name, request by request.
    fn batches(&self) -> Vec<Vec<(String, ProtoSpan)>> {
        self.0
            .lock()
            .iter()
            .map(|req| {
                req.resource_spans
                    .iter()
                    .flat_map(|rs| &rs.scope_spans)
                    .flat_map(|ss| {
                        let scope = ss
                            .scope
                            .as_ref()
                            .map(|s| s.name.clone())
                            .unwrap_or_default();
                        ss.spans.iter().map(move |s| (scope.clone(), s.clone()))
                    })
                    .collect()
            })
            .collect()
    }

    fn spans(&self) -> Vec<(String, ProtoSpan)> {
        self.batches().into_iter().flatten().collect()
    }

    fn one(&self, name: &str) -> (String, ProtoSpan) {
        let mut found: Vec<_> = self
            .spans()
            .into_iter()
            .filter(|s| s.1.name == name)
            .collect();
        assert_eq!(found.len(), 1, "expected exactly one {name} span");
        found.remove(0)
    }

    fn service_names(&self) -> Vec<String> {
        self.0
            .lock()
            .iter()
            .flat_map(|req| &req.resource_spans)
            .filter_map(|rs| rs.resource.as_ref())
            .flat_map(|r| &r.attributes)
            .filter(|kv| kv.key == "service.name")
            .map(|kv| format!("{:?}", kv.value))
            .collect()
    }
}

async fn serve_capture() -> (String, Captured) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let captured = Captured::default();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Capture(captured.clone())))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    (format!("http://{addr}"), captured)
}

/// The official tonic exporter, as `otlp_provider` builds it (inside the runtime).
fn otlp_exporter(endpoint: &str) -> opentelemetry_otlp::SpanExporter {
    use opentelemetry_otlp::WithExportConfig as _;
    opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.to_owned())
        .with_timeout(Duration::from_secs(2))
        .build()
        .expect("exporter")
}

/// Flushing blocks on the export thread, which needs this runtime's workers for the exporter's
/// connection: never block a worker on it.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

/// A context as the bridge extracts it from an agent's `traceparent`: remote, sampled.
fn remote_parent() -> opentelemetry::Context {
    opentelemetry::Context::new().with_remote_span_context(SpanContext::new(
        TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736_u128),
        SpanId::from(0x00f0_67aa_0ba9_02b7_u64),
        TraceFlags::SAMPLED,
        true,
        TraceState::NONE,
    ))
}

fn agent_event() -> Event {
    Event {
        id: "ev-1".into(),
        r#type: "reading".into(),
        payload: b"{}".to_vec(),
        metadata: HashMap::from([
            ("loom.sender".to_owned(), "sensor".to_owned()),
            ("loom.thread_id".to_owned(), "th-1".to_owned()),
            ("loom.correlation_id".to_owned(), "co-1".to_owned()),
        ]),
        ..Event::default()
    }
}

/// An `event_bus.publish` and a bridge-style `bridge.forward` span under [`remote_parent`], on
/// whatever subscriber is the thread's default.
async fn make_event_spans() {
    let bus = EventBus::default();
    let mut sub = bus.subscribe("sensor.*", QoS::Realtime).expect("subscribe");
    bus.publish_with_parent(&remote_parent(), "sensor.data", agent_event())
        .await
        .expect("publish");
    let delivery = sub.recv().await.expect("delivery");
    let mut forward = loom_core::telemetry::start_span(
        "bridge.forward",
        SpanKind::Client,
        Some(&remote_parent()),
    )
    .expect("tracing is on");
    assert!(forward.is_recording());
    forward.set_event_attributes(&delivery.topic, &delivery.event, Some("proc"), "receive");
    drop(forward);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hot_path_spans_over_otlp_match_what_the_sdk_path_exported() {
    let spec = SamplerSpec::AlwaysOn;
    // The sink path, as `init_telemetry` sets it up.
    let (new_endpoint, new_capture) = serve_capture().await;
    let loom = loom_core::telemetry::otlp_provider(spec, "svc", &new_endpoint).expect("provider");
    {
        let _g = tracing::subscriber::set_default(
            tracing_subscriber::registry().with(loom.layer("loom")),
        );
        make_event_spans().await;
    }
    // The SDK path as it was: SDK spans, the SDK's batch processor, the same exporter.
    let (old_endpoint, old_capture) = serve_capture().await;
    let sdk = loom_core::telemetry::provider_builder(spec)
        .with_batch_exporter(otlp_exporter(&old_endpoint))
        .build();
    {
        let _g = tracing::subscriber::set_default(tracing_subscriber::registry().with(
            loom_core::telemetry::otel_layer_for(sdk.tracer("loom"), spec),
        ));
        make_event_spans().await;
    }
    let (l, s) = (loom.clone(), sdk.clone());
    blocking(move || {
        l.force_flush().expect("sink flush");
        s.force_flush().expect("sdk flush");
    })
    .await;

    for name in ["event_bus.publish", "bridge.forward"] {
        let (new_scope, new) = new_capture.one(name);
        let (old_scope, old) = old_capture.one(name);
        assert_eq!(new_scope, old_scope, "{name}: scope");
        assert_eq!(new_scope, "loom");
        assert_eq!(
            new.trace_id, old.trace_id,
            "{name}: trace id (the parent's)"
        );
        assert_eq!(new.parent_span_id, old.parent_span_id, "{name}: parent");
        assert_eq!(new.parent_span_id, 0x00f0_67aa_0ba9_02b7_u64.to_be_bytes());
        assert_eq!(new.kind, old.kind, "{name}: kind");
        assert_eq!(
            new.flags, old.flags,
            "{name}: flags (sampled, parent remote)"
        );
        assert_eq!(new.trace_state, old.trace_state, "{name}: trace state");
        assert_eq!(new.attributes, old.attributes, "{name}: attributes");
        assert_eq!(new.dropped_attributes_count, old.dropped_attributes_count);
        assert_eq!(new.status, old.status, "{name}: status");
        assert_eq!((new.events.len(), new.links.len()), (0, 0));
        assert_eq!(new.span_id.len(), 8);
        assert_ne!(new.span_id, [0u8; 8]);
        assert!(new.end_time_unix_nano >= new.start_time_unix_nano);
        assert!(new.start_time_unix_nano > 0);
    }
    let (_, publish) = new_capture.one("event_bus.publish");
    assert_eq!(publish.kind, 4, "PRODUCER");
    assert_eq!(publish.attributes.len(), 10, "{:?}", publish.attributes);
    assert!(new_capture
        .service_names()
        .iter()
        .all(|s| s.contains("svc")));
    assert!(!new_capture.service_names().is_empty());
    assert_eq!(loom.sink().stats().exported, 2);
    assert_eq!(loom.sink().dropped(), 0);
    blocking(move || {
        let _ = loom.shutdown();
        let _ = sdk.shutdown();
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tracing_spans_and_hot_path_spans_share_the_export_batches() {
    let (endpoint, captured) = serve_capture().await;
    let config = SinkConfig {
        scheduled_delay: Duration::from_secs(3600),
        ..SinkConfig::default()
    };
    let loom = LoomProvider::new(
        SamplerSpec::AlwaysOn,
        otlp_exporter(&endpoint),
        config,
        None,
    )
    .expect("provider");
    {
        let _g = tracing::subscriber::set_default(
            tracing_subscriber::registry().with(loom.layer("loom")),
        );
        let bus = EventBus::default();
        let _sub = bus.subscribe("t", QoS::Realtime).expect("subscribe");
        let outer = tracing::info_span!("outer");
        let entered = outer.enter();
        bus.publish("t", Event::default()).await.expect("publish");
        drop(entered);
        drop(outer);
    }
    let l = loom.clone();
    blocking(move || l.force_flush().expect("flush")).await;
    let batches = captured.batches();
    assert_eq!(batches.len(), 1, "one flush, one request");
    let names: Vec<&str> = batches[0].iter().map(|(_, s)| s.name.as_str()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.contains(&"outer") && names.contains(&"event_bus.publish"));
    let (_, outer) = captured.one("outer");
    let (_, publish) = captured.one("event_bus.publish");
    assert_eq!(publish.parent_span_id, outer.span_id);
    assert_eq!(publish.trace_id, outer.trace_id);
    blocking(move || loom.shutdown()).await.expect("shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_collector_down_the_queue_stays_bounded_and_counts_its_drops() {
    // A port nothing listens on any more: every export is refused.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let endpoint = format!("http://{}", dead.local_addr().expect("addr"));
    drop(dead);
    let config = SinkConfig {
        max_queue_size: 64,
        max_export_batch_size: 16,
        scheduled_delay: Duration::from_millis(20),
    };
    let loom = LoomProvider::new(
        SamplerSpec::AlwaysOn,
        otlp_exporter(&endpoint),
        config,
        None,
    )
    .expect("provider");
    const N: u64 = 20_000;
    let mut most_queued = 0;
    {
        let _g = tracing::subscriber::set_default(
            tracing_subscriber::registry().with(loom.layer("loom")),
        );
        for i in 0..N {
            let span = loom_core::telemetry::start_span(
                "flood",
                SpanKind::Internal,
                Some(&opentelemetry::Context::new()),
            )
            .expect("tracing is on");
            assert!(span.is_recording());
            drop(span);
            if i % 64 == 0 {
                most_queued = most_queued.max(loom.sink().queued());
            }
        }
    }
    assert!(most_queued <= 64, "queue grew to {most_queued}");
    assert!(
        loom.sink().dropped() > 0,
        "a flood past a dead collector drops"
    );
    let l = loom.clone();
    // Ok or not depends on whether anything was left queued; the counts are what matter.
    let _ = blocking(move || l.provider().shutdown_with_timeout(Duration::from_secs(60))).await;
    let stats = loom.sink().stats();
    assert_eq!(stats.exported, 0);
    assert!(stats.export_failed > 0);
    assert_eq!(
        stats.dropped + stats.export_failed,
        N,
        "every span is accounted for: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_exports_everything_queued() {
    let (endpoint, captured) = serve_capture().await;
    // Neither the timer nor a full batch would export these before shutdown.
    let config = SinkConfig {
        max_queue_size: 2048,
        max_export_batch_size: 512,
        scheduled_delay: Duration::from_secs(3600),
    };
    let loom = LoomProvider::new(
        SamplerSpec::AlwaysOn,
        otlp_exporter(&endpoint),
        config,
        None,
    )
    .expect("provider");
    let _g =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(loom.layer("loom")));
    for _ in 0..300 {
        drop(loom_core::telemetry::start_span(
            "queued",
            SpanKind::Internal,
            None,
        ));
    }
    tracing::info_span!("a tracing span").in_scope(|| {});
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(captured.requests(), 0, "nothing exported before shutdown");
    assert_eq!(loom.sink().queued(), 301);
    let l = loom.clone();
    blocking(move || l.shutdown()).await.expect("shutdown");
    assert_eq!(captured.spans().len(), 301);
    assert_eq!(loom.sink().stats().exported, 301);
    assert_eq!(loom.sink().queued(), 0);
    // Nothing is recorded after shutdown, as the SDK records nothing on a shut-down provider.
    let late = loom_core::telemetry::start_span("late", SpanKind::Internal, None)
        .expect("the layer is still installed");
    assert!(!late.is_recording());
}
