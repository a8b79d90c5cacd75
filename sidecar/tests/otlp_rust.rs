//! The Rust `opentelemetry-otlp` exporter (tonic) drives the real loom-sidecar binary; every
//! span the Rust SDK recorded comes back through the file exporter with its fields intact.

use std::process::Stdio;
use std::time::{Duration, Instant};

use opentelemetry::trace::{
    Link, Span as _, SpanContext, SpanId, SpanKind, Status, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SimpleSpanProcessor};
use opentelemetry_sdk::Resource;
use serde_json::Value;

mod common;
use common::{config_file, sidecar_cli, Sidecar};

fn attr_map(v: &Value) -> serde_json::Map<String, Value> {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|kv| (kv["key"].as_str().unwrap().to_owned(), kv["value"].clone()))
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rust_sdk_spans_round_trip_through_the_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("spans.jsonl");
    let sidecar = Sidecar::start(
        &format!(
            r#"
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: 127.0.0.1:0 }}
processors:
  batch: {{ send_batch_size: 64, timeout: 50ms }}
exporters:
  file: {{ path: "{}" }}
service:
  pipelines:
    traces: {{ receivers: [otlp], processors: [batch], exporters: [file] }}
  telemetry:
    metrics: {{ address: none }}
"#,
            out.display()
        ),
        dir.path(),
        Stdio::null(),
    );

    let memory = InMemorySpanExporter::default();
    let otlp = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(format!("http://{}", sidecar.addr("otlp/grpc")))
        .build()
        .unwrap();
    let provider = SdkTracerProvider::builder()
        .with_resource(
            Resource::builder()
                .with_service_name("rust-interop")
                .with_attribute(KeyValue::new("res.n", 3))
                .build(),
        )
        .with_span_processor(SimpleSpanProcessor::new(memory.clone()))
        .with_span_processor(SimpleSpanProcessor::new(otlp))
        .build();
    let tracer = provider.tracer_with_scope(
        opentelemetry::InstrumentationScope::builder("rust.scope")
            .with_version("9.9")
            .build(),
    );
    let linked = SpanContext::new(
        TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap(),
        SpanId::from_hex("b7ad6b7169203331").unwrap(),
        TraceFlags::SAMPLED,
        true,
        TraceState::from_key_value([("congo", "t61rcWkgMzE")]).unwrap(),
    );
    let mut span = tracer
        .span_builder("rust.root")
        .with_kind(SpanKind::Producer)
        .with_attributes(vec![
            KeyValue::new("s", "text ✓"),
            KeyValue::new("b", true),
            KeyValue::new("i", -5i64),
            KeyValue::new("f", 2.5),
            KeyValue::new("arr", opentelemetry::Value::Array(vec![1i64, 2, 3].into())),
        ])
        .with_links(vec![Link::with_context(linked)])
        .start(&tracer);
    span.add_event("evt", vec![KeyValue::new("k", "v")]);
    span.set_status(Status::error("bad thing"));
    span.end();
    provider.force_flush().unwrap();

    let sent = memory.get_finished_spans().unwrap();
    assert_eq!(sent.len(), 1);
    let sent = &sent[0];

    let deadline = Instant::now() + Duration::from_secs(15);
    let line = loop {
        if let Some(l) = std::fs::read_to_string(&out)
            .ok()
            .and_then(|t| t.lines().next().map(str::to_owned))
        {
            break l;
        }
        assert!(Instant::now() < deadline, "span did not arrive");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let doc: Value = serde_json::from_str(&line).unwrap();
    let rs = &doc["resourceSpans"][0];
    let ss = &rs["scopeSpans"][0];
    let got = &ss["spans"][0];
    assert_eq!(got["traceId"], sent.span_context.trace_id().to_string());
    assert_eq!(got["spanId"], sent.span_context.span_id().to_string());
    assert_eq!(got["name"], "rust.root");
    assert_eq!(got["kind"], 4, "PRODUCER");
    let to_ns = |t: std::time::SystemTime| {
        t.duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
            .to_string()
    };
    assert_eq!(got["startTimeUnixNano"], to_ns(sent.start_time));
    assert_eq!(got["endTimeUnixNano"], to_ns(sent.end_time));
    let a = attr_map(&got["attributes"]);
    assert_eq!(a["s"], serde_json::json!({"stringValue": "text ✓"}));
    assert_eq!(a["b"], serde_json::json!({"boolValue": true}));
    assert_eq!(a["i"], serde_json::json!({"intValue": "-5"}));
    assert_eq!(a["f"], serde_json::json!({"doubleValue": 2.5}));
    assert_eq!(
        a["arr"]["arrayValue"]["values"].as_array().unwrap().len(),
        3
    );
    assert_eq!(got["events"][0]["name"], "evt");
    assert_eq!(
        attr_map(&got["events"][0]["attributes"])["k"],
        serde_json::json!({"stringValue": "v"})
    );
    assert_eq!(
        got["links"][0]["traceId"],
        "0af7651916cd43dd8448eb211c80319c"
    );
    assert_eq!(got["links"][0]["spanId"], "b7ad6b7169203331");
    assert_eq!(got["links"][0]["traceState"], "congo=t61rcWkgMzE");
    assert_eq!(got["status"]["code"], 2);
    assert_eq!(got["status"]["message"], "bad thing");
    assert_eq!(
        attr_map(&rs["resource"]["attributes"])["service.name"],
        serde_json::json!({"stringValue": "rust-interop"})
    );
    assert_eq!(
        attr_map(&rs["resource"]["attributes"])["res.n"],
        serde_json::json!({"intValue": "3"})
    );
    assert_eq!(ss["scope"]["name"], "rust.scope");
    assert_eq!(ss["scope"]["version"], "9.9");
    let _ = provider.shutdown();
}

#[test]
fn validate_reports_yaml_paths_and_print_config_redacts() {
    let dir = tempfile::tempdir().unwrap();
    let bad = config_file(dir.path(), "bad.yaml", "exporters:\n  otlp/x: { endpoint: 'http://h:1', headers: { authorization: 'Bearer s3cr3t' }, bogus: 1 }\nservice:\n  pipelines:\n    traces: { receivers: [otlp], exporters: [otlp/x] }\n");
    let o = sidecar_cli("validate", &bad);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("exporters.otlp/x.bogus: unknown field `bogus`"),
        "{err}"
    );
    assert!(
        err.contains("service.pipelines.traces.receivers[0]: \"otlp\" is not defined"),
        "{err}"
    );

    let good = config_file(dir.path(), "good.yaml", "receivers:\n  otlp: { protocols: { grpc: } }\nexporters:\n  otlp/x: { endpoint: 'http://h:1', headers: { authorization: 'Bearer s3cr3t' } }\nservice:\n  pipelines:\n    traces: { receivers: [otlp], exporters: [otlp/x] }\n");
    let o = sidecar_cli("validate", &good);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = sidecar_cli("print-config", &good);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success());
    assert!(
        !text.contains("s3cr3t") && text.contains("authorization: <redacted>"),
        "{text}"
    );
}
