//! One trace across the bridge: client span → bridge.publish → event_bus.publish → bridge.forward,
//! asserted with an in-memory span exporter (current-thread runtime, so every bridge task runs
//! under this test's subscriber).
mod common;
#[path = "support/trace_capture.rs"]
mod trace_capture;

use common::{event, TestAgent, TestBridge};
use loom_bridge::BridgeConfig;
use loom_core::envelope::{parse_traceparent, to_hex, Envelope, TRACEPARENT};
use loom_core::telemetry::SamplerSpec;
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer, TracerProvider as _};
use opentelemetry_sdk::trace::SpanData;
use trace_capture::capture;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::Layer as _;

fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}

#[tokio::test(flavor = "current_thread")]
async fn publish_and_delivery_form_one_trace_with_the_exact_parent_chain() {
    let (exporter, provider, _guard) = capture(SamplerSpec::AlwaysOn);

    let tb = TestBridge::start(BridgeConfig::default()).await;
    let mut sensor = TestAgent::join(&tb, "sensor", &[], &[]).await;
    let mut proc = TestAgent::join(&tb, "processor", &["sensor.*"], &[]).await;

    // The "agent" span lives in another tracer, as a Python agent's would.
    let client_tracer = provider.tracer("python-agent");
    let client_span = client_tracer.start("sensor.emit_data");
    let client_cx = opentelemetry::Context::current_with_span(client_span);
    let mut env = Envelope::default();
    env.inject_context(&client_cx);
    let mut e = event("21.5");
    e.id = "reading-1".into();
    env.attach_to_event(&mut e);
    sensor.publish("sensor.data", e).await;
    assert_eq!(sensor.next_ack().await.code, 0);
    let delivered = proc.next_delivery().await.event.expect("event");
    client_cx.span().end();
    let _ = provider.force_flush();

    let spans = exporter.get_finished_spans().unwrap();
    let find = |name: &str| -> SpanData {
        let v: Vec<_> = spans.iter().filter(|s| s.name == name).cloned().collect();
        assert_eq!(
            v.len(),
            1,
            "one {name} span in {:?}",
            spans.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
        v.into_iter().next().unwrap()
    };
    let client = find("sensor.emit_data");
    let publish = find("bridge.publish");
    let bus = find("event_bus.publish");
    let forward = find("bridge.forward");

    let trace = client.span_context.trace_id();
    for s in [&publish, &bus, &forward] {
        assert_eq!(
            s.span_context.trace_id(),
            trace,
            "{} in the client's trace",
            s.name
        );
    }
    assert_eq!(publish.parent_span_id, client.span_context.span_id());
    assert!(publish.parent_span_is_remote);
    assert_eq!(bus.parent_span_id, publish.span_context.span_id());
    assert_eq!(forward.parent_span_id, bus.span_context.span_id());
    assert!(
        !bus.parent_span_is_remote && !forward.parent_span_is_remote,
        "bridge.publish → event_bus.publish → bridge.forward is one process"
    );
    assert_eq!(
        (
            publish.span_kind.clone(),
            bus.span_kind.clone(),
            forward.span_kind.clone()
        ),
        (SpanKind::Server, SpanKind::Producer, SpanKind::Client)
    );

    // The delivered event names bridge.forward as its parent.
    let tp = parse_traceparent(&delivered.metadata[TRACEPARENT]).expect("valid traceparent");
    assert_eq!(tp.trace_id, trace.to_bytes());
    assert_eq!(
        to_hex(&tp.span_id),
        forward.span_context.span_id().to_string()
    );
    assert!(tp.sampled());

    for (span, agent) in [
        (&publish, "sensor"),
        (&bus, "sensor"),
        (&forward, "processor"),
    ] {
        assert_eq!(
            attr(span, "loom.agent.id").as_deref(),
            Some(agent),
            "{}",
            span.name
        );
        assert_eq!(attr(span, "loom.topic").as_deref(), Some("sensor.data"));
        assert_eq!(attr(span, "loom.event.id").as_deref(), Some("reading-1"));
        assert_eq!(attr(span, "messaging.system").as_deref(), Some("loom"));
        assert_eq!(
            attr(span, "messaging.destination.name").as_deref(),
            Some("sensor.data")
        );
        assert_eq!(
            attr(span, "messaging.message.id").as_deref(),
            Some("reading-1")
        );
    }
    tb.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn unsampled_parent_keeps_the_chain_unsampled_but_propagated() {
    let (exporter, provider, _guard) = capture(SamplerSpec::ParentBasedAlwaysOn);

    let tb = TestBridge::start(BridgeConfig::default()).await;
    let mut a = TestAgent::join(&tb, "a", &[], &[]).await;
    let mut b = TestAgent::join(&tb, "b", &["t"], &[]).await;
    let mut e = event("x");
    e.metadata.insert(
        TRACEPARENT.into(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".into(),
    );
    a.publish("t", e).await;
    a.next_ack().await;
    let delivered = b.next_delivery().await.event.unwrap();
    let tp = parse_traceparent(&delivered.metadata[TRACEPARENT]).unwrap();
    assert_eq!(to_hex(&tp.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
    assert!(!tp.sampled(), "the not-sampled decision travels on");
    assert_ne!(
        to_hex(&tp.span_id),
        "00f067aa0ba902b7",
        "re-parented at bridge.forward"
    );
    let _ = provider.force_flush();
    let names: Vec<_> = exporter
        .get_finished_spans()
        .unwrap()
        .into_iter()
        .map(|s| (s.name, s.instrumentation_scope.name().to_string()))
        .collect();
    assert!(names.is_empty(), "nothing recorded: {names:?}");
    tb.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn forwarded_action_calls_keep_the_callers_trace() {
    use loom_core::proto::client_message::Msg as ClientMsg;
    use loom_core::proto::server_message::Msg as ServerMsg;
    use loom_core::proto::{ActionCall, ActionResult, ActionStatus, ClientMessage};

    let (exporter, provider, _guard) = capture(SamplerSpec::AlwaysOn);

    let tb = TestBridge::start(BridgeConfig::default()).await;
    let mut server = TestAgent::join(&tb, "math", &[], &["double"]).await;
    let mut caller = TestAgent::join(&tb, "caller", &[], &[]).await;

    let client_span = provider.tracer("python-agent").start("agent.call");
    let client_cx = opentelemetry::Context::current_with_span(client_span);
    let mut env = Envelope::default();
    env.inject_context(&client_cx);
    let call = ActionCall {
        id: "call-1".into(),
        capability: "double".into(),
        args: b"21".to_vec(),
        headers: env.to_metadata(),
        timeout_ms: 5000,
        ..ActionCall::default()
    };
    let pending = tokio::spawn(async move { caller.client.forward_action(call).await });
    let ServerMsg::ActionCall(received) = server.next().await else {
        panic!("expected the action call")
    };
    server
        .tx
        .send(ClientMessage {
            msg: Some(ClientMsg::ActionResult(ActionResult {
                call_id: received.id.clone(),
                status: ActionStatus::Ok as i32,
                output: b"42".to_vec(),
                ..ActionResult::default()
            })),
        })
        .await
        .unwrap();
    let result = pending.await.unwrap().unwrap().into_inner();
    assert_eq!(result.output, b"42");
    client_cx.span().end();
    let _ = provider.force_flush();

    let spans = exporter.get_finished_spans().unwrap();
    let find = |name: &str| spans.iter().find(|s| s.name == name).cloned().expect(name);
    let client = find("agent.call");
    let forward = find("bridge.forward_action");
    let invoke = find("action_broker.invoke");
    let trace = client.span_context.trace_id();
    assert_eq!(forward.span_context.trace_id(), trace);
    assert_eq!(invoke.span_context.trace_id(), trace);
    assert_eq!(forward.parent_span_id, client.span_context.span_id());
    assert_eq!(invoke.parent_span_id, forward.span_context.span_id());
    // The agent serving the call sees action_broker.invoke as its parent.
    let headers = Envelope::from_metadata(&received.headers);
    assert_eq!(headers.trace_id, Some(trace.to_string()));
    assert_eq!(
        headers.span_id,
        Some(invoke.span_context.span_id().to_string())
    );
    tb.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn a_bare_event_published_in_process_reaches_the_agent_with_wire_trace_context() {
    // The bus keeps a delivery's context typed; the bridge writes it as `traceparent` when the
    // event leaves the process, naming bridge.forward, the child of event_bus.publish.
    let (exporter, provider, _guard) = capture(SamplerSpec::AlwaysOn);
    let tb = TestBridge::start(BridgeConfig::default()).await;
    let mut proc = TestAgent::join(&tb, "processor", &["sensor.*"], &[]).await;
    let mut e = event("7");
    e.id = "bare-1".into();
    assert!(e.metadata.is_empty(), "the case under test");
    tb.bridge.bus().publish("sensor.data", e).await.unwrap();
    let delivered = proc.next_delivery().await.event.expect("event");
    let _ = provider.force_flush();
    let spans = exporter.get_finished_spans().unwrap();
    let find = |name: &str| {
        spans
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .unwrap_or_else(|| panic!("no {name} span"))
    };
    let bus = find("event_bus.publish");
    let forward = find("bridge.forward");
    assert_eq!(forward.parent_span_id, bus.span_context.span_id());
    let tp = parse_traceparent(&delivered.metadata[TRACEPARENT]).expect("valid traceparent");
    assert_eq!(tp.trace_id, bus.span_context.trace_id().to_bytes());
    assert_eq!(
        to_hex(&tp.span_id),
        forward.span_context.span_id().to_string()
    );
    tb.stop().await;
}

#[tokio::test(flavor = "current_thread")]
async fn with_tracing_off_in_the_bridge_the_agents_context_passes_through() {
    // No OpenTelemetry layer (logs only): the bridge neither opens spans nor touches the trace
    // context, so a downstream agent still continues the publisher's trace.
    let subscriber = tracing_subscriber::registry().with(
        tracing_subscriber::fmt::layer()
            .with_writer(std::io::sink)
            .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
    );
    let _guard = tracing::subscriber::set_default(subscriber);
    let tb = TestBridge::start(BridgeConfig::default()).await;
    let mut sensor = TestAgent::join(&tb, "sensor", &[], &[]).await;
    let mut proc = TestAgent::join(&tb, "processor", &["sensor.*"], &[]).await;
    let upstream = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let mut e = event("7");
    e.metadata.insert(TRACEPARENT.into(), upstream.into());
    sensor.publish("sensor.data", e).await;
    assert_eq!(sensor.next_ack().await.code, 0);
    let delivered = proc.next_delivery().await.event.expect("event");
    assert_eq!(delivered.metadata[TRACEPARENT], upstream);
    tb.stop().await;
}
