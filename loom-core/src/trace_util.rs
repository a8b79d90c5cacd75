//! Small helpers shared by the bus and the broker to put span context on the wire cheaply.

use std::collections::HashMap;

use opentelemetry::trace::{SpanContext, TraceContextExt};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::envelope::{
    format_traceparent, write_traceparent, TraceParent, MAX_TRACESTATE_LEN, TRACEPARENT, TRACESTATE,
};

/// Writes `span`'s trace context into `md` as W3C `traceparent`/`tracestate`.
///
/// Returns the trace id bytes when the span has a valid context. A span without one (no
/// OpenTelemetry layer installed) leaves `md` untouched, so context that arrived with the event
/// keeps flowing through uninstrumented processes.
pub(crate) fn inject_span(
    md: &mut HashMap<String, String>,
    span: &tracing::Span,
) -> Option<[u8; 16]> {
    if span.is_disabled() {
        return None;
    }
    let cx = span.context();
    inject_span_context(md, cx.span().span_context())
}

/// Writes `sc` into `md` as W3C `traceparent`/`tracestate`; returns its trace id bytes, or
/// `None` (and leaves `md` untouched) when `sc` is invalid.
pub(crate) fn inject_span_context(
    md: &mut HashMap<String, String>,
    sc: &SpanContext,
) -> Option<[u8; 16]> {
    write_span_context(md, sc, true)
}

/// Rewrites the `traceparent` that `md` already carries with `sc` (in place: no allocation) and
/// never adds one. The bus hands a delivery's context over typed; an event that arrived without
/// trace context gets its map entries only when it leaves the process (`Delivery::into_event`).
pub(crate) fn refresh_span_context(md: &mut HashMap<String, String>, sc: &SpanContext) {
    write_span_context(md, sc, false);
}

fn write_span_context(
    md: &mut HashMap<String, String>,
    sc: &SpanContext,
    insert: bool,
) -> Option<[u8; 16]> {
    if !sc.is_valid() {
        return None;
    }
    let tp = TraceParent {
        trace_id: sc.trace_id().to_bytes(),
        span_id: sc.span_id().to_bytes(),
        flags: sc.trace_flags().to_u8(),
    };
    // A bare event has no stale tracestate to remove: skipping that lookup saves hashing the key
    // (SipHash), a visible share of an unsampled publish. (`get_mut` skips empty maps itself.)
    let was_empty = md.is_empty();
    // Events usually arrive with a traceparent already (the agent's): overwrite it in place,
    // which costs no allocation on the hot path.
    match md.get_mut(TRACEPARENT) {
        Some(v) => write_traceparent(v, &tp),
        None if insert => {
            md.insert(TRACEPARENT.to_owned(), format_traceparent(&tp));
        }
        None => return Some(tp.trace_id),
    }
    let state = sc.trace_state().header();
    if !state.is_empty() && state.len() <= MAX_TRACESTATE_LEN {
        md.insert(TRACESTATE.to_owned(), state);
    } else if !was_empty {
        md.remove(TRACESTATE);
    }
    Some(tp.trace_id)
}
