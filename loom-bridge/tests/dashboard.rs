//! Dashboard API over real HTTP on loopback: every endpoint, the event stream, the trace proxy
//! against a stand-in Jaeger `api_v3` server (OTLP JSON from the official opentelemetry-proto
//! types), the 400/404/5xx answers, the token and the security headers.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::Path;
use axum::http::StatusCode as AxStatus;
use axum::response::IntoResponse;
use axum::routing::get;
use common::TestAgent;
use loom_bridge::config::DashboardSettings;
use loom_bridge::{serve, Bridge, BridgeConfig};
use loom_core::proto::Event;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, status, ResourceSpans, ScopeSpans, Span, Status, TracesData,
};
use opentelemetry_proto::transform::common::tonic::Attributes;
use serde_json::Value;
use tokio::sync::oneshot;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const MISSING: &str = "00000000000000000000000000000abc";
const BROKEN: &str = "00000000000000000000000000000bad";
const HUGE: &str = "0000000000000000000000000000b16b";
const SLOW: &str = "00000000000000000000000000005105";

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}

/// `field` of every object in the JSON array `list`, which must be a string.
fn strings<'a>(list: &'a Value, field: &str) -> Vec<&'a str> {
    let items = list.as_array().expect("a JSON array");
    items.iter().map(|v| v[field].as_str().unwrap()).collect()
}

/// String attributes, through opentelemetry-proto's own conversion from the API's values.
fn attrs(pairs: &[(&str, &str)]) -> Vec<KeyValue> {
    let api = pairs
        .iter()
        .map(|(k, v)| opentelemetry::KeyValue::new(k.to_string(), v.to_string()));
    Attributes::from(api).0
}

fn span(id: &str, parent: &str, name: &str, kind: span::SpanKind, start: u64, end: u64) -> Span {
    Span {
        trace_id: hex(TRACE),
        span_id: hex(id),
        parent_span_id: if parent.is_empty() {
            vec![]
        } else {
            hex(parent)
        },
        name: name.into(),
        kind: kind as i32,
        start_time_unix_nano: start,
        end_time_unix_nano: end,
        ..Default::default()
    }
}

fn resource_spans(service: &str, spans: Vec<Span>) -> ResourceSpans {
    ResourceSpans {
        resource: Some(Resource {
            attributes: attrs(&[("service.name", service)]),
            ..Default::default()
        }),
        scope_spans: vec![ScopeSpans {
            spans,
            ..Default::default()
        }],
        ..Default::default()
    }
}

/// The trace the stand-in serves: a sensor's root, the bridge's two children, an agent's
/// consumer span with an error, an event and a link back to the root.
fn trace_doc() -> Value {
    let base = 1_700_000_000_000_000_000u64;
    let mut consumer = span(
        "00000000000000c4",
        "00000000000000b3",
        "agent.on_event",
        span::SpanKind::Consumer,
        base + 4_000,
        base + 9_000,
    );
    consumer.status = Some(Status {
        code: status::StatusCode::Error as i32,
        message: "<b>boom</b>".into(),
    });
    consumer.attributes = attrs(&[("messaging.destination.name", "sensor.data")]);
    consumer.events = vec![span::Event {
        time_unix_nano: base + 5_000,
        name: "retry".into(),
        ..Default::default()
    }];
    consumer.links = vec![span::Link {
        trace_id: hex(TRACE),
        span_id: hex("00000000000000a1"),
        ..Default::default()
    }];
    let data = TracesData {
        resource_spans: vec![
            resource_spans(
                "agent-sensor",
                vec![span(
                    "00000000000000a1",
                    "",
                    "sensor.emit_data",
                    span::SpanKind::Producer,
                    base,
                    base + 10_000,
                )],
            ),
            resource_spans(
                "loom-bridge",
                vec![
                    span(
                        "00000000000000b3",
                        "00000000000000b2",
                        "bridge.forward",
                        span::SpanKind::Client,
                        base + 3_000,
                        base + 8_000,
                    ),
                    span(
                        "00000000000000b2",
                        "00000000000000a1",
                        "bridge.publish",
                        span::SpanKind::Server,
                        base + 1_000,
                        base + 3_500,
                    ),
                ],
            ),
            resource_spans("agent-processor", vec![consumer]),
        ],
    };
    serde_json::json!({ "result": serde_json::to_value(&data).unwrap() })
}

/// A stand-in Jaeger query service: `GET /api/v3/traces/{id}` as Jaeger v2 answers it.
async fn stand_in() -> SocketAddr {
    async fn one(Path(id): Path<String>) -> axum::response::Response {
        match id.as_str() {
            TRACE => axum::Json(trace_doc()).into_response(),
            BROKEN => (AxStatus::INTERNAL_SERVER_ERROR, "storage down").into_response(),
            HUGE => "x".repeat(200_000).into_response(),
            SLOW => {
                tokio::time::sleep(Duration::from_secs(5)).await;
                axum::Json(trace_doc()).into_response()
            }
            _ => (
                AxStatus::NOT_FOUND,
                r#"{"error":{"code":5,"message":"trace not found"}}"#,
            )
                .into_response(),
        }
    }
    let app = axum::Router::new().route("/api/v3/traces/{id}", get(one));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(l, app).await.unwrap() });
    addr
}

struct Dash {
    grpc: SocketAddr,
    url: String,
    bridge: Bridge,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl Dash {
    async fn start(settings: DashboardSettings) -> Dash {
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dash = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let (g, d) = (grpc.local_addr().unwrap(), dash.local_addr().unwrap());
        let bridge = Bridge::new(BridgeConfig {
            dashboard: settings,
            ..BridgeConfig::default()
        });
        let (tx, rx) = oneshot::channel::<()>();
        let b = bridge.clone();
        let task = tokio::spawn(async move {
            serve(b, grpc, Some(dash), async {
                let _ = rx.await;
            })
            .await
            .expect("serve");
        });
        Dash {
            grpc: g,
            url: format!("http://{d}"),
            bridge,
            stop: Some(tx),
            task,
        }
    }

    fn test_bridge(&self) -> common::TestBridge {
        common::TestBridge::attach(self.grpc, self.bridge.clone())
    }

    async fn get(&self, path: &str) -> (u16, Value) {
        let r = http()
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .expect("GET");
        let status = r.status().as_u16();
        let body = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::String(body)),
        )
    }

    /// Stops the bridge; an open event stream must not hold the shutdown up.
    async fn stop(mut self) {
        let _ = self.stop.take().map(|s| s.send(()));
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("bridge and dashboard stop within 10 s")
            .expect("serve task");
    }
}

fn http() -> reqwest::Client {
    // As in `dashboard::router`: reqwest built with the workspace needs a crypto provider.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

fn settings(query: Option<SocketAddr>) -> DashboardSettings {
    DashboardSettings {
        jaeger_ui_url: Some("http://jaeger.example:16686".into()),
        trace_query_url: query.map(|a| format!("http://{a}")),
        query_timeout: Duration::from_secs(1),
        query_max_bytes: 64 * 1024,
        ping_interval: Duration::from_millis(200),
        max_sse_clients: 2,
        ..DashboardSettings::default()
    }
}

fn traced_event(kind: &str, payload: &str) -> Event {
    Event {
        r#type: kind.into(),
        payload: payload.as_bytes().to_vec(),
        metadata: HashMap::from([(
            "traceparent".to_string(),
            format!("00-{TRACE}-00f067aa0ba902b7-01"),
        )]),
        ..Default::default()
    }
}

fn err_of(v: &Value) -> &str {
    v["error"].as_str().unwrap_or_default()
}

#[tokio::test]
async fn dashboard_endpoints_answer_in_their_shapes() {
    let q = stand_in().await;
    let d = Dash::start(settings(Some(q))).await;
    let tb = d.test_bridge();
    let mut sink = TestAgent::join(&tb, "sink", &["sensor.data"], &["summarize"]).await;
    let mut src = TestAgent::join(&tb, "src", &[], &[]).await;
    src.publish("sensor.data", traced_event("sensor.reading", r#"{"v":1}"#))
        .await;
    assert_eq!(src.next_ack().await.code, 0);
    sink.next_delivery().await;

    // The page and its assets: no inline script, a CSP forbidding it.
    let r = http().get(format!("{}/", d.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"),
        "{csp}"
    );
    assert_eq!(r.headers()["x-content-type-options"], "nosniff");
    let html = r.text().await.unwrap();
    assert!(html.contains(r#"<script src="/app.js" defer></script>"#));
    assert_eq!(
        html.matches("<script").count(),
        1,
        "one script, loaded from /app.js"
    );
    let js = http()
        .get(format!("{}/app.js", d.url))
        .send()
        .await
        .unwrap();
    assert!(js.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/javascript"));
    let js = js.text().await.unwrap();
    assert!(
        !js.contains("innerHTML") && !js.contains("insertAdjacentHTML"),
        "agent strings must go in as text"
    );

    let (s, v) = d.get("/api/config").await;
    assert_eq!(s, 200);
    assert_eq!(v["jaeger_ui_url"], "http://jaeger.example:16686");

    let (_, agents) = d.get("/api/agents").await;
    assert_eq!(strings(&agents, "agent_id"), ["sink", "src"]);
    let (_, stats) = d.get("/api/stats").await;
    assert_eq!(stats["topics"]["sensor.data"]["published"], 1);
    let (_, flows) = d.get("/api/flows?limit=10").await;
    assert_eq!(flows[0]["trace_id"], TRACE);
    assert_eq!(flows[0]["sender"], "src");
    assert_eq!(flows[0]["receivers"][0], "sink");
    let (_, by_trace) = d
        .get(&format!("/api/flows?trace_id={}", TRACE.to_uppercase()))
        .await;
    assert_eq!(by_trace.as_array().unwrap().len(), 1);

    let (_, topo) = d.get("/api/topology").await;
    let sink_node = topo["agents"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == "sink")
        .unwrap();
    assert_eq!(sink_node["topics"][0], "sensor.data");
    assert_eq!(sink_node["capabilities"][0], "summarize");
    assert_eq!(sink_node["delivered"], 1);
    assert!(sink_node["last_activity_ms"].as_u64().unwrap() > 0);
    assert_eq!(topo["edges"][0]["from_topic"], "sensor.data");
    assert_eq!(topo["edges"][0]["to_agent"], "sink");
    assert_eq!(topo["edges"][0]["event_count"], 1);
    assert_eq!(topo["publishes"][0]["from_agent"], "src");
    assert_eq!(topo["topics"][0]["topic"], "sensor.data");
    assert!(topo["timestamp"].as_str().unwrap().ends_with('Z'));

    let (_, flow) = d.get("/api/flow").await;
    let f = &flow["flows"][0];
    assert_eq!(
        (
            f["source"].as_str(),
            f["target"].as_str(),
            f["topic"].as_str(),
            f["count"].as_u64()
        ),
        (Some("src"), Some("sink"), Some("sensor.data"), Some(1))
    );
    assert!(flow["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n["id"] == "EventBus" && n["node_type"] == "eventbus"));

    let (_, m) = d.get("/api/metrics").await;
    assert_eq!(m["active_agents"], 2);
    assert_eq!(m["active_subscriptions"], 1);
    assert!(m["events_per_sec"].as_f64().unwrap() > 0.0);
    assert!(m["tool_invocations_per_sec"].is_number());

    let (_, recent) = d.get("/api/traces").await;
    assert_eq!(recent[0]["trace_id"], TRACE);
    assert_eq!(recent[0]["first_topic"], "sensor.data");

    // One trace, read through the stand-in api_v3 server.
    let (s, spans) = d.get(&format!("/api/traces/{TRACE}")).await;
    assert_eq!(s, 200, "{spans}");
    let spans = spans.as_array().unwrap();
    let got: Vec<(&str, &str, &str)> = spans
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap(),
                s["service_name"].as_str().unwrap(),
                s["kind"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("sensor.emit_data", "agent-sensor", "producer"),
            ("bridge.publish", "loom-bridge", "server"),
            ("bridge.forward", "loom-bridge", "client"),
            ("agent.on_event", "agent-processor", "consumer"),
        ]
    );
    assert_eq!(spans[0]["parent_span_id"], Value::Null);
    assert_eq!(spans[1]["parent_span_id"], "00000000000000a1");
    assert_eq!(spans[3]["status"], "error");
    assert_eq!(spans[3]["error_message"], "<b>boom</b>");
    assert_eq!(spans[3]["duration"], 5_000);
    assert_eq!(spans[3]["links"][0]["span_id"], "00000000000000a1");
    assert_eq!(spans[3]["events"][0]["name"], "retry");
    assert_eq!(
        spans[3]["attributes"]["messaging.destination.name"],
        "sensor.data"
    );

    let (s, recent_spans) = d.get("/api/spans/recent?limit=2").await;
    assert_eq!(s, 200);
    assert_eq!(
        strings(&recent_spans, "name"),
        ["agent.on_event", "bridge.forward"],
        "newest first, limited"
    );

    d.stop().await;
}

#[tokio::test]
async fn bad_requests_get_400_or_404_naming_the_problem() {
    let q = stand_in().await;
    let d = Dash::start(settings(Some(q))).await;
    for (path, status, names) in [
        ("/api/flows?limit=x", 400, "limit"),
        ("/api/flows?limit=10001", 400, "limit"),
        ("/api/flows?trace_id=zz", 400, "trace_id"),
        ("/api/flows?bogus=1", 400, "bogus"),
        ("/api/agents?x=1", 400, "x: unknown query parameter"),
        ("/api/traces?limit=-1", 400, "limit"),
        ("/api/spans/recent?limit=5000", 400, "limit"),
        ("/api/traces/not-a-trace-id", 400, "trace_id"),
        (
            "/api/traces/00000000000000000000000000000000",
            400,
            "trace_id",
        ),
        ("/api/events/stream?since=1", 400, "since"),
        ("/api/nope", 404, "/api/nope"),
        (&format!("/api/traces/{MISSING}") as &str, 404, MISSING),
        (&format!("/api/traces/{BROKEN}"), 502, "500"),
        (
            &format!("/api/traces/{HUGE}"),
            502,
            "larger than 65536 bytes",
        ),
        (&format!("/api/traces/{SLOW}"), 504, "trace query service"),
    ] {
        let (s, v) = d.get(path).await;
        assert_eq!(s, status, "{path}: {v}");
        assert!(err_of(&v).contains(names), "{path}: {v}");
    }
    d.stop().await;

    // No trace query service configured: the trace endpoints say so.
    let d = Dash::start(settings(None)).await;
    let (s, v) = d.get(&format!("/api/traces/{TRACE}")).await;
    assert_eq!(s, 503);
    assert!(err_of(&v).contains("--trace-query-url"), "{v}");
    let (s, _) = d.get("/api/spans/recent").await;
    assert_eq!(s, 503);
    d.stop().await;

    // A query service that is not listening.
    let dead = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap();
    let d = Dash::start(settings(Some(dead))).await;
    let (s, v) = d.get(&format!("/api/traces/{TRACE}")).await;
    assert_eq!(s, 502, "{v}");
    d.stop().await;
}

/// Reads SSE frames until `pred` holds for one (bounded).
async fn read_sse(
    resp: &mut reqwest::Response,
    buf: &mut String,
    pred: impl Fn(&str, &str) -> bool,
) -> (String, String) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        while let Some(end) = buf.find("\n\n") {
            let frame: String = buf.drain(..end + 2).collect();
            let mut event = "message".to_string();
            let mut data = String::new();
            for line in frame.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim().to_owned();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push_str(d.trim_start());
                }
            }
            if pred(&event, &data) {
                return (event, data);
            }
        }
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .expect("an SSE frame within 10 s")
            .expect("stream ok")
            .expect("stream open");
        buf.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

#[tokio::test]
async fn event_stream_sends_each_event_and_pings_and_caps_clients() {
    let d = Dash::start(settings(None)).await;
    let tb = d.test_bridge();
    let _sink = TestAgent::join(&tb, "sink", &["alerts.*"], &[]).await;
    let mut src = TestAgent::join(&tb, "<img/src=x/onerror=alert(1)>", &[], &[]).await;

    let mut a = http()
        .get(format!("{}/api/events/stream", d.url))
        .send()
        .await
        .unwrap();
    assert_eq!(a.status(), 200);
    assert!(a.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut buf = String::new();
    read_sse(&mut a, &mut buf, |e, _| e == "ping").await;

    let payload = format!("<script>x</script>{}", "y".repeat(1000));
    src.publish("alerts.high", traced_event("alert", &payload))
        .await;
    assert_eq!(src.next_ack().await.code, 0);
    let (_, data) = read_sse(&mut a, &mut buf, |e, _| e == "message").await;
    let ev: Value = serde_json::from_str(&data).unwrap();
    assert_eq!(ev["event_type"], "event_published");
    assert_eq!(ev["topic"], "alerts.high");
    assert_eq!(ev["sender"], "<img/src=x/onerror=alert(1)>");
    assert_eq!(ev["receivers"][0], "sink");
    assert_eq!(ev["type"], "alert");
    assert_eq!(ev["trace_id"], TRACE);
    assert_eq!(ev["payload_bytes"], payload.len());
    assert_eq!(
        ev["payload_preview"].as_str().unwrap(),
        &payload[..loom_core::flow::PAYLOAD_PREVIEW_BYTES]
    );
    assert_eq!(
        ev["jaeger_url"],
        format!("http://jaeger.example:16686/trace/{TRACE}")
    );

    // The client cap (2 here): the third concurrent stream is refused, and counted.
    let b = http()
        .get(format!("{}/api/events/stream", d.url))
        .send()
        .await
        .unwrap();
    assert_eq!(b.status(), 200);
    let (s, v) = d.get("/api/events/stream").await;
    assert_eq!(s, 503);
    assert!(err_of(&v).contains("limit 2"), "{v}");
    let (_, m) = d.get("/api/metrics").await;
    assert_eq!(m["sse_clients"], 2);
    assert_eq!(m["sse_refused"], 1);
    drop(b);

    // Open streams end with the bridge: shutdown is not held up by a browser.
    d.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match a.chunk().await {
                Ok(Some(_)) => continue,
                _ => return,
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the event stream closes on shutdown");
}

#[tokio::test]
async fn token_is_required_when_configured() {
    let d = Dash::start(DashboardSettings {
        token: Some("s3cret".into()),
        ..settings(None)
    })
    .await;
    let c = http();
    let get = |path: &str| c.get(format!("{}{path}", d.url));
    let r = get("/api/agents").send().await.unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(r.headers()["www-authenticate"], "Bearer");
    assert!(r.headers().contains_key("content-security-policy"));
    let r = get("/").send().await.unwrap();
    assert_eq!(r.status(), 401);
    for (token, status) in [("wrong", 401), ("s3cret", 200)] {
        let r = get("/api/agents").bearer_auth(token).send().await.unwrap();
        assert_eq!(r.status(), status, "bearer {token}");
    }
    // The page's own requests carry the token as a cookie, set from /?token= once.
    let r = get("/?token=wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = get("/?token=s3cret").send().await.unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap().to_owned();
    let r = get("/api/events/stream")
        .header("cookie", pair)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    drop(r);
    d.stop().await;
}

/// The binary's own checks: off loopback only with a token; link and query URLs must be http(s).
#[test]
fn binary_refuses_an_open_dashboard_without_a_token_and_bad_urls() {
    let run = |args: &[&str], token: Option<&str>| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_loom-bridge"));
        c.args(["--listen", "127.0.0.1:0"]).args(args);
        c.env_remove("LOOM_DASHBOARD_TOKEN")
            .env_remove("LOOM_JAEGER_UI_URL")
            .env_remove("LOOM_TRACE_QUERY_URL");
        if let Some(t) = token {
            c.env("LOOM_DASHBOARD_TOKEN", t);
        }
        let out = c.output().expect("run loom-bridge");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = run(&["--dashboard-listen", "0.0.0.0:0"], None);
    assert!(!ok);
    assert!(
        err.contains("not a loopback address") && err.contains("LOOM_DASHBOARD_TOKEN"),
        "{err}"
    );
    let (ok, err) = run(&["--jaeger-ui-url", "javascript:alert(1)"], None);
    assert!(!ok);
    assert!(err.contains("--jaeger-ui-url"), "{err}");
    let (ok, err) = run(&["--trace-query-url", "http:///x"], None);
    assert!(!ok);
    assert!(err.contains("--trace-query-url"), "{err}");
}
