//! Envelope ↔ OpenTelemetry: inject from the current span, extract as the parent of a new one.
mod common;

use common::Tracing;
use loom_core::envelope::{Envelope, TRACEPARENT};
use loom_core::proto::Event;
use opentelemetry::trace::{SpanKind, TraceContextExt};
use opentelemetry_sdk::trace::Sampler;
use tracing_opentelemetry::OpenTelemetrySpanExt;

#[test]
fn inject_attach_read_extract_round_trip_keeps_trace_parent_and_flags() {
    let t = Tracing::new();
    let mut ev = Event::default();
    let (sender_trace, sender_span) = {
        let span = tracing::info_span!("sender");
        let _g = span.enter();
        let mut env = Envelope::default();
        env.inject_trace_context();
        env.attach_to_event(&mut ev);
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        (sc.trace_id(), sc.span_id())
    };
    assert!(ev.metadata.contains_key(TRACEPARENT));

    let received = Envelope::from_event(&ev);
    assert_eq!(received.trace_flags, Some(1));
    {
        let span = tracing::info_span!("receiver", otel.kind = "consumer");
        let _g = span.enter();
        // Enter first, then extract: Loom's layer defers the span start so this works.
        assert!(received.extract_trace_context());
    }
    let recv = t.span("receiver");
    assert_eq!(recv.span_context.trace_id(), sender_trace);
    assert_eq!(recv.parent_span_id, sender_span);
    assert!(recv.parent_span_is_remote);
    assert_eq!(recv.span_kind, SpanKind::Consumer);
    assert!(recv.span_context.is_sampled());
}

#[test]
fn unsampled_flag_survives_the_round_trip() {
    let _t = Tracing::with_sampler(Sampler::AlwaysOff);
    let mut ev = Event::default();
    {
        let span = tracing::info_span!("sender");
        let _g = span.enter();
        let mut env = Envelope::default();
        env.inject_trace_context();
        env.attach_to_event(&mut ev);
    }
    let env = Envelope::from_event(&ev);
    assert_eq!(env.trace_flags, Some(0), "{:?}", ev.metadata);
    assert!(env.trace_id.is_some());
}

#[test]
fn extract_reports_absent_or_invalid_context() {
    let _t = Tracing::new();
    let span = tracing::info_span!("receiver");
    let _g = span.enter();
    assert!(!Envelope::default().extract_trace_context());
    let mut ev = Event::default();
    ev.metadata.insert(TRACEPARENT.into(), "00-zz-zz-01".into());
    assert!(!Envelope::from_event(&ev).extract_trace_context());
}

#[test]
fn tracestate_is_carried_to_the_remote_parent() {
    let t = Tracing::new();
    let mut ev = Event::default();
    ev.metadata.insert(
        TRACEPARENT.into(),
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
    );
    ev.metadata
        .insert("tracestate".into(), "rojo=00f067aa0ba902b7".into());
    {
        let span = tracing::info_span!("child");
        let _g = span.enter();
        assert!(Envelope::from_event(&ev).extract_trace_context());
    }
    let child = t.span("child");
    assert_eq!(
        child.span_context.trace_id().to_string(),
        "4bf92f3577b34da6a3ce929d0e0e4736"
    );
    assert_eq!(child.parent_span_id.to_string(), "00f067aa0ba902b7");
    assert_eq!(
        child.span_context.trace_state().header(),
        "rojo=00f067aa0ba902b7"
    );
}
