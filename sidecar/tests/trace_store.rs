//! trace_store over loopback: spans sent to the real loom-sidecar binary over OTLP/HTTP come
//! back from every api_v3 endpoint in Jaeger's JSON shapes; bad queries get 400 naming the
//! parameter, unknown traces 404.

use std::process::Stdio;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message;
use serde_json::Value;

mod common;
use common::Sidecar;

const TRACE_A: &str = "0af7651916cd43dd8448eb211c80319c";
const TRACE_B: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
/// 2024-05-01T12:00:00Z in Unix nanoseconds.
const T0: u64 = 1_714_564_800_000_000_000;

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

fn kv(k: &str, v: any_value::Value) -> KeyValue {
    KeyValue {
        key: k.into(),
        value: Some(AnyValue { value: Some(v) }),
        ..KeyValue::default()
    }
}

fn span(trace: &str, id: u8, parent: Option<u8>, name: &str, kind: i32, ms: u64) -> Span {
    Span {
        trace_id: hex(trace),
        span_id: vec![id; 8],
        parent_span_id: parent.map(|p| vec![p; 8]).unwrap_or_default(),
        name: name.into(),
        kind,
        start_time_unix_nano: T0 + id as u64 * 1_000_000,
        end_time_unix_nano: T0 + (id as u64 + ms) * 1_000_000,
        attributes: vec![kv("http.status_code", any_value::Value::IntValue(200))],
        ..Span::default()
    }
}

fn resource_spans(service: &str, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: vec![kv(
                "service.name",
                any_value::Value::StringValue(service.into()),
            )],
            ..Resource::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..ScopeSpans::default()
        }],
        schema_url: String::new(),
    }
}

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn get(&self, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let body = r.bytes().await.unwrap();
        let v = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {body:?}"));
        (status, v)
    }

    /// `GET /api/v3/traces` within the time window of the test's spans, with more `params`.
    async fn search(&self, params: &str) -> (u16, Value) {
        self.get(&format!("/api/v3/traces?{}&{params}", window()))
            .await
    }

    /// Asserts a 400 whose Jaeger-shaped error message names `param`.
    async fn bad(&self, path: &str, param: &str) {
        let (status, v) = self.get(path).await;
        assert_eq!(status, 400, "{path}: {v}");
        assert_eq!(v["error"]["httpCode"], 400, "{path}: {v}");
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains(param), "{path}: {msg:?} does not name {param}");
    }
}

/// Posts `req` to the sidecar's OTLP/HTTP receiver as protobuf; it must be accepted.
async fn export(http: &reqwest::Client, sidecar: &Sidecar, req: &ExportTraceServiceRequest) {
    let r = http
        .post(format!("http://{}/v1/traces", sidecar.addr("otlp/http")))
        .header("content-type", "application/x-protobuf")
        .body(req.encode_to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
}

fn window() -> String {
    "query.start_time_min=2024-05-01T11:59:00Z&query.start_time_max=2024-05-01T12:01:00Z".into()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trace_store_every_endpoint_answers_in_jaeger_shapes() {
    loom_sidecar::service::install_crypto_provider();
    let dir = tempfile::tempdir().unwrap();
    let sidecar = Sidecar::start(
        r#"
receivers:
  otlp:
    protocols:
      http: { endpoint: 127.0.0.1:0 }
processors:
  batch: { send_batch_size: 64, timeout: 20ms }
exporters:
  trace_store: { endpoint: 127.0.0.1:0, max_bytes: 1048576 }
service:
  pipelines:
    traces: { receivers: [otlp], processors: [batch], exporters: [trace_store] }
  telemetry:
    metrics: { address: 127.0.0.1:0 }
"#,
        dir.path(),
        Stdio::inherit(),
    );
    let http = reqwest::Client::new();
    let req = ExportTraceServiceRequest {
        resource_spans: vec![
            resource_spans(
                "svc-a",
                vec![
                    span(TRACE_A, 1, None, "root", 2, 30),
                    span(TRACE_A, 2, Some(1), "child", 3, 10),
                ],
            ),
            resource_spans("svc-b", vec![span(TRACE_B, 3, None, "lonely", 1, 200)]),
            resource_spans("svc-c", vec![span(TRACE_A, 4, Some(2), "handle", 2, 5)]),
        ],
    };
    export(&http, &sidecar, &req).await;

    let api = Api {
        base: format!("http://{}", sidecar.addr("trace_store/http")),
        http: http.clone(),
    };
    // GET /api/v3/traces/{id}: the whole trace, from both services, as OTLP JSON.
    let deadline = Instant::now() + Duration::from_secs(10);
    let trace = loop {
        let (status, v) = api.get(&format!("/api/v3/traces/{TRACE_A}")).await;
        if status == 200 {
            let n: usize = v["result"]["resourceSpans"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|rs| rs["scopeSpans"].as_array().unwrap())
                .map(|ss| ss["spans"].as_array().unwrap().len())
                .sum();
            if n == 3 {
                break v;
            }
        }
        assert!(Instant::now() < deadline, "trace not stored: {status} {v}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut seen = Vec::new();
    for rs in trace["result"]["resourceSpans"].as_array().unwrap() {
        let svc = rs["resource"]["attributes"][0]["value"]["stringValue"]
            .as_str()
            .unwrap();
        for ss in rs["scopeSpans"].as_array().unwrap() {
            for s in ss["spans"].as_array().unwrap() {
                assert_eq!(s["traceId"], TRACE_A);
                seen.push((
                    svc.to_owned(),
                    s["name"].as_str().unwrap().to_owned(),
                    s["spanId"].as_str().unwrap().to_owned(),
                    s["parentSpanId"].as_str().unwrap_or("").to_owned(),
                    s["kind"].as_i64().unwrap(),
                ));
            }
        }
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            (
                "svc-a".into(),
                "child".into(),
                "0202020202020202".into(),
                "0101010101010101".into(),
                3
            ),
            (
                "svc-a".into(),
                "root".into(),
                "0101010101010101".into(),
                String::new(),
                2
            ),
            (
                "svc-c".into(),
                "handle".into(),
                "0404040404040404".into(),
                "0202020202020202".into(),
                2
            ),
        ]
    );
    // Short ids are left-padded as Jaeger does; unknown ids are 404 with Jaeger's body.
    let (status, v) = api.get("/api/v3/traces/123").await;
    assert_eq!((status, &v["error"]["httpCode"]), (404, &Value::from(404)));
    assert_eq!(v["error"]["message"], "No traces found");
    api.bad("/api/v3/traces/xyz", "trace_id").await;
    api.bad(&format!("/api/v3/traces/{TRACE_A}00"), "trace_id")
        .await;

    // GET /api/v3/traces: search.
    let (status, v) = api
        .search("query.service_name=svc-b&query.num_traces=5")
        .await;
    assert_eq!(status, 200, "{v}");
    let rs = v["result"]["resourceSpans"].as_array().unwrap();
    assert_eq!(rs.len(), 1);
    assert_eq!(rs[0]["scopeSpans"][0]["spans"][0]["traceId"], TRACE_B);
    let (_, v) = api.search("query.operation_name=handle").await;
    let ids: Vec<_> = v["result"]["resourceSpans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rs| rs["scopeSpans"][0]["spans"][0]["traceId"].as_str().unwrap())
        .collect();
    assert!(
        !ids.is_empty() && ids.iter().all(|i| *i == TRACE_A),
        "{ids:?}"
    );
    let (status, v) = api.search("query.duration_min=100ms").await;
    assert_eq!(status, 200);
    assert_eq!(
        v["result"]["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"],
        TRACE_B
    );
    let attrs = "query.attributes=%7B%22http.status_code%22%3A%22200%22%7D";
    let (status, _) = api
        .search(&format!("{attrs}&query.service_name=svc-c"))
        .await;
    assert_eq!(status, 200);
    let (status, v) = api
        .get("/api/v3/traces?query.start_time_min=2020-01-01T00:00:00Z&query.start_time_max=2020-01-02T00:00:00Z")
        .await;
    assert_eq!(
        (status, v["error"]["message"].as_str()),
        (404, Some("No traces found"))
    );
    // Each search gets one parameter wrong; the 400 names it.
    let w = window();
    let bad_searches = [
        (
            "query.service_name=svc-a".to_owned(),
            "query.start_time_min",
        ),
        (
            "query.start_time_min=yesterday&query.start_time_max=2024-05-01T12:01:00Z".to_owned(),
            "query.start_time_min",
        ),
        (
            "query.start_time_min=2024-05-01T11:59:00Z&query.start_time_max=noon".to_owned(),
            "query.start_time_max",
        ),
        (format!("{w}&query.num_traces=many"), "query.num_traces"),
        (format!("{w}&query.search_depth=0"), "query.search_depth"),
        (format!("{w}&query.duration_min=5"), "query.duration_min"),
        (format!("{w}&query.duration_max=x"), "query.duration_max"),
        (format!("{w}&query.attributes=nope"), "query.attributes"),
    ];
    for (query, param) in &bad_searches {
        api.bad(&format!("/api/v3/traces?{query}"), param).await;
    }

    // GET /api/v3/services, /api/v3/operations.
    let (status, v) = api.get("/api/v3/services").await;
    assert_eq!(status, 200);
    assert_eq!(
        v,
        serde_json::json!({ "services": ["svc-a", "svc-b", "svc-c"] })
    );
    let (status, v) = api.get("/api/v3/operations?service=svc-a").await;
    assert_eq!(status, 200);
    assert_eq!(
        v,
        serde_json::json!({ "operations": [
            { "name": "child", "spanKind": "client" },
            { "name": "root", "spanKind": "server" },
        ] })
    );
    let (_, v) = api
        .get("/api/v3/operations?service=svc-a&span_kind=server")
        .await;
    assert_eq!(
        v,
        serde_json::json!({ "operations": [{ "name": "root", "spanKind": "server" }] })
    );
    let (_, v) = api.get("/api/v3/operations?service=nobody").await;
    assert_eq!(v, serde_json::json!({ "operations": [] }));
    api.bad("/api/v3/operations", "service").await;
    api.bad(
        "/api/v3/operations?service=svc-a&span_kind=sideways",
        "span_kind",
    )
    .await;

    // A trace that receives more spans is rendered again, not served from the last rendering.
    let more = ExportTraceServiceRequest {
        resource_spans: vec![resource_spans(
            "svc-c",
            vec![span(TRACE_A, 5, Some(4), "late", 1, 1)],
        )],
    };
    export(&http, &sidecar, &more).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, v) = api.get(&format!("/api/v3/traces/{TRACE_A}")).await;
        let names: Vec<String> = v["result"]["resourceSpans"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|rs| rs["scopeSpans"].as_array().unwrap())
            .flat_map(|ss| ss["spans"].as_array().unwrap())
            .map(|s| s["name"].as_str().unwrap().to_owned())
            .collect();
        if names.len() == 4 {
            assert!(names.contains(&"late".to_owned()), "{names:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the late span never showed: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Its size is on /metrics.
    let metrics = http
        .get(format!("http://{}/metrics", sidecar.addr("metrics/http")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("loom_sidecar_trace_store_traces{exporter=\"trace_store\"} 2"),
        "{metrics}"
    );
}

#[test]
fn trace_store_config_errors_name_the_yaml_path() {
    let dir = tempfile::tempdir().unwrap();
    for (yaml, want) in [
        (
            "max_bytes: 10",
            "exporters.trace_store.max_bytes: 10 is below the minimum",
        ),
        (
            "max_traces: 0",
            "exporters.trace_store.max_traces: must be greater than 0",
        ),
        (
            "ttl: 0s",
            "exporters.trace_store.ttl: must be greater than 0",
        ),
        ("endpoint: nowhere", "exporters.trace_store.endpoint"),
        (
            "max_bytez: 1",
            "exporters.trace_store.max_bytez: unknown field",
        ),
    ] {
        let cfg = format!(
            "receivers:\n  otlp:\n    protocols:\n      http: {{ endpoint: 127.0.0.1:0 }}\nexporters:\n  trace_store: {{ {yaml} }}\nservice:\n  pipelines:\n    traces: {{ receivers: [otlp], exporters: [trace_store] }}\n"
        );
        let path = dir.path().join("bad.yaml");
        std::fs::write(&path, cfg).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_loom-sidecar"))
            .args(["validate", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{yaml}: accepted");
        assert!(err.contains(want), "{yaml}: {err}");
    }
}
