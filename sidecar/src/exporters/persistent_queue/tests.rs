//! The persistent queue end to end: restart with damage, full-queue policies, record scan.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::Path;

use prost::Message as _;

use super::*;
use crate::exporters::{BoxFuture, ExportError, ExportOk, Exporter, QueueConfig, RetryConfig};
use crate::metrics::Metric;
use crate::model::Batch;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use std::sync::atomic::{AtomicBool, Ordering};

fn payload(name: &str, spans: usize) -> Bytes {
    let req = ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: (0..spans)
                    .map(|i| Span {
                        name: format!("{name}-{i}"),
                        ..Span::default()
                    })
                    .collect(),
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        }],
    };
    Bytes::from(req.encode_to_vec())
}

#[test]
fn scan_stops_at_a_torn_or_damaged_record() {
    let mut good = Vec::new();
    encode_record(&payload("a", 3), &mut good);
    encode_record(&payload("b", 2), &mut good);
    let whole = scan(&good);
    assert_eq!((whole.records, whole.spans, whole.damage), (2, 5, None));
    assert_eq!(whole.end, good.len() as u64);

    let torn = scan(&good[..good.len() - 3]);
    assert_eq!((torn.records, torn.damage), (1, Some("truncated")));

    let mut flipped = good.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 0xff;
    let bad = scan(&flipped);
    assert_eq!((bad.records, bad.damage), (1, Some("checksum")));

    let mut garbage = good.clone();
    garbage.extend_from_slice(b"\x13\x37garbage");
    let g = scan(&garbage);
    assert_eq!(
        (g.records, g.end, g.damage),
        (2, good.len() as u64, Some("truncated"))
    );
    println!("scan: whole={whole:?} torn={torn:?} checksum={bad:?} garbage={g:?}");
}

struct Recorder {
    up: AtomicBool,
    names: parking_lot::Mutex<Vec<String>>,
}

impl Exporter for Recorder {
    fn export(&self, batch: Arc<Batch>) -> BoxFuture<'static, Result<ExportOk, ExportError>> {
        let up = self.up.load(Ordering::SeqCst);
        if up {
            let mut names = self.names.lock();
            for rs in &batch.resource_spans {
                let rs = rs.to_proto().expect("the queue hands out valid spans");
                for ss in &rs.scope_spans {
                    names.extend(ss.spans.iter().map(|s| s.name.clone()));
                }
            }
        }
        Box::pin(async move {
            if up {
                Ok(ExportOk::default())
            } else {
                Err(ExportError::retryable("grpc_unavailable", "down", None))
            }
        })
    }
}

impl Recorder {
    /// An exporter that is up (records what it gets) or down (fails retryably).
    fn new(up: bool) -> Arc<Recorder> {
        Arc::new(Recorder {
            up: AtomicBool::new(up),
            names: Default::default(),
        })
    }
}

/// A queue on `dir` for exporter `otlp/x`, with its own metrics and stop signal.
struct Opened {
    q: Arc<PersistentQueue>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

fn open(dir: &Path, rec: Arc<Recorder>, max_bytes: u64, when_full: WhenFull) -> Opened {
    let (metrics, stop) = (Metrics::new(), CancellationToken::new());
    let (q, tasks) = start(
        "otlp/x".into(),
        built(rec),
        &storage(dir, max_bytes),
        when_full,
        metrics.clone(),
        stop.clone(),
    )
    .unwrap();
    Opened {
        q,
        tasks,
        metrics,
        stop,
    }
}

fn built(rec: Arc<Recorder>) -> Built {
    Built {
        exporter: rec,
        queue: QueueConfig::default(),
        retry: RetryConfig {
            initial_interval: Duration::from_millis(10),
            max_interval: Duration::from_millis(20),
            ..RetryConfig::default()
        },
    }
}

fn storage(dir: &Path, max_bytes: u64) -> StorageConfig {
    StorageConfig {
        directory: dir.to_owned(),
        max_bytes,
        fsync: FsyncPolicy::Batch,
        fsync_interval: Duration::from_secs(1),
    }
}

fn wal_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("otlp_x"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsent_records_survive_a_restart_and_damage_is_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let Opened { q, tasks, stop, .. } =
        open(dir.path(), Recorder::new(false), 1 << 20, WhenFull::Refuse);
    for i in 0..20 {
        q.append(payload(&format!("r{i}"), 5), 5).await.unwrap();
    }
    assert_eq!(q.pending(), 20);
    q.close();
    stop.cancel();
    for t in tasks {
        t.await.unwrap();
    }
    q.join_writer();
    // A torn write at the tail: garbage after the last record.
    let files = wal_files(dir.path());
    let last = files.last().unwrap().clone();
    let mut f = OpenOptions::new().append(true).open(&last).unwrap();
    f.write_all(&[0xde, 0xad, 0xbe, 0xef, 1, 2, 3]).unwrap();
    drop(f);

    let up = Recorder::new(true);
    let Opened {
        q: q2,
        tasks: tasks2,
        metrics: metrics2,
        ..
    } = open(dir.path(), up.clone(), 1 << 20, WhenFull::Refuse);
    let deadline = Instant::now() + Duration::from_secs(10);
    while up.names.lock().len() < 100 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    q2.close();
    for t in tasks2 {
        t.await.unwrap();
    }
    q2.join_writer();
    let names = up.names.lock().clone();
    let corrupt = metrics2.counter(
        Metric::ExporterQueueCorruptRecords,
        &[("exporter", "otlp/x"), ("reason", "truncated")],
    );
    let replayed = metrics2.counter(
        Metric::ExporterQueueReplayedRecords,
        &[("exporter", "otlp/x")],
    );
    let left = wal_files(dir.path());
    println!(
        "restart: replayed records={replayed} spans delivered={} corrupt tails={corrupt} files left={}",
        names.len(),
        left.len()
    );
    assert_eq!(names.len(), 100);
    assert_eq!(names[0], "r0-0", "log order");
    assert_eq!(corrupt, 1);
    assert_eq!(replayed, 20);
    assert!(left.is_empty(), "exported segments deleted: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_or_drops_its_oldest_data() {
    for when_full in [WhenFull::Refuse, WhenFull::DropOldest] {
        let dir = tempfile::tempdir().unwrap();
        let Opened {
            q,
            tasks,
            metrics,
            stop,
        } = open(dir.path(), Recorder::new(false), MIN_MAX_BYTES, when_full);
        let one = payload("p", 50);
        let (mut ok, mut full) = (0, 0);
        for _ in 0..200 {
            match q.append(one.clone(), 50).await {
                Ok(()) => ok += 1,
                Err(AppendError::Full) => full += 1,
                Err(e) => panic!("{e}"),
            }
        }
        let dropped = metrics.counter(
            Metric::ExporterSendFailedSpans,
            &[("exporter", "otlp/x"), ("reason", "queue_full")],
        );
        let bytes = q.bytes();
        println!(
            "{when_full:?}: record {} B, cap {MIN_MAX_BYTES} B: accepted={ok} refused={full} dropped spans={dropped} queue bytes={bytes}",
            one.len() + 8
        );
        assert!(bytes <= MIN_MAX_BYTES);
        match when_full {
            WhenFull::Refuse => {
                assert!(full > 0 && ok > 0);
                assert_eq!(dropped, 0);
            }
            WhenFull::DropOldest => {
                assert_eq!(full, 0);
                assert!(dropped > 0);
            }
        }
        q.close();
        stop.cancel();
        for t in tasks {
            t.await.unwrap();
        }
        q.join_writer();
    }
}
