//! Reads traces from the trace query service (Jaeger `api_v3`: OTLP JSON with hex ids) and
//! answers in upstream Loom's span shape, with a timeout and a response size cap.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use serde_json::Value;

use super::api::{self, params, recent_traces, try_param, valid_trace_id, Params};
use super::AppState;

/// How many recent traces `/api/spans/recent` reads (concurrently) from the query service.
const RECENT_TRACES: usize = 10;

/// Upstream Loom's `SpanData` (trace_id … error_message) plus what a waterfall needs.
#[derive(Debug, Serialize)]
pub(crate) struct SpanOut {
    trace_id: String,
    span_id: String,
    parent_span_id: Option<String>,
    name: String,
    /// Unix ns.
    start_time: u64,
    /// ns.
    duration: u64,
    attributes: BTreeMap<String, String>,
    /// "ok" | "error" | "unset".
    status: &'static str,
    error_message: Option<String>,
    end_time: u64,
    service_name: String,
    /// "internal" | "server" | "client" | "producer" | "consumer" | "unspecified".
    kind: &'static str,
    events: Vec<SpanEventOut>,
    links: Vec<LinkOut>,
    resource: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
struct SpanEventOut {
    name: String,
    time: u64,
    attributes: BTreeMap<String, String>,
}

#[derive(Debug, Serialize)]
struct LinkOut {
    trace_id: String,
    span_id: String,
    attributes: BTreeMap<String, String>,
}

#[derive(Debug)]
pub(crate) enum Fetch {
    NotConfigured,
    NotFound,
    Failed(StatusCode, String),
}

impl Fetch {
    fn into_response(self, trace_id: &str) -> Response {
        match self {
            Fetch::NotConfigured => api::error(
                StatusCode::SERVICE_UNAVAILABLE,
                "no trace query service configured: start loom-bridge with --trace-query-url (or LOOM_TRACE_QUERY_URL)",
            ),
            Fetch::NotFound => api::error(
                StatusCode::NOT_FOUND,
                format!("trace {trace_id} not found in the trace query service"),
            ),
            Fetch::Failed(s, m) => api::error(s, m),
        }
    }
}

/// `GET {trace_query_url}/api/v3/traces/{id}`, read up to the size cap.
async fn fetch_trace(st: &AppState, trace_id: &str) -> Result<Vec<SpanOut>, Fetch> {
    let Some(base) = st.settings.trace_query_url.as_deref() else {
        return Err(Fetch::NotConfigured);
    };
    let url = format!("{}/api/v3/traces/{trace_id}", base.trim_end_matches('/'));
    let mut resp = st.http.get(&url).send().await.map_err(|e| {
        let status = if e.is_timeout() {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::BAD_GATEWAY
        };
        Fetch::Failed(status, format!("trace query service {url}: {e}"))
    })?;
    if resp.status() == reqwest::StatusCode::NOT_FOUND {
        return Err(Fetch::NotFound);
    }
    if !resp.status().is_success() {
        return Err(Fetch::Failed(
            StatusCode::BAD_GATEWAY,
            format!("trace query service {url} answered {}", resp.status()),
        ));
    }
    let cap = st.settings.query_max_bytes;
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(too_big(&url, cap));
    }
    let mut body = Vec::new();
    loop {
        match resp.chunk().await {
            Ok(Some(c)) => {
                if body.len() + c.len() > cap {
                    return Err(too_big(&url, cap));
                }
                body.extend_from_slice(&c);
            }
            Ok(None) => break,
            Err(e) => {
                let status = if e.is_timeout() {
                    StatusCode::GATEWAY_TIMEOUT
                } else {
                    StatusCode::BAD_GATEWAY
                };
                return Err(Fetch::Failed(
                    status,
                    format!("trace query service {url}: {e}"),
                ));
            }
        }
    }
    let doc: Value = serde_json::from_slice(&body).map_err(|e| {
        Fetch::Failed(
            StatusCode::BAD_GATEWAY,
            format!("trace query service {url}: not JSON: {e}"),
        )
    })?;
    let spans = spans_from_otlp_json(&doc).map_err(|e| {
        Fetch::Failed(
            StatusCode::BAD_GATEWAY,
            format!("trace query service {url}: {e}"),
        )
    })?;
    if spans.is_empty() {
        return Err(Fetch::NotFound);
    }
    Ok(spans)
}

fn too_big(url: &str, cap: usize) -> Fetch {
    Fetch::Failed(
        StatusCode::BAD_GATEWAY,
        format!("trace query service {url}: response larger than {cap} bytes"),
    )
}

/// `GET /api/traces/{trace_id}`: every span of one trace, by start time.
pub(super) async fn trace(
    State(st): State<AppState>,
    Path(trace_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let _ = params!(q, []);
    let Some(id) = valid_trace_id(&trace_id) else {
        return api::error(
            StatusCode::BAD_REQUEST,
            "trace_id: expected 32 hex characters (not all zero)",
        );
    };
    match fetch_trace(&st, &id).await {
        Ok(spans) => Json(spans).into_response(),
        Err(e) => e.into_response(&id),
    }
}

/// `GET /api/spans/recent?limit=`: newest spans first, from the traces of the newest events.
pub(super) async fn spans_recent(
    State(st): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let p = params!(q, ["limit"]);
    let limit = try_param!(p.usize("limit", 100, 1000));
    if st.settings.trace_query_url.is_none() {
        return Fetch::NotConfigured.into_response("");
    }
    let records = st.bridge.bus().flow().recent(10_000);
    let ids: Vec<String> = recent_traces(&records, RECENT_TRACES)
        .into_iter()
        .map(|(t, _)| t)
        .collect();
    let fetched = futures::future::join_all(ids.iter().map(|t| fetch_trace(&st, t))).await;
    let mut spans: Vec<SpanOut> = Vec::new();
    for r in fetched {
        match r {
            Ok(s) => spans.extend(s),
            // A trace not exported yet is simply not there.
            Err(Fetch::NotFound) => {}
            Err(e) => return e.into_response(""),
        }
    }
    spans.sort_by_key(|s| std::cmp::Reverse(s.start_time));
    spans.truncate(limit);
    Json(spans).into_response()
}

// ---- OTLP JSON (as Jaeger api_v3 writes it) ----

/// An OTLP JSON integer: a number or a decimal string (int64s are strings in proto3 JSON).
fn as_u64(v: Option<&Value>) -> u64 {
    match v {
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        _ => 0,
    }
}

fn any_value(v: &Value) -> String {
    let Some(o) = v.as_object() else {
        return String::new();
    };
    if let Some(s) = o.get("stringValue").and_then(Value::as_str) {
        return s.to_owned();
    }
    for k in ["intValue", "doubleValue", "boolValue", "bytesValue"] {
        if let Some(x) = o.get(k) {
            return match x {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
        }
    }
    if let Some(a) = o
        .get("arrayValue")
        .and_then(|a| a.get("values"))
        .and_then(Value::as_array)
    {
        return format!(
            "[{}]",
            a.iter().map(any_value).collect::<Vec<_>>().join(", ")
        );
    }
    if let Some(kv) = o.get("kvlistValue") {
        return serde_json::to_string(&attrs(kv.get("values"))).unwrap_or_default();
    }
    String::new()
}

fn attrs(list: Option<&Value>) -> BTreeMap<String, String> {
    list.and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(|kv| {
                    let k = kv.get("key")?.as_str()?;
                    Some((
                        k.to_owned(),
                        kv.get("value").map(any_value).unwrap_or_default(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// OTLP JSON writes ids as hex (Jaeger, the OTLP/HTTP JSON spec); an empty id is absent.
fn hex_id(v: Option<&Value>, len: usize) -> Option<String> {
    let s = v?.as_str()?;
    (s.len() == len && s.bytes().all(|c| c.is_ascii_hexdigit()) && s.bytes().any(|c| c != b'0'))
        .then(|| s.to_ascii_lowercase())
}

fn kind(v: Option<&Value>) -> &'static str {
    let n = match v {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::String(s)) => match s.as_str() {
            "SPAN_KIND_INTERNAL" => 1,
            "SPAN_KIND_SERVER" => 2,
            "SPAN_KIND_CLIENT" => 3,
            "SPAN_KIND_PRODUCER" => 4,
            "SPAN_KIND_CONSUMER" => 5,
            _ => 0,
        },
        _ => 0,
    };
    match n {
        1 => "internal",
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "unspecified",
    }
}

fn status(v: Option<&Value>) -> (&'static str, Option<String>) {
    let Some(s) = v else { return ("unset", None) };
    let code = match s.get("code") {
        Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
        Some(Value::String(c)) => match c.as_str() {
            "STATUS_CODE_OK" => 1,
            "STATUS_CODE_ERROR" => 2,
            _ => 0,
        },
        _ => 0,
    };
    let msg = s
        .get("message")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .map(str::to_owned);
    match code {
        1 => ("ok", None),
        2 => ("error", msg),
        _ => ("unset", None),
    }
}

/// Why a trace query answer holds no OTLP/JSON spans to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum NotOtlpJson {
    #[error("no result.resourceSpans in the answer")]
    NoResourceSpans,
    #[error("resourceSpans is not a list")]
    NotAList,
}

/// The spans of an api_v3 `{"result": {"resourceSpans": […]}}` document (a bare
/// `{"resourceSpans": …}` too), sorted by start time.
pub(crate) fn spans_from_otlp_json(doc: &Value) -> Result<Vec<SpanOut>, NotOtlpJson> {
    let root = doc.get("result").unwrap_or(doc);
    let rs = root
        .get("resourceSpans")
        .ok_or(NotOtlpJson::NoResourceSpans)?;
    let rs = rs.as_array().ok_or(NotOtlpJson::NotAList)?;
    let mut out = Vec::new();
    for r in rs {
        let resource = attrs(r.get("resource").and_then(|x| x.get("attributes")));
        let service = resource
            .get("service.name")
            .cloned()
            .unwrap_or_else(|| "unknown_service".into());
        let scopes = r
            .get("scopeSpans")
            .or_else(|| r.get("instrumentationLibrarySpans"))
            .and_then(Value::as_array);
        for s in scopes.into_iter().flatten() {
            for sp in s
                .get("spans")
                .and_then(Value::as_array)
                .into_iter()
                .flatten()
            {
                let (Some(trace_id), Some(span_id)) =
                    (hex_id(sp.get("traceId"), 32), hex_id(sp.get("spanId"), 16))
                else {
                    continue;
                };
                let start = as_u64(sp.get("startTimeUnixNano"));
                let end = as_u64(sp.get("endTimeUnixNano")).max(start);
                let (st, err) = status(sp.get("status"));
                out.push(SpanOut {
                    trace_id,
                    span_id,
                    parent_span_id: hex_id(sp.get("parentSpanId"), 16),
                    name: sp
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or("")
                        .to_owned(),
                    start_time: start,
                    duration: end - start,
                    attributes: attrs(sp.get("attributes")),
                    status: st,
                    error_message: err,
                    end_time: end,
                    service_name: service.clone(),
                    kind: kind(sp.get("kind")),
                    events: sp
                        .get("events")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .map(|e| SpanEventOut {
                            name: e
                                .get("name")
                                .and_then(Value::as_str)
                                .unwrap_or("")
                                .to_owned(),
                            time: as_u64(e.get("timeUnixNano")),
                            attributes: attrs(e.get("attributes")),
                        })
                        .collect(),
                    links: sp
                        .get("links")
                        .and_then(Value::as_array)
                        .into_iter()
                        .flatten()
                        .filter_map(|l| {
                            Some(LinkOut {
                                trace_id: hex_id(l.get("traceId"), 32)?,
                                span_id: hex_id(l.get("spanId"), 16)?,
                                attributes: attrs(l.get("attributes")),
                            })
                        })
                        .collect(),
                    resource: resource.clone(),
                });
            }
        }
    }
    out.sort_by(|a, b| a.start_time.cmp(&b.start_time).then(a.name.cmp(&b.name)));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_api_v3_json_with_string_and_number_forms() {
        let doc = serde_json::json!({"result": {"resourceSpans": [{
            "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]},
            "scopeSpans": [{"spans": [
                {"traceId": "AB".repeat(16), "spanId": "01".repeat(8), "parentSpanId": "",
                 "name": "child", "kind": 4, "startTimeUnixNano": "2000", "endTimeUnixNano": "5000",
                 "status": {"code": 2, "message": "boom"},
                 "attributes": [{"key": "n", "value": {"intValue": "7"}}],
                 "links": [{"traceId": "cd".repeat(16), "spanId": "02".repeat(8)}],
                 "events": [{"name": "e", "timeUnixNano": "2500"}]},
                {"traceId": "ab".repeat(16), "spanId": "03".repeat(8), "name": "root",
                 "kind": "SPAN_KIND_SERVER", "startTimeUnixNano": 1000, "endTimeUnixNano": 900,
                 "status": {"code": "STATUS_CODE_OK"}}
            ]}]
        }]}});
        let s = spans_from_otlp_json(&doc).expect("spans");
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].name.as_str(), s[0].kind, s[0].status),
            ("root", "server", "ok")
        );
        assert_eq!(s[0].duration, 0, "an end before the start is clamped");
        let c = &s[1];
        assert_eq!(c.trace_id, "ab".repeat(16));
        assert_eq!(c.parent_span_id, None);
        assert_eq!((c.kind, c.status), ("producer", "error"));
        assert_eq!(c.error_message.as_deref(), Some("boom"));
        assert_eq!((c.start_time, c.duration), (2000, 3000));
        assert_eq!(c.attributes.get("n").map(String::as_str), Some("7"));
        assert_eq!(c.service_name, "svc");
        assert_eq!(c.links[0].trace_id, "cd".repeat(16));
        assert_eq!(c.events[0].time, 2500);
        assert!(spans_from_otlp_json(&serde_json::json!({"x": 1})).is_err());
    }
}
