//! Persistent queue: an exporter's sending queue as a write-ahead log on disk, one folder per
//! exporter. Its YAML key is `sending_queue.storage` (the OpenTelemetry Collector's name for it);
//! in code, docs and logs it is the persistent queue (`persistent_queue`).
//!
//! The log is a series of segment files `{seq:020}.wal`. Each record is
//! `[payload length: u32 LE][CRC32 of the payload: u32 LE][payload]`, the payload being one
//! encoded `ExportTraceServiceRequest` as a receiver accepted it (after the inline processors).
//!
//! - **Write path.** Receivers hand records to one writer thread through a bounded channel and
//!   answer the client only once the writer has appended them (and, with `fsync: batch`, synced
//!   them). The writer takes every record waiting in the channel at once and syncs once per such
//!   group, so concurrent requests share the cost of one fsync (group commit).
//! - **Read path.** Consumers read records in log order, merge them into export requests and
//!   send them with retry. A segment file is deleted once it is sealed (the writer moved on),
//!   every record in it has been read, and none is still being exported. A record whose export
//!   ended (delivered, or dropped for a counted reason) is done; one interrupted by the end of the
//!   shutdown grace is not, so its segment stays for the next start.
//! - **Replay.** On start every segment is scanned. The first record whose header runs past the
//!   end of the file (a torn write) or whose checksum does not match ends that segment: it and
//!   anything after it in that file are skipped, counted, logged, and the file is truncated to its
//!   valid prefix so the same damage is not reported again. Writing always starts in a new
//!   segment, so new data never follows damaged bytes.
//! - **Byte cap.** `max_bytes` bounds the sum of segment sizes. When the next record would pass
//!   it, `when_full: refuse` turns the request away (receivers answer RESOURCE_EXHAUSTED / 429
//!   with a retry hint) and `drop_oldest` deletes the oldest sealed segments (their unsent spans
//!   counted as `queue_full`).
//!
//! Delivery is at-least-once: after a crash, records of a segment that were already exported
//! are sent again, so a backend may see duplicates. To bound that, the active segment is sealed
//! (and so deleted) as soon as it holds [`IDLE_ROLL_BYTES`] and everything in it was exported:
//! what a crash resends is at most that much of the newest segment, plus the exported part of
//! sealed segments whose exports were still running.
//!
//! Its settings (`StorageConfig`, `FsyncPolicy`, `WhenFull`) live in `component::sending_queue`,
//! next to the rest of `sending_queue`, because `Built` carries them.
//!
//! Files by job: [`record`] (on-disk format and scan),
//! `writer` (writer thread, group commit, segment roll), `reader` (consumers' reads, completion),
//! `replay` (start-up scan), `cleanup` (segment deletion, `drop_oldest`).

mod cleanup;
mod reader;
pub mod record;
mod replay;
#[cfg(test)]
mod tests;
mod writer;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

pub use crate::component::sending_queue::{FsyncPolicy, StorageConfig, WhenFull, MIN_MAX_BYTES};
pub use record::{encode_record, scan, Scan, RECORD_HEADER};

use reader::Reader;
use record::segment_path;
use writer::{create_segment, writer_loop, WriterMsg};

use super::Built;
use crate::metrics::{Metric, Metrics};

/// Largest export request a consumer builds by merging records, in spans and payload bytes.
/// Records are merged because one client request is often a handful of spans.
pub const MAX_EXPORT_SPANS: usize = 8192;
pub const MAX_EXPORT_BYTES: usize = 4 * 1024 * 1024;
/// Requests waiting for the writer; beyond it receivers wait (the channel is bounded).
const WRITER_CHANNEL: usize = 1024;
/// A fully exported active segment at least this large is sealed (and so deleted) without
/// waiting to fill up: it bounds what a crash makes us send again.
pub const IDLE_ROLL_BYTES: u64 = 64 * 1024;
/// Retry hint given to clients while the queue is full.
pub const FULL_RETRY_AFTER: Duration = Duration::from_secs(2);

/// Why an append failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    #[error("the exporter's persistent queue is full")]
    Full,
    #[error("the exporter's persistent queue cannot write: {0}")]
    Io(String),
    #[error("the exporter's persistent queue is closed")]
    Closed,
}

/// Problems opening the queue's folder at start.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot use queue folder {dir}: {source}")]
    Folder {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read queue segment {file}: {source}")]
    Segment {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot start the queue writer: {0}")]
    Writer(std::io::Error),
}

#[derive(Debug, Default)]
struct SegMeta {
    /// Valid bytes in the file (everything the writer published, or the scan accepted).
    end: u64,
    records: u64,
    /// Records handed to consumers (the reader passed them).
    taken: u64,
    spans: u64,
    spans_taken: u64,
    /// Records handed out whose export has not ended yet.
    inflight: u64,
    /// The writer moved on: no more records will be added.
    sealed: bool,
}

#[derive(Debug, Default)]
struct State {
    segs: BTreeMap<u64, SegMeta>,
    /// The segment the writer appends to.
    active: u64,
    /// Sum of `end` over every segment.
    bytes: u64,
    /// Records appended (or replayed) whose export has not ended.
    pending: u64,
    /// The writer has ended (the queue was closed): nothing more will arrive.
    writer_done: bool,
}

struct Shared {
    id: String,
    dir: PathBuf,
    cfg: StorageConfig,
    when_full: WhenFull,
    segment_size: u64,
    state: Mutex<State>,
    reader: Mutex<Reader>,
    notify: Notify,
    metrics: Arc<Metrics>,
    last_drop_warning: Mutex<Option<Instant>>,
    /// To ask the writer for a roll. Weak, so the writer still sees its channel close.
    writer: Mutex<Option<mpsc::WeakSender<WriterMsg>>>,
}

/// One exporter's persistent queue (the receivers' side: append, close).
pub struct PersistentQueue {
    pub id: String,
    shared: Arc<Shared>,
    tx: Mutex<Option<mpsc::Sender<WriterMsg>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl PersistentQueue {
    /// Appends one encoded `ExportTraceServiceRequest` holding `spans` spans; resolves once it
    /// is in the log (and synced, with `fsync: batch`).
    pub async fn append(&self, payload: Bytes, spans: u64) -> Result<(), AppendError> {
        let tx = self.tx.lock().clone().ok_or(AppendError::Closed)?;
        let (ack, done) = oneshot::channel();
        tx.send(WriterMsg::Append {
            payload,
            spans,
            ack,
        })
        .await
        .map_err(|_| AppendError::Closed)?;
        done.await.unwrap_or(Err(AppendError::Closed))
    }

    /// No more appends: the writer syncs, seals its segment and ends; consumers drain.
    pub fn close(&self) {
        self.tx.lock().take();
    }

    /// Waits (blocking) for the writer thread to finish its last sync.
    pub fn join_writer(&self) {
        if let Some(h) = self.writer.lock().take() {
            let _ = h.join();
        }
    }

    /// Records waiting or being exported.
    pub fn pending(&self) -> u64 {
        self.shared.state.lock().pending
    }

    /// Bytes of segment files.
    pub fn bytes(&self) -> u64 {
        self.shared.state.lock().bytes
    }
}

/// Opens (and replays) the exporter's log, starts its writer thread and its consumers.
pub fn start(
    id: String,
    built: Built,
    storage: &StorageConfig,
    when_full: WhenFull,
    metrics: Arc<Metrics>,
    hard_stop: CancellationToken,
) -> Result<(Arc<PersistentQueue>, Vec<tokio::task::JoinHandle<()>>), OpenError> {
    let dir = storage.directory.join(id.replace(['/', '\\'], "_"));
    std::fs::create_dir_all(&dir).map_err(|source| OpenError::Folder {
        dir: dir.clone(),
        source,
    })?;
    let mut state = replay::replay(&id, &dir, &metrics)?;
    let active = state.segs.keys().next_back().map_or(1, |s| s + 1);
    let file =
        create_segment(&dir, active, storage.fsync == FsyncPolicy::Batch).map_err(|source| {
            OpenError::Segment {
                file: segment_path(&dir, active),
                source,
            }
        })?;
    state.active = active;
    state.segs.insert(active, SegMeta::default());
    let first = state.segs.keys().next().copied().unwrap_or(active);
    let shared = Arc::new(Shared {
        id: id.clone(),
        dir,
        cfg: storage.clone(),
        when_full,
        segment_size: storage.segment_size(),
        state: Mutex::new(state),
        reader: Mutex::new(Reader {
            seq: first,
            off: 0,
            file: None,
        }),
        notify: Notify::new(),
        metrics: metrics.clone(),
        last_drop_warning: Mutex::new(None),
        writer: Mutex::new(None),
    });
    shared.publish_gauges();

    let (tx, rx) = mpsc::channel(WRITER_CHANNEL);
    *shared.writer.lock() = Some(tx.downgrade());
    let sh = shared.clone();
    let writer = std::thread::Builder::new()
        .name(format!("wal-{id}"))
        .spawn(move || writer_loop(sh, rx, file, active))
        .map_err(OpenError::Writer)?;
    let mut tasks = Vec::new();
    if storage.fsync == FsyncPolicy::Interval {
        // The writer blocks on its channel, so the clock reaches it as a message. The ticker
        // holds a weak sender: closing the queue must still close the channel.
        let weak = tx.downgrade();
        let period = storage.fsync_interval;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            loop {
                tick.tick().await;
                let Some(tx) = weak.upgrade() else { return };
                // Full channel: the writer is busy and syncs after its next group anyway.
                if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(WriterMsg::Sync) {
                    return;
                }
            }
        }));
    }
    let queue = Arc::new(PersistentQueue {
        id: id.clone(),
        shared: shared.clone(),
        tx: Mutex::new(Some(tx)),
        writer: Mutex::new(Some(writer)),
    });
    for _ in 0..built.queue.num_consumers {
        let shared = shared.clone();
        let exporter = built.exporter.clone();
        let retry = built.retry.clone();
        let metrics = metrics.clone();
        let hard_stop = hard_stop.clone();
        tasks.push(tokio::spawn(reader::consume(
            shared, exporter, retry, metrics, hard_stop,
        )));
    }
    Ok((queue, tasks))
}

impl Shared {
    pub(super) fn publish_gauges(&self) {
        let (pending, bytes) = {
            let st = self.state.lock();
            (st.pending, st.bytes)
        };
        self.metrics.gauge(
            Metric::ExporterQueueSize,
            &[("exporter", &self.id)],
            pending as i64,
        );
        self.metrics.gauge(
            Metric::ExporterQueueBytes,
            &[("exporter", &self.id)],
            bytes as i64,
        );
    }
}
