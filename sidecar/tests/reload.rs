//! Live reload of the real loom-sidecar binary (SIGHUP) while a gRPC client keeps sending:
//! a sampler rule change, an added exporter, a changed exporter endpoint, a removed exporter
//! and an invalid file. Counted at the client (acknowledged spans, errors) and at real tonic
//! backends (every span id received), with `/health` polled throughout.

#![cfg(unix)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use loom_sidecar::model::otlp::string_attr;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use parking_lot::Mutex;

mod common;
use common::Sidecar;

/// Spans per request; even ones come from agent `sensor-1`, odd ones from `proc`.
const SPANS: u64 = 20;
const BATCH_TIMEOUT: Duration = Duration::from_millis(100);

/// Span id (first 8 bytes) → times received.
type Seen = Arc<Mutex<HashMap<u64, u32>>>;

/// Counts each span id of `req` in `seen`.
fn count(seen: &Seen, req: ExportTraceServiceRequest) {
    let mut seen = seen.lock();
    for rs in &req.resource_spans {
        for ss in &rs.scope_spans {
            for s in &ss.spans {
                let id = u64::from_be_bytes(s.span_id[..8].try_into().expect("8 bytes"));
                *seen.entry(id).or_default() += 1;
            }
        }
    }
}

struct Backend {
    addr: SocketAddr,
    seen: Seen,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Backend {
    async fn start(addr: &str) -> Backend {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let seen = Seen::default();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let counted = seen.clone();
        let svc = TraceServiceServer::new(common::Capture(move |req| count(&counted, req)));
        tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                )
                .await;
        });
        Backend {
            addr,
            seen,
            stop: Some(stop),
        }
    }

    fn count(&self, id: u64) -> u32 {
        self.seen.lock().get(&id).copied().unwrap_or(0)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

/// One acknowledged request: its first span id, when it was sent and when answered.
#[derive(Clone, Copy)]
struct Acked {
    first: u64,
    sent: Instant,
    done: Instant,
}

fn request(first: u64) -> ExportTraceServiceRequest {
    let kv = string_attr;
    let spans = (first..first + SPANS)
        .map(|id| Span {
            trace_id: [&id.to_be_bytes()[..], &[7u8; 8]].concat(),
            span_id: id.to_be_bytes().to_vec(),
            name: "work".into(),
            kind: 1,
            start_time_unix_nano: 1,
            end_time_unix_nano: 2,
            attributes: vec![kv(
                "loom.agent.id",
                if id % 2 == 0 { "sensor-1" } else { "proc" },
            )],
            ..Span::default()
        })
        .collect();
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    }
}

/// The sidecar's gRPC receiver on a free port, the same in every config (a reload keeps it).
const RECEIVER: &str =
    "receivers:\n  otlp:\n    protocols:\n      grpc: { endpoint: 127.0.0.1:0 }\n";

/// The end of every config here: metrics on a free port, quiet logs, the given shutdown grace.
fn telemetry(shutdown_grace: &str) -> String {
    format!(
        "  telemetry:\n    metrics: {{ address: 127.0.0.1:0 }}\n    logs: {{ level: warn }}\n  \
         shutdown_grace: {shutdown_grace}\n"
    )
}

fn config(rules: &str, extra: Option<SocketAddr>, main: SocketAddr) -> String {
    let exporter = |name: &str, addr: SocketAddr| {
        format!("  otlp/{name}: {{ endpoint: \"http://{addr}\", compression: none }}\n")
    };
    let mut exporters = exporter("main", main);
    let mut list = "otlp/main".to_owned();
    if let Some(a) = extra {
        exporters.push_str(&exporter("extra", a));
        list.push_str(", otlp/extra");
    }
    format!(
        r#"
{RECEIVER}processors:
  sampler:
    default: {{ sampler: always_on }}
    rules: {rules}
  batch: {{ send_batch_size: 512, timeout: {}ms }}
exporters:
{exporters}
extensions:
  health_check: {{ endpoint: 127.0.0.1:0 }}
service:
  extensions: [health_check]
  pipelines:
    traces: {{ receivers: [otlp], processors: [sampler, batch], exporters: [{list}] }}
{}"#,
        BATCH_TIMEOUT.as_millis(),
        telemetry("5s"),
        RECEIVER = RECEIVER
    )
}

const QUIET_SENSORS: &str =
    "[{ name: quiet-sensors, match: { agent: \"sensor-*\" }, sampler: always_off }]";

async fn metric(http: &reqwest::Client, url: &str, line: &str) -> Option<u64> {
    let text = http.get(url).send().await.ok()?.text().await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(line)?.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

/// Writes `yaml` over the config file, sends SIGHUP and waits until the reload is counted
/// with `result`; returns (signal sent, reload seen).
async fn reload(
    sidecar: &Sidecar,
    path: &std::path::Path,
    yaml: &str,
    result: &str,
    want: u64,
) -> (Instant, Instant) {
    let http = reqwest::Client::new();
    let url = format!("http://{}/metrics", sidecar.addr("metrics/http"));
    std::fs::write(path, yaml).expect("write config");
    let sent = Instant::now();
    let status = Command::new("kill")
        .arg("-HUP")
        .arg(sidecar.pid().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
    let line = format!("loom_sidecar_config_reload_total{{result=\"{result}\"}}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&http, &url, &line).await != Some(want) {
        assert!(Instant::now() < deadline, "no {line} {want}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (sent, Instant::now())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reloads_under_load_lose_no_span_refuse_no_request_and_keep_health() {
    loom_sidecar::service::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let main = Backend::start("127.0.0.1:0").await;
    let a = Backend::start("127.0.0.1:0").await;
    let c = Backend::start("127.0.0.1:0").await;
    let path = dir.path().join("sidecar.yaml");
    let sidecar = Sidecar::start(&config("[]", None, main.addr), dir.path(), Stdio::inherit());

    // Health, polled the whole time.
    let stop = Arc::new(AtomicBool::new(false));
    let unhealthy = Arc::new(AtomicU64::new(0));
    let health_url = format!("http://{}/", sidecar.addr("health_check/http"));
    let health = {
        let (stop, unhealthy) = (stop.clone(), unhealthy.clone());
        tokio::spawn(async move {
            let http = reqwest::Client::new();
            let mut polls = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let ok = http
                    .get(&health_url)
                    .send()
                    .await
                    .is_ok_and(|r| r.status() == 200);
                if !ok {
                    unhealthy.fetch_add(1, Ordering::Relaxed);
                }
                polls += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            polls
        })
    };

    // Load: two clients, one connection each, a request every 5 ms at most.
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let errors: Arc<Mutex<Vec<String>>> = Arc::default();
    let next = Arc::new(AtomicU64::new(1));
    let mut clients = Vec::new();
    for _ in 0..2 {
        let endpoint = format!("http://{}", sidecar.addr("otlp/grpc"));
        let (stop, acked, errors, next) =
            (stop.clone(), acked.clone(), errors.clone(), next.clone());
        clients.push(tokio::spawn(async move {
            let mut client = TraceServiceClient::connect(endpoint)
                .await
                .expect("connect");
            while !stop.load(Ordering::Relaxed) {
                let first = next.fetch_add(SPANS, Ordering::Relaxed);
                let sent = Instant::now();
                match client.export(request(first)).await {
                    Ok(_) => acked.lock().push(Acked {
                        first,
                        sent,
                        done: Instant::now(),
                    }),
                    Err(e) => errors.lock().push(format!("{e:?}")),
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }));
    }
    let bad = config(QUIET_SENSORS, None, main.addr).replace("timeout: 100ms", "timeout: soon");
    // (config, result, how many reloads with that result by then), each after 800 ms of load.
    let steps = [
        (config(QUIET_SENSORS, None, main.addr), "success", 1),
        (config(QUIET_SENSORS, Some(a.addr), main.addr), "success", 2),
        (config(QUIET_SENSORS, Some(c.addr), main.addr), "success", 3),
        (config(QUIET_SENSORS, None, main.addr), "success", 4),
        (bad, "failed", 1),
    ];
    let mut at = Vec::new();
    for (yaml, result, n) in &steps {
        tokio::time::sleep(Duration::from_millis(800)).await;
        at.push(reload(&sidecar, &path, yaml, result, *n).await);
    }
    let [rule, added, moved, removed, invalid] = at[..] else {
        unreachable!("five steps")
    };
    tokio::time::sleep(Duration::from_millis(800)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.expect("client");
    }
    let polls = health.await.expect("health");

    let errors = errors.lock().clone();
    assert!(errors.is_empty(), "refused or failed requests: {errors:?}");
    assert_eq!(
        unhealthy.load(Ordering::Relaxed),
        0,
        "of {polls} health polls"
    );
    let acked = acked.lock().clone();
    assert!(acked.len() > 100, "only {} requests", acked.len());

    // Every kept span reaches main; wait for the last batch.
    let kept = |r: &Acked, id: u64| id % 2 == 1 || r.done < rule.0;
    let missing = || {
        acked
            .iter()
            .any(|r| (r.first..r.first + SPANS).any(|id| kept(r, id) && main.count(id) == 0))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while missing() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let window = BATCH_TIMEOUT;
    let (mut lost, mut twice, mut sampled_late) = (Vec::new(), Vec::new(), Vec::new());
    let (mut to_a, mut to_c, mut extra_lost) = (0u64, 0u64, Vec::new());
    for r in &acked {
        for id in r.first..r.first + SPANS {
            let n = main.count(id);
            if kept(r, id) && n == 0 {
                lost.push(id);
            }
            if n > 1 {
                twice.push(id);
            }
            // A sensor span sent one batch timeout after the rule was in place is dropped.
            if id % 2 == 0 && r.sent > rule.1 + window && n > 0 {
                sampled_late.push(id);
            }
            // While otlp/extra existed (added → removed), every kept span reaches A or C once:
            // A until the endpoint changed (its queue drained), C after, C's queue flushed
            // before the exporter went away.
            if id % 2 == 1 && r.sent > added.1 && r.done < removed.0 {
                let (na, nc) = (a.count(id), c.count(id));
                if na + nc != 1 {
                    extra_lost.push((id, na, nc));
                }
                if r.sent > moved.1 && na > 0 {
                    extra_lost.push((id, na, nc));
                }
                to_a += u64::from(na);
                to_c += u64::from(nc);
            }
        }
    }
    if !lost.is_empty() {
        let t0 = acked[0].sent;
        let at = |t: Instant| t.saturating_duration_since(t0).as_millis();
        for r in acked.iter().filter(|r| lost.contains(&(r.first + 1))) {
            eprintln!(
                "lost request {}: sent {} done {}",
                r.first,
                at(r.sent),
                at(r.done)
            );
        }
        eprintln!(
            "reloads (sent, seen): rule {:?} added {:?} moved {:?} removed {:?} invalid {:?}; last {}",
            (at(rule.0), at(rule.1)),
            (at(added.0), at(added.1)),
            (at(moved.0), at(moved.1)),
            (at(removed.0), at(removed.1)),
            (at(invalid.0), at(invalid.1)),
            at(acked.last().unwrap().done)
        );
    }
    assert!(
        lost.is_empty(),
        "{} acknowledged spans lost at main, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    assert!(twice.is_empty(), "{} spans twice at main", twice.len());
    assert!(
        sampled_late.is_empty(),
        "{} sensor spans kept after the rule",
        sampled_late.len()
    );
    assert!(
        extra_lost.is_empty(),
        "otlp/extra: {:?}",
        &extra_lost[..extra_lost.len().min(5)]
    );
    assert!(to_a > 0 && to_c > 0, "A got {to_a}, C got {to_c}");
    // Nothing reached the extra backends once the exporter was removed.
    for r in acked.iter().filter(|r| r.sent > removed.1) {
        for id in r.first..r.first + SPANS {
            assert_eq!(a.count(id) + c.count(id), 0, "span {id} after removal");
        }
    }
    // The invalid file left the pipeline running: spans sent after it arrived.
    let after_invalid = acked.iter().filter(|r| r.sent > invalid.1).count();
    assert!(
        after_invalid > 10,
        "{after_invalid} requests after the invalid reload"
    );
    let http = reqwest::Client::new();
    let url = format!("http://{}/metrics", sidecar.addr("metrics/http"));
    assert_eq!(
        metric(&http, &url, "loom_sidecar_config_reload_last_success").await,
        Some(0)
    );
}

fn pq_config(endpoint: &str, queue_dir: &std::path::Path, timeout: &str) -> String {
    format!(
        r#"
{RECEIVER}exporters:
  otlp/pq:
    endpoint: "http://{endpoint}"
    compression: none
    timeout: {timeout}
    sending_queue: {{ storage: {{ directory: "{}" }} }}
    retry_on_failure: {{ initial_interval: 50ms, max_interval: 200ms, max_elapsed_time: 10m }}
service:
  pipelines:
    traces: {{ receivers: [otlp], exporters: [otlp/pq] }}
{}"#,
        queue_dir.display(),
        telemetry("2s"),
        RECEIVER = RECEIVER
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_persistent_queue_survives_a_reload_while_its_backend_is_down() {
    loom_sidecar::service::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let queue = dir.path().join("queue");
    let path = dir.path().join("sidecar.yaml");
    // A port nothing listens on yet: the backend comes up after the reload.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let sidecar = Sidecar::start(
        &pq_config(&port.to_string(), &queue, "1s"),
        dir.path(),
        Stdio::inherit(),
    );
    let endpoint = format!("http://{}", sidecar.addr("otlp/grpc"));
    let mut client = TraceServiceClient::connect(endpoint)
        .await
        .expect("connect");
    let mut first = 1;
    let mut send = async |n: u64| {
        for _ in 0..n {
            client.export(request(first)).await.expect("acknowledged");
            first += SPANS;
        }
    };
    send(50).await;
    // A changed exporter setting rebuilds the exporter over the same queue folder.
    reload(
        &sidecar,
        &path,
        &pq_config(&port.to_string(), &queue, "2s"),
        "success",
        1,
    )
    .await;
    send(50).await;
    let backend = Backend::start(&port.to_string()).await;
    let all = 100 * SPANS;
    let deadline = Instant::now() + Duration::from_secs(30);
    while (1..=all).any(|id| backend.count(id) == 0) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Settle: a duplicate would arrive with the next retry.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let missing = (1..=all).filter(|id| backend.count(*id) == 0).count();
    let doubled = (1..=all).filter(|id| backend.count(*id) > 1).count();
    assert_eq!(
        (missing, doubled),
        (0, 0),
        "of {all} spans: missing, doubled"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_file_reloads_without_a_signal() {
    loom_sidecar::service::install_crypto_provider();
    let dir = tempfile::tempdir().expect("tempdir");
    let main = Backend::start("127.0.0.1:0").await;
    let extra = Backend::start("127.0.0.1:0").await;
    let watched = |yaml: String| {
        yaml.replace(
            "  shutdown_grace: 5s\n",
            "  shutdown_grace: 5s\n  reload: { watch: true, debounce: 200ms }\n",
        )
    };
    let sidecar = Sidecar::start(
        &watched(config("[]", None, main.addr)),
        dir.path(),
        Stdio::inherit(),
    );
    let path = dir.path().join("sidecar.yaml");
    std::fs::write(&path, watched(config("[]", Some(extra.addr), main.addr))).expect("write");
    let http = reqwest::Client::new();
    let url = format!("http://{}/metrics", sidecar.addr("metrics/http"));
    let line = "loom_sidecar_config_reload_total{result=\"success\"}";
    let deadline = Instant::now() + Duration::from_secs(20);
    while metric(&http, &url, line).await != Some(1) {
        assert!(
            Instant::now() < deadline,
            "the file change was not reloaded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let endpoint = format!("http://{}", sidecar.addr("otlp/grpc"));
    let mut client = TraceServiceClient::connect(endpoint)
        .await
        .expect("connect");
    client.export(request(1)).await.expect("acknowledged");
    let deadline = Instant::now() + Duration::from_secs(10);
    while extra.count(1) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!((main.count(1), extra.count(1)), (1, 1));
    // An unchanged file (touched, same content) is no reload.
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, text).expect("write");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(metric(&http, &url, line).await, Some(1));
}
