//! The loadbalancing exporter against three real OTLP/gRPC backends on loopback: every span of
//! a trace reaches one backend, and removing a backend mid-run moves only that backend's trace
//! ids (about 1/3), while traces sent after the change arrive whole.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::trace::v1 as pb;
use tokio::sync::mpsc;

use loom_sidecar::component::Exporter;
use loom_sidecar::config::ComponentId;
use loom_sidecar::exporters::loadbalancing::{parse_settings, LoadBalancer};
use loom_sidecar::metrics::{Metric, Metrics};
use loom_sidecar::model::{Batch, ResourceSpans};

mod common;

/// A capture backend on `addr` whose spans are reported as (its index, trace id, span id).
async fn backend(
    addr: &str,
    ix: usize,
    tx: mpsc::UnboundedSender<(usize, Vec<u8>, Vec<u8>)>,
) -> String {
    common::serve_capture(addr, move |req| {
        for s in req
            .resource_spans
            .into_iter()
            .flat_map(|rs| rs.scope_spans)
            .flat_map(|ss| ss.spans)
        {
            let _ = tx.send((ix, s.trace_id, s.span_id));
        }
    })
    .await
}

/// Trace ids from a counter, mixed so their low bytes are spread.
fn trace_id(i: u64) -> Vec<u8> {
    let mut id = Vec::with_capacity(16);
    id.extend_from_slice(&i.to_be_bytes());
    id.extend_from_slice(&i.wrapping_mul(0x9e37_79b9_7f4a_7c15).to_be_bytes());
    id
}

/// One batch per "agent": span `j` of every trace goes to batch `j` (3 spans per trace).
fn batches(ids: &[Vec<u8>], round: u8) -> Vec<Arc<Batch>> {
    (0..3u8)
        .map(|j| {
            let spans = ids
                .iter()
                .map(|id| pb::Span {
                    trace_id: id.clone(),
                    span_id: vec![round, j, id[6], id[7], 1, 2, 3, 4],
                    name: format!("s{j}"),
                    ..pb::Span::default()
                })
                .collect();
            let rs = ResourceSpans::from_proto(&pb::ResourceSpans {
                scope_spans: vec![pb::ScopeSpans {
                    spans,
                    ..pb::ScopeSpans::default()
                }],
                ..pb::ResourceSpans::default()
            })
            .expect("valid");
            Arc::new(Batch::new(vec![rs], Arc::new(Vec::new())))
        })
        .collect()
}

/// Exports the batches and waits for `want` spans; returns trace id -> backends of its spans.
async fn deliver(
    lb: &LoadBalancer,
    batches: Vec<Arc<Batch>>,
    rx: &mut mpsc::UnboundedReceiver<(usize, Vec<u8>, Vec<u8>)>,
    want: usize,
) -> HashMap<Vec<u8>, Vec<usize>> {
    for b in batches {
        lb.export(b).await.expect("routed");
    }
    let mut by_trace: HashMap<Vec<u8>, Vec<usize>> = HashMap::new();
    let mut spans = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while spans.len() < want {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((ix, tid, sid))) = tokio::time::timeout(left, rx.recv()).await else {
            panic!("only {} of {want} spans arrived", spans.len());
        };
        assert!(spans.insert(sid), "a span arrived twice");
        by_trace.entry(tid).or_default().push(ix);
    }
    by_trace
}

fn whole_at_one(by_trace: &HashMap<Vec<u8>, Vec<usize>>) -> HashMap<Vec<u8>, usize> {
    by_trace
        .iter()
        .map(|(tid, ixs)| {
            assert_eq!(ixs.len(), 3, "trace incomplete");
            assert!(ixs.iter().all(|i| *i == ixs[0]), "trace split: {ixs:?}");
            (tid.clone(), ixs[0])
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_backend_mid_run_moves_only_its_trace_ids() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut addrs = Vec::new();
    for ix in 0..3 {
        addrs.push(backend("127.0.0.1:0", ix, tx.clone()).await);
    }
    let yaml = format!(
        "protocol: {{ otlp: {{ tls: {{ insecure: true }}, compression: none }} }}\n\
         resolver: {{ static: {{ hostnames: [{}] }} }}\n",
        addrs.join(", ")
    );
    let v: serde_yaml::Value = serde_yaml::from_str(&yaml).expect("yaml");
    let settings = parse_settings(&v, "exporters.loadbalancing").expect("valid");
    let id = ComponentId::parse("loadbalancing").expect("id");
    let lb = LoadBalancer::new(&id, Arc::new(settings), Metrics::new());
    lb.set_backends(&addrs);

    let ids: Vec<Vec<u8>> = (0..3000).map(trace_id).collect();
    let before = whole_at_one(&deliver(&lb, batches(&ids, 1), &mut rx, 3 * ids.len()).await);
    let mut shares = [0usize; 3];
    for ix in before.values() {
        shares[*ix] += 1;
    }
    assert!(shares.iter().all(|s| *s > 700), "shares {shares:?}");

    // Mid-run: backend 2 leaves the set (as when its pod leaves the headless Service).
    let removed = 2;
    let remaining: Vec<String> = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != removed)
        .map(|(_, a)| a.clone())
        .collect();
    lb.set_backends(&remaining);
    assert_eq!(lb.backends().len(), 2);

    // The same ids again plus new ones, all after the change.
    let mut again = ids.clone();
    again.extend((10_000..11_000).map(trace_id));
    let after = whole_at_one(&deliver(&lb, batches(&again, 2), &mut rx, 3 * again.len()).await);
    assert!(after.values().all(|ix| *ix != removed));
    let moved: Vec<&Vec<u8>> = ids.iter().filter(|t| before[*t] != after[*t]).collect();
    assert!(
        moved.iter().all(|t| before[*t] == removed),
        "only the removed backend's ids move"
    );
    assert_eq!(moved.len(), shares[removed], "and all of them move");
    let share = moved.len() as f64 / ids.len() as f64;
    assert!((0.25..=0.42).contains(&share), "moved {share:.3}");
}

/// A router on one backend, with fast retries (the backend may be down).
fn router(addr: &str, metrics: Arc<Metrics>) -> Arc<LoadBalancer> {
    let yaml = format!(
        "protocol: {{ otlp: {{ tls: {{ insecure: true }}, compression: none,\n\
         retry_on_failure: {{ initial_interval: 50ms, max_interval: 200ms }} }} }}\n\
         resolver: {{ static: {{ hostnames: ['{addr}'] }} }}\n"
    );
    let v: serde_yaml::Value = serde_yaml::from_str(&yaml).expect("yaml");
    let settings = parse_settings(&v, "exporters.loadbalancing").expect("valid");
    let id = ComponentId::parse("loadbalancing").expect("id");
    let lb = LoadBalancer::new(&id, Arc::new(settings), metrics);
    lb.set_backends(&[addr.to_owned()]);
    lb
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_waits_for_a_backend_that_comes_up_and_counts_what_a_dead_one_kept() {
    // A backend that is down when shutdown starts and comes up half a second later.
    let addr = format!("127.0.0.1:{}", port_nobody_listens_on());
    let lb = router(&addr, Metrics::new());
    let ids: Vec<Vec<u8>> = (0..200).map(trace_id).collect();
    for b in batches(&ids, 1) {
        lb.export(b).await.expect("routed");
    }
    let stopping = tokio::spawn(lb.shutdown());
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!stopping.is_finished(), "waits for the backend's queue");
    let (tx, mut rx) = mpsc::unbounded_channel();
    backend(&addr, 0, tx).await;
    tokio::time::timeout(Duration::from_secs(20), stopping)
        .await
        .expect("shutdown resolves once delivered")
        .expect("joined");
    let mut spans = HashSet::new();
    while let Ok(Some((_, _, sid))) =
        tokio::time::timeout(Duration::from_millis(500), rx.recv()).await
    {
        spans.insert(sid);
    }
    assert_eq!(spans.len(), 3 * ids.len(), "every routed span delivered");

    // A backend that never comes up: the grace period runs out, the retries stop, and what the
    // backend's queue held is counted as lost at shutdown.
    let dead = format!("127.0.0.1:{}", port_nobody_listens_on());
    let metrics = Metrics::new();
    let lb = router(&dead, metrics.clone());
    for b in batches(&ids, 2) {
        lb.export(b).await.expect("routed");
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), lb.shutdown())
            .await
            .is_err(),
        "nothing to deliver to"
    );
    let exporter = format!("loadbalancing/{dead}");
    let lost = || {
        metrics.counter(
            Metric::ExporterSendFailedSpans,
            &[("exporter", &exporter), ("reason", "shutdown")],
        )
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while lost() < 3 * ids.len() as u64 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(lost(), 3 * ids.len() as u64);
}

fn port_nobody_listens_on() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}
