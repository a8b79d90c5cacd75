//! Dashboard: a JSON API over the bridge's agents, stats and event flows, and a page showing them.

use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::service::Bridge;

#[derive(Serialize)]
struct Flow {
    event_id: String,
    topic: String,
    sender: Option<String>,
    receivers: Vec<String>,
    published_unix_ms: u128,
    trace_id: Option<String>,
}

pub fn router(bridge: Bridge) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/api/agents", get(agents))
        .route("/api/stats", get(stats))
        .route("/api/flows", get(flows))
        .with_state(bridge)
}

async fn agents(State(b): State<Bridge>) -> Response {
    Json(b.agents()).into_response()
}

async fn stats(State(b): State<Bridge>) -> Response {
    Json(b.stats()).into_response()
}

async fn flows(State(b): State<Bridge>, Query(q): Query<HashMap<String, String>>) -> Response {
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if n <= 10_000 => n,
        Some(_) => {
            return (
                StatusCode::BAD_REQUEST,
                "limit: expected a whole number from 0 to 10000",
            )
                .into_response()
        }
    };
    let records = match q.get("trace_id") {
        Some(t) if t.len() == 32 && t.chars().all(|c| c.is_ascii_hexdigit()) => {
            b.bus().flow().by_trace(t)
        }
        Some(_) => {
            return (
                StatusCode::BAD_REQUEST,
                "trace_id: expected 32 hex characters",
            )
                .into_response()
        }
        None => b.bus().flow().recent(limit),
    };
    let out: Vec<Flow> = records
        .into_iter()
        .map(|r| Flow {
            event_id: r.event_id,
            topic: r.topic,
            sender: r.sender,
            receivers: r.receivers,
            published_unix_ms: r
                .published_at
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0),
            trace_id: r.trace_id,
        })
        .collect();
    Json(out).into_response()
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

const PAGE: &str = r#"<!doctype html>
<html><head><meta charset="utf-8"><title>loom-bridge</title>
<style>body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}code{font-size:90%}</style>
</head><body>
<h1>loom-bridge</h1>
<h2>Agents</h2><table id="agents"></table>
<h2>Stats</h2><pre id="stats"></pre>
<h2>Recent flows</h2><table id="flows"></table>
<script>
async function refresh(){
  const a = await (await fetch('/api/agents')).json();
  document.getElementById('agents').innerHTML = '<tr><th>agent</th><th>connected</th><th>subscriptions</th><th>capabilities</th><th>published</th><th>delivered</th><th>dropped</th></tr>' +
    a.map(x => `<tr><td>${x.agent_id}</td><td>${x.connected}</td><td>${x.subscriptions.join(', ')}</td><td>${x.capabilities.join(', ')}</td><td>${x.published}</td><td>${x.delivered}</td><td>${x.dropped}</td></tr>`).join('');
  document.getElementById('stats').textContent = JSON.stringify(await (await fetch('/api/stats')).json(), null, 2);
  const f = await (await fetch('/api/flows?limit=20')).json();
  document.getElementById('flows').innerHTML = '<tr><th>topic</th><th>sender</th><th>receivers</th><th>trace</th></tr>' +
    f.reverse().map(x => `<tr><td>${x.topic}</td><td>${x.sender||''}</td><td>${x.receivers.join(', ')}</td><td><code>${x.trace_id||''}</code></td></tr>`).join('');
}
refresh(); setInterval(refresh, 2000);
</script></body></html>"#;
