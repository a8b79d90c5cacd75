//! The query API over HTTP, shaped like Jaeger v2's api_v3 gateway so a client written for a
//! real Jaeger query service works unchanged.
//!
//! Followed: jaegertracing/jaeger `cmd/jaeger/internal/extension/jaegerquery/internal/apiv3/
//! http_gateway.go` (routes, parameter names, `query.num_traces` as the older name of
//! `query.search_depth`, RFC 3339 times, Go durations, "malformed parameter <name>: ..." and
//! "No traces found" (404, also for a search without results)), its `snapshots/GetTrace.json`
//! and `GetOperations.json` (`{"result": {"resourceSpans": [...]}}`, `{"operations": [{"name",
//! "spanKind"}]}`), and the `GRPCGatewayError` body `{"error": {"httpCode", "message"}}`.
//! `query.attributes` is a JSON object of string values, as Jaeger's clients send it.
//!
//! Departures: `service` is required by `/api/v3/operations` (400 without it) and
//! `query.num_traces` must be 1..=1000; errors are sent as `application/json`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Instant, UNIX_EPOCH};

use axum::extract::{Path, Query as UrlQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use opentelemetry_proto::tonic::trace::v1::TracesData;
use parking_lot::Mutex;
use prost::Message;

use super::json;
use super::store::{self, Query, Store, TraceId};

/// Traces a search returns when `query.num_traces` is not given.
const DEFAULT_NUM_TRACES: usize = 20;
/// Upper bound of `query.num_traces`: keeps one response bounded.
const MAX_NUM_TRACES: usize = 1000;

/// Rendered trace bodies larger than this are not cached.
const MAX_CACHED_BODY: usize = 4 * 1024 * 1024;

pub type Shared = Arc<Mutex<Store>>;

/// The last trace body rendered, by trace id and version: a timeline polls the trace it shows,
/// and rendering (not the lock or the network) is most of a GET's cost.
type Cache = Arc<Mutex<Option<(TraceId, u64, Bytes)>>>;

#[derive(Clone)]
struct ApiState {
    store: Shared,
    cache: Cache,
}

impl axum::extract::FromRef<ApiState> for Shared {
    fn from_ref(s: &ApiState) -> Shared {
        s.store.clone()
    }
}

pub fn router(store: Shared) -> Router {
    Router::new()
        .route("/api/v3/traces/{trace_id}", get(get_trace))
        .route("/api/v3/traces", get(find_traces))
        .route("/api/v3/services", get(services))
        .route("/api/v3/operations", get(operations))
        .with_state(ApiState {
            store,
            cache: Arc::new(Mutex::new(None)),
        })
}

fn json(status: StatusCode, body: impl Into<axum::body::Body>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.into(),
    )
        .into_response()
}

/// An answer other than 200, in Jaeger's `GRPCGatewayError` shape.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({
            "error": { "httpCode": self.status.as_u16(), "message": self.message }
        });
        json(self.status, body.to_string().into_bytes())
    }
}

fn error(status: StatusCode, message: impl Into<String>) -> ApiError {
    ApiError {
        status,
        message: message.into(),
    }
}

fn malformed(param: &str, why: impl std::fmt::Display) -> ApiError {
    error(
        StatusCode::BAD_REQUEST,
        format!("malformed parameter {param}: {why}"),
    )
}

fn not_found() -> Response {
    error(StatusCode::NOT_FOUND, "No traces found").into_response()
}

/// A trace id as Jaeger reads it: 1 to 32 hex digits, left-padded with zeros.
pub fn parse_trace_id(s: &str) -> Result<TraceId, String> {
    if s.is_empty() || s.len() > 32 {
        return Err(format!("{s:?} must be 1 to 32 hex digits"));
    }
    let mut id = [0u8; 16];
    let padded = format!("{s:0>32}");
    for (i, pair) in padded.as_bytes().chunks(2).enumerate() {
        let hex = std::str::from_utf8(pair).map_err(|_| format!("{s:?} is not hex"))?;
        id[i] = u8::from_str_radix(hex, 16).map_err(|_| format!("{s:?} is not hex"))?;
    }
    Ok(id)
}

/// RFC 3339 with optional fraction and a `Z` or `±hh:mm` offset, as Unix nanoseconds (times
/// before 1970 read as 0). A `+` that arrived unencoded in a query reads as a space: accepted.
pub fn parse_rfc3339(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not an RFC 3339 time (e.g. 2024-05-01T12:00:00Z)");
    let b = s.as_bytes();
    let (base, offset_secs): (String, i64) = match b.last() {
        Some(b'Z' | b'z') => (format!("{}Z", &s[..s.len() - 1]), 0),
        _ if b.len() > 6 && b[b.len() - 3] == b':' => {
            let sign = match b[b.len() - 6] {
                b'+' | b' ' => 1,
                b'-' => -1,
                _ => return Err(bad()),
            };
            let hh: i64 = s[s.len() - 5..s.len() - 3].parse().map_err(|_| bad())?;
            let mm: i64 = s[s.len() - 2..].parse().map_err(|_| bad())?;
            (
                format!("{}Z", &s[..s.len() - 6]),
                sign * (hh * 3600 + mm * 60),
            )
        }
        _ => return Err(bad()),
    };
    let t = humantime::parse_rfc3339(&base).map_err(|_| bad())?;
    let ns = match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_nanos() as i128,
        Err(e) => -(e.duration().as_nanos() as i128),
    };
    // Local time minus its offset is UTC.
    let utc = ns - offset_secs as i128 * 1_000_000_000;
    Ok(utc.clamp(0, u64::MAX as i128) as u64)
}

/// A Go duration (`time.ParseDuration`: `300ms`, `1.5h`, `2h45m`), in nanoseconds.
pub fn parse_go_duration(s: &str) -> Result<u64, String> {
    let bad = || format!("{s:?} is not a duration (e.g. 10ms, 1.5s, 2m)");
    if s == "0" {
        return Ok(0);
    }
    let mut rest = s;
    let mut total: f64 = 0.0;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    if !total.is_finite() || total > u64::MAX as f64 {
        return Err(bad());
    }
    Ok(total as u64)
}

/// `{"result": <TracesData as OTLP JSON>}` for the given pieces: written from the bytes
/// (`json`), or through prost and serde when the bytes hold what only they render exactly.
pub fn render_traces(pieces: &[Bytes]) -> Result<Vec<u8>, ApiError> {
    json::render(pieces).or_else(|_| render_traces_decoded(pieces))
}

/// The reference rendering: the pieces decoded into `opentelemetry_proto` and written by its
/// serde derive.
pub fn render_traces_decoded(pieces: &[Bytes]) -> Result<Vec<u8>, ApiError> {
    // The store only holds bytes it encoded from validated spans: a failure is ours (500).
    let td = TracesData::decode(&store::traces_data(pieces)[..])
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    #[derive(serde::Serialize)]
    struct Wrapper<'a> {
        result: &'a TracesData,
    }
    serde_json::to_vec(&Wrapper { result: &td })
        .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))
}

fn traces_response(pieces: &[Bytes]) -> Response {
    match render_traces(pieces) {
        Ok(body) => json(StatusCode::OK, body),
        Err(e) => e.into_response(),
    }
}

async fn get_trace(State(state): State<ApiState>, Path(id): Path<String>) -> Response {
    let id = match parse_trace_id(&id) {
        Ok(id) => id,
        Err(e) => return malformed("trace_id", e).into_response(),
    };
    // Clone the piece handles under the lock; decode and serialize without it.
    let found = {
        let s = state.store.lock();
        s.get(&id, Instant::now())
            .and_then(|p| s.version(&id).map(|v| (v, p)))
    };
    let Some((version, pieces)) = found else {
        return not_found();
    };
    if let Some((_, _, body)) = state
        .cache
        .lock()
        .as_ref()
        .filter(|(i, v, _)| *i == id && *v == version)
    {
        return json(StatusCode::OK, body.clone());
    }
    match render_traces(&pieces) {
        Ok(body) => {
            let body = Bytes::from(body);
            if body.len() <= MAX_CACHED_BODY {
                *state.cache.lock() = Some((id, version, body.clone()));
            }
            json(StatusCode::OK, body)
        }
        Err(e) => e.into_response(),
    }
}

/// Parses the search parameters, or the 400 naming the first bad one.
pub fn parse_query(q: &HashMap<String, String>) -> Result<Query, ApiError> {
    let get = |k: &str| q.get(k).map(String::as_str).filter(|v| !v.is_empty());
    let (Some(min), Some(max)) = (get("query.start_time_min"), get("query.start_time_max")) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "query.start_time_min and query.start_time_max are required",
        ));
    };
    let start_min = parse_rfc3339(min).map_err(|e| malformed("query.start_time_min", e))?;
    let start_max = parse_rfc3339(max).map_err(|e| malformed("query.start_time_max", e))?;
    let (depth_param, depth) = match get("query.search_depth") {
        Some(v) => ("query.search_depth", Some(v)),
        None => ("query.num_traces", get("query.num_traces")),
    };
    let limit = match depth {
        None => DEFAULT_NUM_TRACES,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_NUM_TRACES).contains(&n) => n,
            _ => {
                return Err(malformed(
                    depth_param,
                    format!("{v:?} is not a whole number from 1 to {MAX_NUM_TRACES}"),
                ))
            }
        },
    };
    let duration = |k: &str| {
        get(k)
            .map(parse_go_duration)
            .transpose()
            .map_err(|e| malformed(k, e))
    };
    let duration_min = duration("query.duration_min")?;
    let duration_max = duration("query.duration_max")?;
    let attributes = match get("query.attributes") {
        None => Vec::new(),
        Some(v) => serde_json::from_str::<HashMap<String, String>>(v)
            .map_err(|e| {
                malformed(
                    "query.attributes",
                    format!("must be a JSON object of strings: {e}"),
                )
            })?
            .into_iter()
            .collect(),
    };
    Ok(Query {
        service: get("query.service_name").map(str::to_owned),
        operation: get("query.operation_name").map(str::to_owned),
        start_min,
        start_max,
        duration_min,
        duration_max,
        attributes,
        limit,
    })
}

async fn find_traces(
    State(store): State<Shared>,
    UrlQuery(params): UrlQuery<HashMap<String, String>>,
) -> Response {
    let q = match parse_query(&params) {
        Ok(q) => q,
        Err(e) => return e.into_response(),
    };
    let found = store.lock().find(&q, Instant::now());
    let mut pieces: Vec<Bytes> = Vec::new();
    if q.attributes.is_empty() {
        pieces = found.into_iter().flatten().collect();
    } else {
        let mut n = 0;
        for trace in found {
            if n == q.limit {
                break;
            }
            let Ok(td) = TracesData::decode(&store::traces_data(&trace)[..]) else {
                continue;
            };
            if store::matches_attributes(&td, &q.attributes) {
                pieces.extend(trace);
                n += 1;
            }
        }
    }
    if pieces.is_empty() {
        return not_found();
    }
    traces_response(&pieces)
}

async fn services(State(store): State<Shared>) -> Response {
    let services = store.lock().services();
    let body = serde_json::json!({ "services": services });
    json(StatusCode::OK, body.to_string().into_bytes())
}

async fn operations(
    State(store): State<Shared>,
    UrlQuery(params): UrlQuery<HashMap<String, String>>,
) -> Response {
    let Some(service) = params.get("service").filter(|s| !s.is_empty()) else {
        return malformed("service", "required").into_response();
    };
    let kind = params
        .get("span_kind")
        .map(String::as_str)
        .filter(|k| !k.is_empty());
    if let Some(k) = kind {
        if !["internal", "server", "client", "producer", "consumer"].contains(&k) {
            return malformed(
                "span_kind",
                format!("{k:?} is not one of internal, server, client, producer, consumer"),
            )
            .into_response();
        }
    }
    let ops = store.lock().operations(service, kind);
    let ops: Vec<_> = ops
        .into_iter()
        .map(|(name, kind)| serde_json::json!({ "name": name, "spanKind": kind }))
        .collect();
    let body = serde_json::json!({ "operations": ops });
    json(StatusCode::OK, body.to_string().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_ids_as_jaeger_reads_them() {
        let mut want = [0u8; 16];
        want[14] = 0x01;
        want[15] = 0x23;
        assert_eq!(parse_trace_id("123").unwrap(), want);
        let full = "0102030405060708090a0b0c0d0e0f10";
        assert_eq!(parse_trace_id(full).unwrap()[0], 1);
        assert_eq!(parse_trace_id(&full.to_uppercase()).unwrap()[15], 0x10);
        for bad in ["", "xyz", "é", &"1".repeat(33)] {
            assert!(parse_trace_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn rfc3339_with_fraction_and_offsets() {
        for (text, nanos) in [
            ("1970-01-01T00:00:01Z", 1_000_000_000),
            ("1970-01-01T00:00:01.5Z", 1_500_000_000),
            ("1970-01-01T02:00:01+02:00", 1_000_000_000),
            ("1970-01-01T02:00:01 02:00", 1_000_000_000),
            ("1970-01-01T00:00:01-01:00", 3_601_000_000_000),
        ] {
            assert_eq!(parse_rfc3339(text).unwrap(), nanos, "{text}");
        }
        for bad in ["", "yesterday", "2024-05-01", "2024-05-01T00:00:00"] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("10ms").unwrap(), 10_000_000);
        assert_eq!(parse_go_duration("1.5s").unwrap(), 1_500_000_000);
        assert_eq!(parse_go_duration("2h45m").unwrap(), 9_900_000_000_000);
        assert_eq!(parse_go_duration("3µs").unwrap(), 3_000);
        assert_eq!(parse_go_duration("0").unwrap(), 0);
        for bad in ["", "10", "ms", "-1s", "1d", "1.2.3s"] {
            assert!(parse_go_duration(bad).is_err(), "{bad}");
        }
    }
}
