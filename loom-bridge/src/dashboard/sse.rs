//! `GET /api/events/stream`: every published event as Server-Sent Events, with periodic `ping`s.
//!
//! Fed by the bus's live flow tap (a bounded broadcast): a client that falls behind skips what
//! it missed and is told how many (a `lagged` event); the number of clients is capped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use loom_core::flow::LiveFlow;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::api::{self, params, rfc3339, unix_ms, Params};
use super::AppState;

/// Upstream's `DashboardEvent` fields, plus the receivers, the event's own type and links.
fn event_json(f: &LiveFlow, jaeger_ui_url: Option<&str>) -> serde_json::Value {
    let r = &f.record;
    let jaeger = match (jaeger_ui_url, r.trace_id.as_deref()) {
        (Some(base), Some(t)) => Some(format!("{}/trace/{t}", base.trim_end_matches('/'))),
        _ => None,
    };
    json!({
        "timestamp": rfc3339(r.published_at),
        "event_type": "event_published",
        "event_id": r.event_id,
        "topic": r.topic,
        "sender": r.sender,
        "thread_id": null,
        "correlation_id": null,
        "payload_preview": f.payload_preview,
        "trace_id": r.trace_id.clone().unwrap_or_default(),
        "receivers": r.receivers,
        "type": f.event_type,
        "payload_bytes": f.payload_bytes,
        "published_unix_ms": unix_ms(r.published_at),
        "jaeger_url": jaeger,
    })
}

pub(super) async fn events_stream(
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let _ = params!(q, []);
    let Ok(permit) = st.sse_slots.clone().try_acquire_owned() else {
        st.counters.sse_refused.fetch_add(1, Ordering::Relaxed);
        return api::error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "too many event-stream clients (limit {})",
                st.settings.max_sse_clients
            ),
        );
    };
    let rx = st.bridge.bus().flow().watch();
    let jaeger: Option<Arc<str>> = st.settings.jaeger_ui_url.as_deref().map(Arc::from);
    let counters = st.counters.clone();
    let events = futures::stream::unfold(rx, move |mut rx| {
        let jaeger = jaeger.clone();
        let counters = counters.clone();
        async move {
            let ev = match rx.recv().await {
                Ok(f) => Event::default().json_data(event_json(&f, jaeger.as_deref())),
                Err(RecvError::Lagged(n)) => {
                    counters.sse_lagged.fetch_add(n, Ordering::Relaxed);
                    Event::default()
                        .event("lagged")
                        .json_data(json!({ "skipped": n }))
                }
                Err(RecvError::Closed) => return None,
            };
            Some((
                ev.unwrap_or_else(|_| Event::default().comment("unserializable")),
                rx,
            ))
        }
    });
    let period = st.settings.ping_interval;
    let pings = futures::stream::unfold((), move |()| async move {
        tokio::time::sleep(period).await;
        Some((Event::default().event("ping").data("{}"), ()))
    });
    let stop = st.stop.clone();
    let stream = futures::stream::select(events, pings)
        .take_until(async move { stop.cancelled_owned().await })
        // The slot is held as long as the stream lives.
        .map(move |e| {
            let _held = &permit;
            Ok::<_, Infallible>(e)
        });
    sse_response(stream)
}

fn sse_response(
    stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Response {
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}
