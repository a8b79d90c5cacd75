//! The dashboard's JSON endpoints over the bridge's registry, counters and flow ring.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use loom_core::flow::FlowRecord;
use serde::Serialize;
use serde_json::json;

use super::AppState;

/// How many flow records the graph endpoints read (the bus keeps at most its ring anyway).
const FLOW_WINDOW: usize = 10_000;
/// Window of `/api/metrics`'s `events_per_sec`.
const RATE_WINDOW: Duration = Duration::from_secs(5);

/// A JSON `{"error": …}` answer.
pub(crate) fn error(status: StatusCode, msg: impl Into<String>) -> Response {
    (status, Json(json!({ "error": msg.into() }))).into_response()
}

/// Query parameters, checked: unknown names and bad values get 400 naming the parameter.
pub(crate) struct Params(HashMap<String, String>);

/// A 400 answer's message (it starts with the parameter's name).
pub(crate) struct BadParam(String);

impl IntoResponse for BadParam {
    fn into_response(self) -> Response {
        error(StatusCode::BAD_REQUEST, self.0)
    }
}

impl Params {
    pub(crate) fn only(q: HashMap<String, String>, allowed: &[&str]) -> Result<Params, BadParam> {
        let mut unknown: Vec<&String> = q
            .keys()
            .filter(|k| !allowed.contains(&k.as_str()))
            .collect();
        unknown.sort();
        if let Some(k) = unknown.first() {
            let allowed = if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            };
            return Err(BadParam(format!(
                "{k}: unknown query parameter (allowed: {allowed})"
            )));
        }
        Ok(Params(q))
    }

    /// A whole number in `0..=max`, `default` when absent.
    pub(crate) fn usize(&self, name: &str, default: usize, max: usize) -> Result<usize, BadParam> {
        match self.0.get(name).map(|v| v.parse::<usize>()) {
            None => Ok(default),
            Some(Ok(n)) if n <= max => Ok(n),
            Some(_) => Err(BadParam(format!(
                "{name}: expected a whole number from 0 to {max}"
            ))),
        }
    }

    /// 32 hex digits (lower-cased), if present.
    pub(crate) fn trace_id(&self, name: &str) -> Result<Option<String>, BadParam> {
        match self.0.get(name) {
            None => Ok(None),
            Some(t) => valid_trace_id(t)
                .map(Some)
                .ok_or_else(|| BadParam(format!("{name}: expected 32 hex characters"))),
        }
    }
}

/// `t` lower-cased when it is 32 hex digits (and not all zero, which W3C calls invalid).
pub(crate) fn valid_trace_id(t: &str) -> Option<String> {
    (t.len() == 32 && t.bytes().all(|c| c.is_ascii_hexdigit()) && t.bytes().any(|c| c != b'0'))
        .then(|| t.to_ascii_lowercase())
}

macro_rules! params {
    ($q:expr, [$($name:literal),*]) => {
        match Params::only($q, &[$($name),*]) {
            Ok(p) => p,
            Err(r) => return axum::response::IntoResponse::into_response(r),
        }
    };
}
pub(crate) use params;

macro_rules! try_param {
    ($e:expr) => {
        match $e {
            Ok(v) => v,
            Err(r) => return axum::response::IntoResponse::into_response(r),
        }
    };
}
pub(crate) use try_param;

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

/// `GET /api/config`: what the page needs to know about this bridge.
pub(super) async fn config(
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let _ = params!(q, []);
    Json(json!({
        "jaeger_ui_url": st.settings.jaeger_ui_url,
        "trace_query": st.settings.trace_query_url.is_some(),
        "version": env!("CARGO_PKG_VERSION"),
    }))
    .into_response()
}

pub(super) async fn agents(
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let _ = params!(q, []);
    Json(st.bridge.agents()).into_response()
}

pub(super) async fn stats(
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let _ = params!(q, []);
    Json(st.bridge.stats()).into_response()
}

#[derive(Serialize)]
struct Flow {
    event_id: String,
    topic: String,
    sender: Option<String>,
    receivers: Vec<String>,
    published_unix_ms: u64,
    trace_id: Option<String>,
}

/// `GET /api/flows?limit=&trace_id=`: recent flow records, oldest first.
pub(super) async fn flows(
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let p = params!(q, ["limit", "trace_id"]);
    let limit = try_param!(p.usize("limit", 100, 10_000));
    let records = match try_param!(p.trace_id("trace_id")) {
        Some(t) => st.bridge.bus().flow().by_trace(&t),
        None => st.bridge.bus().flow().recent(limit),
    };
    let out: Vec<Flow> = records
        .into_iter()
        .map(|r| Flow {
            published_unix_ms: unix_ms(r.published_at),
            event_id: r.event_id,
            topic: r.topic,
            sender: r.sender,
            receivers: r.receivers,
            trace_id: r.trace_id,
        })
        .collect();
    Json(out).into_response()
}

#[derive(Serialize)]
struct TraceSummary {
    trace_id: String,
    /// Topic and sender of the trace's first event the ring still holds.
    first_topic: String,
    first_sender: Option<String>,
    started_unix_ms: u64,
    last_unix_ms: u64,
    events: usize,
    topics: Vec<String>,
}

/// Recent traces, newest first, from the flow ring (`limit` distinct trace ids).
pub(crate) fn recent_traces(
    records: &[FlowRecord],
    limit: usize,
) -> Vec<(String, Vec<&FlowRecord>)> {
    let mut order: Vec<String> = Vec::new();
    let mut by: HashMap<&str, Vec<&FlowRecord>> = HashMap::new();
    for r in records.iter().rev() {
        let Some(t) = r.trace_id.as_deref() else {
            continue;
        };
        let e = by.entry(t).or_default();
        if e.is_empty() {
            if order.len() == limit {
                continue;
            }
            order.push(t.to_owned());
        }
        e.push(r);
    }
    order
        .into_iter()
        .map(|t| {
            let mut v = by.remove(t.as_str()).unwrap_or_default();
            v.reverse();
            (t, v)
        })
        .collect()
}

/// `GET /api/traces?limit=`: the trace picker's list — recent traces seen on the bus.
pub(super) async fn traces_recent(
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let p = params!(q, ["limit"]);
    let limit = try_param!(p.usize("limit", 50, 1000));
    let records = st.bridge.bus().flow().recent(FLOW_WINDOW);
    let out: Vec<TraceSummary> = recent_traces(&records, limit)
        .into_iter()
        .filter_map(|(trace_id, recs)| {
            let first = recs.first()?;
            let last = recs.last()?;
            let topics: BTreeSet<String> = recs.iter().map(|r| r.topic.clone()).collect();
            Some(TraceSummary {
                first_topic: first.topic.clone(),
                first_sender: first.sender.clone(),
                started_unix_ms: unix_ms(first.published_at),
                last_unix_ms: unix_ms(last.published_at),
                events: recs.len(),
                topics: topics.into_iter().collect(),
                trace_id,
            })
        })
        .collect();
    Json(out).into_response()
}

#[derive(Serialize)]
struct AgentNode {
    id: String,
    topics: Vec<String>,
    capabilities: Vec<String>,
    connected: bool,
    published: u64,
    delivered: u64,
    dropped: u64,
    queued: u64,
    idle_ms: u128,
    /// Newest flow this agent sent or received (the ring's view), Unix ms.
    last_activity_ms: Option<u64>,
}

#[derive(Serialize)]
struct TopologyEdge {
    from_topic: String,
    to_agent: String,
    event_count: u64,
}

#[derive(Serialize)]
struct PublishEdge {
    from_agent: String,
    to_topic: String,
    event_count: u64,
}

#[derive(Serialize)]
struct TopicNode {
    topic: String,
    published: u64,
    delivered: u64,
    dropped: u64,
    last_activity_ms: Option<u64>,
}

/// `GET /api/topology`: agents (with their counters), topics and capabilities as a graph —
/// upstream's `{agents, edges, timestamp}` plus `topics` and `publishes`.
pub(super) async fn topology(
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let _ = params!(q, []);
    let agents = st.bridge.agents();
    let stats = st.bridge.stats();
    let records = st.bridge.bus().flow().recent(FLOW_WINDOW);

    let mut deliveries: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut publishes: BTreeMap<(String, String), u64> = BTreeMap::new();
    let mut last_agent: HashMap<String, u64> = HashMap::new();
    let mut last_topic: HashMap<String, u64> = HashMap::new();
    for r in &records {
        let at = unix_ms(r.published_at);
        last_topic.insert(r.topic.clone(), at);
        if let Some(s) = &r.sender {
            *publishes.entry((s.clone(), r.topic.clone())).or_default() += 1;
            last_agent.insert(s.clone(), at);
        }
        for to in &r.receivers {
            *deliveries.entry((r.topic.clone(), to.clone())).or_default() += 1;
            last_agent.insert(to.clone(), at);
        }
    }
    // Every subscription is an edge, even before its first event.
    for a in &agents {
        for t in &a.subscriptions {
            deliveries
                .entry((t.clone(), a.agent_id.clone()))
                .or_default();
        }
    }
    let mut topics: BTreeMap<String, TopicNode> = BTreeMap::new();
    for (t, c) in &stats.topics {
        topics.insert(
            t.clone(),
            TopicNode {
                topic: t.clone(),
                published: c.published,
                delivered: c.delivered,
                dropped: c.dropped,
                last_activity_ms: last_topic.get(t).copied(),
            },
        );
    }
    for (t, _) in deliveries.keys() {
        topics.entry(t.clone()).or_insert_with(|| TopicNode {
            topic: t.clone(),
            published: 0,
            delivered: 0,
            dropped: 0,
            last_activity_ms: None,
        });
    }
    let nodes: Vec<AgentNode> = agents
        .into_iter()
        .map(|a| AgentNode {
            last_activity_ms: last_agent.get(&a.agent_id).copied(),
            id: a.agent_id,
            topics: a.subscriptions,
            capabilities: a.capabilities,
            connected: a.connected,
            published: a.published,
            delivered: a.delivered,
            dropped: a.dropped,
            queued: a.queued,
            idle_ms: a.idle_ms,
        })
        .collect();
    Json(json!({
        "agents": nodes,
        "edges": deliveries.into_iter().map(|((from_topic, to_agent), event_count)| TopologyEdge { from_topic, to_agent, event_count }).collect::<Vec<_>>(),
        "publishes": publishes.into_iter().map(|((from_agent, to_topic), event_count)| PublishEdge { from_agent, to_topic, event_count }).collect::<Vec<_>>(),
        "topics": topics.into_values().collect::<Vec<_>>(),
        "timestamp": rfc3339(SystemTime::now()),
    }))
    .into_response()
}

#[derive(Serialize)]
struct FlowNode {
    id: String,
    node_type: &'static str,
    event_count: u64,
    topics: Vec<String>,
    last_active_ms: u64,
}

#[derive(Serialize)]
struct EventFlow {
    source: String,
    target: String,
    topic: String,
    count: u64,
    last_event_ms: u64,
}

/// `GET /api/flow`: upstream's flow graph — who sent what to whom over the ring's window;
/// events without a sender come from the `EventBus` node.
pub(super) async fn flow_graph(
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let _ = params!(q, []);
    let records = st.bridge.bus().flow().recent(FLOW_WINDOW);
    let mut flows: BTreeMap<(String, String, String), (u64, u64)> = BTreeMap::new();
    let mut nodes: BTreeMap<String, (u64, BTreeSet<String>, u64)> = BTreeMap::new();
    nodes.insert("EventBus".into(), (0, BTreeSet::new(), 0));
    for r in &records {
        let at = unix_ms(r.published_at);
        let source = r.sender.clone().unwrap_or_else(|| "EventBus".into());
        let mut touch = |id: &str| {
            let n = nodes.entry(id.to_owned()).or_default();
            n.0 += 1;
            n.1.insert(r.topic.clone());
            n.2 = n.2.max(at);
        };
        touch(&source);
        for to in &r.receivers {
            touch(to);
            let f = flows
                .entry((source.clone(), to.clone(), r.topic.clone()))
                .or_default();
            f.0 += 1;
            f.1 = f.1.max(at);
        }
    }
    let nodes: Vec<FlowNode> = nodes
        .into_iter()
        .map(|(id, (event_count, topics, last))| FlowNode {
            node_type: if id == "EventBus" {
                "eventbus"
            } else {
                "agent"
            },
            id,
            event_count,
            topics: topics.into_iter().collect(),
            last_active_ms: last,
        })
        .collect();
    let flows: Vec<EventFlow> = flows
        .into_iter()
        .map(|((source, target, topic), (count, last))| EventFlow {
            source,
            target,
            topic,
            count,
            last_event_ms: last,
        })
        .collect();
    Json(json!({ "nodes": nodes, "flows": flows, "timestamp": rfc3339(SystemTime::now()) }))
        .into_response()
}

/// `GET /api/metrics`: upstream's four figures plus the bridge's totals.
pub(super) async fn metrics(
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let _ = params!(q, []);
    let stats = st.bridge.stats();
    let agents = st.bridge.agents();
    let now = SystemTime::now();
    let recent = st
        .bridge
        .bus()
        .flow()
        .recent(FLOW_WINDOW)
        .iter()
        .filter(|r| {
            now.duration_since(r.published_at)
                .is_ok_and(|d| d <= RATE_WINDOW)
        })
        .count();
    let tool_rate = {
        let mut s = st.action_sample.lock();
        let t = Instant::now();
        let rate = match *s {
            Some((at, n)) if t > at => {
                stats.actions_forwarded.saturating_sub(n) as f64 / (t - at).as_secs_f64()
            }
            _ => 0.0,
        };
        *s = Some((t, stats.actions_forwarded));
        rate
    };
    Json(json!({
        "events_per_sec": recent as f64 / RATE_WINDOW.as_secs_f64(),
        "active_agents": agents.iter().filter(|a| a.connected).count(),
        "active_subscriptions": agents.iter().map(|a| a.subscriptions.len()).sum::<usize>(),
        "tool_invocations_per_sec": tool_rate,
        "published": stats.published,
        "delivered": stats.delivered,
        "dropped": stats.dropped,
        "actions_forwarded": stats.actions_forwarded,
        "sse_clients": st.settings.max_sse_clients - st.sse_slots.available_permits(),
        "sse_lagged": st.counters.sse_lagged.load(Ordering::Relaxed),
        "sse_refused": st.counters.sse_refused.load(Ordering::Relaxed),
        "timestamp": rfc3339(now),
    }))
    .into_response()
}
