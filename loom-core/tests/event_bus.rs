//! EventBus behaviour: routing, QoS, tracing across publish → subscriber.
mod common;

use std::time::Duration;

use common::{attr, Tracing};
use loom_core::envelope::{parse_traceparent, Envelope, FLAG_SAMPLED, TRACEPARENT, TRACESTATE};
use loom_core::event_bus::{BusConfig, BusError, EventBus, QoS, Subscription};
use loom_core::proto::Event;
use loom_core::telemetry::SamplerSpec;
use opentelemetry::trace::SpanKind;

fn ev(payload: &str) -> Event {
    Event {
        payload: payload.as_bytes().to_vec(),
        ..Event::default()
    }
}

/// A bus with one real-time subscriber on topic `t`.
fn bus_with_subscriber() -> (EventBus, Subscription) {
    let bus = EventBus::default();
    let sub = bus.subscribe("t", QoS::Realtime).unwrap();
    (bus, sub)
}

fn payload(d: &loom_core::event_bus::Delivery) -> String {
    String::from_utf8(d.event.payload.clone()).expect("utf8")
}

#[tokio::test]
async fn wildcard_routing_reaches_exactly_the_matching_subscribers() {
    let bus = EventBus::default();
    let mut exact = bus.subscribe("sensor.data", QoS::Realtime).unwrap();
    let mut glob = bus.subscribe("sensor.*", QoS::Realtime).unwrap();
    let mut all = bus.subscribe("*", QoS::Realtime).unwrap();
    let mut other = bus.subscribe("processed.*", QoS::Realtime).unwrap();

    assert_eq!(bus.publish("sensor.data", ev("1")).await.unwrap(), 3);
    assert_eq!(bus.publish("sensor.temp.max", ev("2")).await.unwrap(), 2);
    assert_eq!(bus.publish("processed.data", ev("3")).await.unwrap(), 2);

    assert_eq!(payload(&exact.recv().await.unwrap()), "1");
    assert!(exact.try_recv().is_none());
    let g: Vec<_> = [glob.try_recv(), glob.try_recv(), glob.try_recv()]
        .into_iter()
        .flatten()
        .map(|d| (d.topic.clone(), payload(&d)))
        .collect();
    assert_eq!(
        g,
        vec![
            ("sensor.data".into(), "1".into()),
            ("sensor.temp.max".into(), "2".into())
        ]
    );
    let a: Vec<_> = std::iter::from_fn(|| all.try_recv())
        .map(|d| payload(&d))
        .collect();
    assert_eq!(a, vec!["1", "2", "3"]);
    let o = other.recv().await.unwrap();
    assert_eq!(
        (o.topic.as_str(), o.event.topic.as_str()),
        ("processed.data", "processed.data")
    );

    let stats = bus.stats();
    assert_eq!((stats.published, stats.delivered, stats.dropped), (3, 7, 0));
    assert_eq!(stats.topics["sensor.data"].delivered, 3);
}

#[tokio::test]
async fn publish_stamps_id_and_timestamp_and_keeps_given_ones() {
    let (bus, mut sub) = bus_with_subscriber();
    bus.publish("t", ev("x")).await.unwrap();
    let d = sub.recv().await.unwrap();
    assert_eq!(d.event.id.len(), 36, "uuid: {}", d.event.id);
    assert!(d.event.timestamp_unix_nano > 0);
    let mine = Event {
        id: "my-id".into(),
        timestamp_unix_nano: 7,
        ..Event::default()
    };
    bus.publish("t", mine).await.unwrap();
    let d = sub.recv().await.unwrap();
    assert_eq!(
        (d.event.id.as_str(), d.event.timestamp_unix_nano),
        ("my-id", 7)
    );
}

#[tokio::test]
async fn realtime_subscriber_drops_oldest_and_counts_it() {
    let bus = EventBus::default();
    let mut slow = bus.subscribe_with_capacity("t", QoS::Realtime, 2).unwrap();
    for i in 0..5 {
        // Never blocks although nobody reads.
        bus.publish("t", ev(&i.to_string())).await.unwrap();
    }
    assert_eq!(slow.dropped(), 3);
    let got: Vec<_> = std::iter::from_fn(|| slow.try_recv())
        .map(|d| payload(&d))
        .collect();
    assert_eq!(got, vec!["3", "4"]);
    let stats = bus.stats();
    assert_eq!(stats.dropped, 3);
    assert_eq!(stats.topics["t"].dropped, 3);
}

#[tokio::test]
async fn reliable_subscriber_applies_backpressure_and_loses_nothing() {
    let bus = EventBus::default();
    let mut sub = bus.subscribe_with_capacity("t", QoS::Reliable, 2).unwrap();
    bus.publish("t", ev("0")).await.unwrap();
    bus.publish("t", ev("1")).await.unwrap();
    // The queue is full: the third publish must wait for the subscriber.
    let blocked = tokio::time::timeout(Duration::from_millis(100), bus.publish("t", ev("2"))).await;
    assert!(blocked.is_err(), "publish should wait for queue space");

    let producer = {
        let bus = bus.clone();
        tokio::spawn(async move {
            for i in 2..50 {
                bus.publish("t", ev(&i.to_string())).await.unwrap();
            }
        })
    };
    let mut got = Vec::new();
    while got.len() < 50 {
        got.push(payload(&sub.recv().await.unwrap()));
    }
    producer.await.unwrap();
    let want: Vec<_> = (0..50).map(|i| i.to_string()).collect();
    assert_eq!(got, want);
    assert_eq!(sub.dropped(), 0);
}

#[tokio::test]
async fn a_slow_realtime_subscriber_does_not_stall_a_reliable_one() {
    let bus = EventBus::default();
    let _slow = bus.subscribe_with_capacity("t", QoS::Realtime, 1).unwrap();
    let mut fast = bus
        .subscribe_with_capacity("t", QoS::Reliable, 1000)
        .unwrap();
    for i in 0..100 {
        bus.publish("t", ev(&i.to_string())).await.unwrap();
    }
    assert_eq!(std::iter::from_fn(|| fast.try_recv()).count(), 100);
}

#[tokio::test]
async fn dropped_subscription_unsubscribes_and_frees_blocked_publishers() {
    let bus = EventBus::default();
    let sub = bus.subscribe_with_capacity("t", QoS::Reliable, 1).unwrap();
    bus.publish("t", ev("0")).await.unwrap();
    let bus2 = bus.clone();
    let blocked = tokio::spawn(async move { bus2.publish("t", ev("1")).await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    drop(sub);
    let delivered = tokio::time::timeout(Duration::from_secs(5), blocked)
        .await
        .expect("publisher released")
        .unwrap()
        .unwrap();
    assert_eq!(delivered, 0);
    assert_eq!(bus.stats().subscribers, 0);
}

#[tokio::test]
async fn close_drains_then_ends_subscribers_and_refuses_publishes() {
    let (bus, mut sub) = bus_with_subscriber();
    bus.publish("t", ev("last")).await.unwrap();
    bus.close();
    assert_eq!(payload(&sub.recv().await.unwrap()), "last");
    assert!(sub.recv().await.is_none());
    assert_eq!(bus.publish("t", ev("x")).await, Err(BusError::Closed));
}

#[tokio::test]
async fn invalid_topics_and_patterns_are_refused() {
    let bus = EventBus::default();
    assert!(matches!(
        bus.publish("", ev("x")).await,
        Err(BusError::InvalidTopic(_))
    ));
    assert!(matches!(
        bus.publish("a.*", ev("x")).await,
        Err(BusError::InvalidTopic(_))
    ));
    assert!(matches!(
        bus.subscribe("", QoS::Realtime),
        Err(BusError::InvalidPattern(_))
    ));
    assert!(matches!(
        bus.subscribe_with_capacity("t", QoS::Realtime, 0),
        Err(BusError::InvalidCapacity)
    ));
}

#[tokio::test]
async fn events_without_trace_context_still_flow() {
    // No tracing subscriber at all: nothing to inject, the event is delivered untouched.
    let (bus, mut sub) = bus_with_subscriber();
    bus.publish("t", ev("plain")).await.unwrap();
    let d = sub.recv().await.unwrap();
    assert_eq!(payload(&d), "plain");
    assert!(!d.event.metadata.contains_key(TRACEPARENT));
}

#[tokio::test]
async fn malformed_incoming_traceparent_does_not_stop_the_event() {
    let _t = Tracing::new();
    let (bus, mut sub) = bus_with_subscriber();
    let mut e = ev("x");
    e.metadata.insert(TRACEPARENT.into(), "garbage".into());
    bus.publish("t", e).await.unwrap();
    let d = sub.recv().await.unwrap();
    // Re-stamped with the publish span's own valid context.
    assert!(Envelope::from_event(&d.event).trace_id.is_some());
}

#[tokio::test]
async fn subscriber_span_is_a_child_of_the_publish_span_which_is_a_child_of_the_caller() {
    let t = Tracing::new();
    let bus = EventBus::default();
    let mut sub = bus.subscribe("sensor.*", QoS::Realtime).unwrap();
    let mut e = ev("42");
    e.r#type = "reading".into();
    e.metadata.insert("loom.sender".into(), "sensor-1".into());
    e.metadata.insert("loom.thread_id".into(), "th-1".into());
    {
        let caller = tracing::info_span!("caller");
        let _g = caller.enter();
        bus.publish("sensor.data", e).await.unwrap();
    }
    let d = sub.recv().await.unwrap();
    {
        let consumer = tracing::info_span!("consumer", otel.kind = "consumer");
        let _g = consumer.enter();
        assert!(d.envelope().extract_trace_context());
    }
    // In the process the context rides typed; it becomes metadata only where the event leaves.
    assert!(!d.event.metadata.contains_key(TRACEPARENT));
    let wire = d.clone().into_event();
    let tp = parse_traceparent(&wire.metadata[TRACEPARENT]).expect("traceparent on the wire");
    let caller = t.span("caller");
    let publish = t.span("event_bus.publish");
    let consumer = t.span("consumer");
    let trace = caller.span_context.trace_id();
    assert_eq!(publish.span_context.trace_id(), trace);
    assert_eq!(consumer.span_context.trace_id(), trace);
    assert_eq!(publish.parent_span_id, caller.span_context.span_id());
    assert_eq!(consumer.parent_span_id, publish.span_context.span_id());
    assert_eq!(tp.trace_id, trace.to_bytes());
    assert_eq!(tp.span_id, publish.span_context.span_id().to_bytes());
    assert_eq!(tp.flags & FLAG_SAMPLED, FLAG_SAMPLED);
    assert_eq!(publish.span_kind, SpanKind::Producer);
    for (k, v) in [
        ("loom.topic", "sensor.data"),
        ("loom.event.type", "reading"),
        ("loom.agent.id", "sensor-1"),
        ("loom.thread_id", "th-1"),
        ("messaging.system", "loom"),
        ("messaging.destination.name", "sensor.data"),
        ("messaging.operation.type", "send"),
    ] {
        assert_eq!(attr(&publish, k).as_deref(), Some(v), "{k}");
    }
    assert_eq!(attr(&publish, "loom.event.id"), Some(d.event.id.clone()));
    assert_eq!(
        attr(&publish, "messaging.message.id"),
        Some(d.event.id.clone())
    );

    let flows = bus.flow().by_trace(&trace.to_string());
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].sender.as_deref(), Some("sensor-1"));
    assert_eq!(flows[0].receivers.len(), 1);
}

#[tokio::test]
async fn flow_tracking_can_be_turned_off() {
    let bus = EventBus::new(BusConfig {
        flow_capacity: 0,
        ..BusConfig::default()
    });
    let _s = bus.subscribe("t", QoS::Realtime).unwrap();
    bus.publish("t", ev("x")).await.unwrap();
    assert!(bus.flow().is_empty());
}

/// Both ways a process can install tracing: the production one (sampler run ahead of the SDK)
/// and a plain `otel_layer` over an SDK provider.
/// Each is installed only while its test round runs.
fn always_off() -> [fn() -> Tracing; 2] {
    [
        || Tracing::with_spec(SamplerSpec::AlwaysOff),
        || Tracing::with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOff),
    ]
}

#[tokio::test]
async fn unsampled_publish_propagates_a_not_sampled_context_and_records_nothing() {
    for tracing in always_off() {
        let t = tracing();
        let (bus, mut sub) = bus_with_subscriber();
        let upstream = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut e = ev("x");
        e.metadata.insert(TRACEPARENT.into(), upstream.into());
        e.metadata
            .insert(TRACESTATE.into(), "vendor=upstream".into());
        bus.publish("t", e).await.unwrap();
        let d = sub.recv().await.unwrap();
        // A traceparent the event carries is rewritten in place to the publish's context.
        let tp = &d.event.metadata[TRACEPARENT];
        let parsed = parse_traceparent(tp).expect("a valid traceparent replaces the old one");
        assert_ne!(tp, upstream);
        assert_eq!(parsed.flags & FLAG_SAMPLED, 0, "not sampled: {tp}");
        let sc = d.trace.as_ref().expect("typed context");
        assert_eq!(sc.span_id().to_bytes(), parsed.span_id);
        assert!(
            !d.event.metadata.contains_key(TRACESTATE),
            "the old tracestate belongs to the old context"
        );
        assert!(t.spans().is_empty(), "an unsampled span is never exported");
    }
}

fn hex(b: &[u8]) -> String {
    loom_core::envelope::to_hex(b)
}

#[tokio::test]
async fn unsampled_publish_of_a_bare_event_starts_a_fresh_not_sampled_trace() {
    for tracing in always_off() {
        let t = tracing();
        let (bus, mut sub) = bus_with_subscriber();
        let mut trace_ids = Vec::new();
        for _ in 0..2 {
            let e = ev("x");
            assert!(
                e.metadata.is_empty(),
                "the case under test: no metadata map yet"
            );
            bus.publish("t", e).await.unwrap();
            let d = sub.recv().await.unwrap();
            assert!(d.event.metadata.is_empty(), "nothing added in the process");
            let sc = d.trace.clone().expect("a context even when not sampled");
            assert!(sc.is_valid() && !sc.is_sampled());
            let env = d.envelope();
            assert_eq!(env.trace_flags, Some(0));
            let wire = d.into_event();
            let tp = &wire.metadata[TRACEPARENT];
            let parsed = parse_traceparent(tp).expect("a valid traceparent on the wire");
            assert_eq!(parsed.flags & FLAG_SAMPLED, 0, "not sampled: {tp}");
            assert_eq!(parsed.trace_id, sc.trace_id().to_bytes());
            assert_eq!(env.trace_id.as_deref(), Some(&tp[3..35]));
            assert!(!wire.metadata.contains_key(TRACESTATE));
            let flow = bus.flow().by_trace(&tp[3..35]);
            assert_eq!(
                flow.len(),
                1,
                "the flow record carries the propagated trace id"
            );
            trace_ids.push(parsed.trace_id);
        }
        assert_ne!(
            trace_ids[0], trace_ids[1],
            "each root publish starts its own trace"
        );
        assert!(t.spans().is_empty());
    }
}

#[tokio::test]
async fn sampling_ahead_of_the_sdk_keeps_the_ratio_of_root_publishes() {
    // A ratio sampler decides by trace id. Deciding ahead on one id and letting the SDK draw
    // another would sample ratio² of the roots (a quarter here), not the ratio.
    let t = Tracing::with_spec(SamplerSpec::ParentBasedTraceIdRatio(0.5));
    let bus = EventBus::default();
    let mut sub = bus
        .subscribe_with_capacity("t", QoS::Reliable, 1024)
        .unwrap();
    const N: usize = 400;
    let mut sampled = std::collections::HashSet::new();
    let mut all = std::collections::HashSet::new();
    for _ in 0..N {
        bus.publish("t", ev("x")).await.unwrap();
        let d = sub.recv().await.unwrap();
        let sc = d.trace.expect("context");
        assert!(sc.is_valid());
        all.insert(sc.trace_id());
        if sc.is_sampled() {
            sampled.insert((sc.trace_id(), sc.span_id()));
        }
    }
    assert_eq!(all.len(), N, "every root publish has its own trace");
    // Binomial(400, 0.5): sd 10, so 140..260 is six sd either side.
    assert!(
        (140..=260).contains(&sampled.len()),
        "{} of {N} sampled",
        sampled.len()
    );
    let exported: std::collections::HashSet<_> = t
        .spans()
        .into_iter()
        .filter(|s| s.name == "event_bus.publish")
        .map(|s| (s.span_context.trace_id(), s.span_context.span_id()))
        .collect();
    assert_eq!(
        exported, sampled,
        "exactly the deliveries marked sampled were recorded, with their ids"
    );
}

#[tokio::test]
async fn sampling_ahead_follows_the_parent_decision() {
    let t = Tracing::with_spec(SamplerSpec::ParentBasedTraceIdRatio(0.0));
    let (bus, mut sub) = bus_with_subscriber();
    for (flags, want_sampled) in [("01", true), ("00", false)] {
        let mut e = ev("x");
        e.metadata.insert(
            TRACEPARENT.into(),
            format!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-{flags}"),
        );
        {
            let consumer = tracing::info_span!("handler");
            let _g = consumer.enter();
            assert!(Envelope::from_event(&e).extract_trace_context());
            bus.publish("t", e).await.unwrap();
        }
        let d = sub.recv().await.unwrap();
        let sc = d.trace.expect("context");
        assert_eq!(sc.is_sampled(), want_sampled, "parent flags {flags}");
        assert_eq!(
            hex(&sc.trace_id().to_bytes()),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
    }
    let publishes: Vec<_> = t
        .spans()
        .into_iter()
        .filter(|s| s.name == "event_bus.publish")
        .collect();
    assert_eq!(
        publishes.len(),
        1,
        "only the sampled parent's publish is recorded"
    );
}

#[tokio::test]
async fn outside_any_tracing_span_the_opentelemetry_api_context_is_the_parent() {
    use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _, TracerProvider as _};
    let t = Tracing::new();
    let (bus, mut sub) = bus_with_subscriber();
    let api_span = t.provider.tracer("api-user").start("api.parent");
    let api_sc = api_span.span_context().clone();
    {
        let _attached = opentelemetry::Context::current_with_span(api_span).attach();
        bus.publish("t", ev("x")).await.unwrap();
    }
    let _ = sub.recv().await.unwrap();
    let publish = t.span("event_bus.publish");
    assert_eq!(publish.span_context.trace_id(), api_sc.trace_id());
    assert_eq!(publish.parent_span_id, api_sc.span_id());
}
