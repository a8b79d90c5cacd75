//! Persistent sending queue: a write-ahead log on disk, one folder per exporter.
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

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use prost::Message as _;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio_util::sync::CancellationToken;

use super::{send_with_retry, Built, Outcome};
pub use crate::component::sending_queue::{FsyncPolicy, StorageConfig, WhenFull, MIN_MAX_BYTES};
use crate::metrics::Metrics;
use crate::model::{span_count, Batch, TraceRequest};

/// Bytes before each payload: length and CRC32, both little-endian u32.
pub const RECORD_HEADER: u64 = 8;
/// Largest export request a consumer builds by merging records, in spans and payload bytes.
/// Records are merged because one client request is often a handful of spans.
pub const MAX_EXPORT_SPANS: usize = 8192;
pub const MAX_EXPORT_BYTES: usize = 4 * 1024 * 1024;
/// Records the writer takes from its channel in one group (one write, one fsync).
const MAX_GROUP: usize = 512;
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

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:020}.wal"))
}

/// Encodes one record: header + payload.
pub fn encode_record(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// What a scan of one segment found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Scan {
    /// Bytes of valid records from the start of the file.
    pub end: u64,
    pub records: u64,
    pub spans: u64,
    /// Why the scan stopped before the end of the file: `truncated`, `checksum` or `decode`.
    pub damage: Option<&'static str>,
}

/// Validates a segment's records in order; stops at the first damaged one.
pub fn scan(data: &[u8]) -> Scan {
    let mut s = Scan::default();
    let mut off = 0usize;
    while off < data.len() {
        let rest = &data[off..];
        if rest.len() < RECORD_HEADER as usize {
            s.damage = Some("truncated");
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        let Some(payload) = rest.get(RECORD_HEADER as usize..RECORD_HEADER as usize + len) else {
            s.damage = Some("truncated");
            break;
        };
        if crc32fast::hash(payload) != crc {
            s.damage = Some("checksum");
            break;
        }
        match TraceRequest::decode(payload) {
            Ok(req) => s.spans += span_count(&req.resource_spans) as u64,
            Err(_) => {
                s.damage = Some("decode");
                break;
            }
        }
        off += RECORD_HEADER as usize + len;
        s.records += 1;
        s.end = off as u64;
    }
    s
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

struct Reader {
    seq: u64,
    off: u64,
    file: Option<(u64, File)>,
}

enum WriterMsg {
    Append {
        payload: Bytes,
        spans: u64,
        ack: oneshot::Sender<Result<(), AppendError>>,
    },
    Sync,
    /// Consumers exported everything in the active segment: seal it so it can be deleted.
    RollIfDone,
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
pub struct DiskQueue {
    pub id: String,
    shared: Arc<Shared>,
    tx: Mutex<Option<mpsc::Sender<WriterMsg>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What a consumer took: one export request and the segments its records came from.
struct Taken {
    batch: Batch,
    from: Vec<u64>,
}

impl DiskQueue {
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
) -> Result<(Arc<DiskQueue>, Vec<tokio::task::JoinHandle<()>>), OpenError> {
    let dir = storage.directory.join(id.replace(['/', '\\'], "_"));
    std::fs::create_dir_all(&dir).map_err(|source| OpenError::Folder {
        dir: dir.clone(),
        source,
    })?;
    let mut state = replay(&id, &dir, &metrics)?;
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
    let queue = Arc::new(DiskQueue {
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
        tasks.push(tokio::spawn(async move {
            loop {
                let notified = shared.notify.notified();
                tokio::pin!(notified);
                // Registered before looking, so an append between the look and the wait wakes us.
                notified.as_mut().enable();
                let sh = shared.clone();
                let taken = tokio::task::spawn_blocking(move || sh.take())
                    .await
                    .ok()
                    .flatten();
                match taken {
                    Some(t) => {
                        let outcome = send_with_retry(
                            &shared.id,
                            exporter.as_ref(),
                            Arc::new(t.batch),
                            &retry,
                            &metrics,
                            &hard_stop,
                        )
                        .await;
                        match outcome {
                            Outcome::Delivered | Outcome::Dropped => shared.complete(&t.from),
                            // Left in the log: the next start sends it again.
                            Outcome::Interrupted => return,
                        }
                    }
                    None => {
                        if shared.drained() {
                            return;
                        }
                        tokio::select! {
                            _ = &mut notified => {}
                            _ = hard_stop.cancelled() => return,
                            // A safety net only: appends and closing both notify.
                            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        }
                    }
                }
            }
        }));
    }
    Ok((queue, tasks))
}

fn create_segment(dir: &Path, seq: u64, sync_dir: bool) -> std::io::Result<File> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(segment_path(dir, seq))?;
    if sync_dir {
        // The new name must survive a crash too, or a synced record could vanish with it.
        File::open(dir)?.sync_all()?;
    }
    Ok(f)
}

/// Scans every segment in `dir`, truncating damaged tails (counted), removing empty files.
fn replay(id: &str, dir: &Path, metrics: &Metrics) -> Result<State, OpenError> {
    let mut state = State::default();
    let entries = std::fs::read_dir(dir).map_err(|source| OpenError::Folder {
        dir: dir.to_owned(),
        source,
    })?;
    let mut seqs: Vec<u64> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            name.strip_suffix(".wal")?.parse::<u64>().ok()
        })
        .collect();
    seqs.sort_unstable();
    let (mut records, mut spans) = (0u64, 0u64);
    for seq in seqs {
        let path = segment_path(dir, seq);
        let data = std::fs::read(&path).map_err(|source| OpenError::Segment {
            file: path.clone(),
            source,
        })?;
        let s = scan(&data);
        if let Some(reason) = s.damage {
            metrics.add(
                "loom_sidecar_exporter_queue_corrupt_records_total",
                &[("exporter", id), ("reason", reason)],
                1,
            );
            tracing::warn!(
                exporter = %id,
                file = %path.display(),
                reason,
                valid_bytes = s.end,
                skipped_bytes = data.len() as u64 - s.end,
                "damaged record in the persistent queue: skipped it and the rest of its segment"
            );
            // Cut the damage off, so it is neither read nor reported again.
            let cut = OpenOptions::new()
                .write(true)
                .open(&path)
                .and_then(|f| f.set_len(s.end).and_then(|_| f.sync_all()));
            if let Err(e) = cut {
                tracing::warn!(exporter = %id, file = %path.display(), "cannot truncate the damaged segment: {e}");
            }
        }
        if s.records == 0 {
            let _ = std::fs::remove_file(&path);
            continue;
        }
        records += s.records;
        spans += s.spans;
        state.bytes += s.end;
        state.pending += s.records;
        state.segs.insert(
            seq,
            SegMeta {
                end: s.end,
                records: s.records,
                spans: s.spans,
                sealed: true,
                ..SegMeta::default()
            },
        );
    }
    if records > 0 {
        metrics.add(
            "loom_sidecar_exporter_queue_replayed_records_total",
            &[("exporter", id)],
            records,
        );
        tracing::info!(exporter = %id, records, spans, bytes = state.bytes, "replaying the persistent queue");
    }
    Ok(state)
}

/// The writer thread: appends groups of records, syncs per the policy, answers the receivers.
fn writer_loop(shared: Arc<Shared>, mut rx: mpsc::Receiver<WriterMsg>, file: File, seq: u64) {
    let mut w = Writer {
        shared,
        file,
        seq,
        end: 0,
        buf: Vec::new(),
        staged: Vec::new(),
        dirty: false,
    };
    while let Some(first) = rx.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(m) => group.push(m),
                Err(_) => break,
            }
        }
        let mut sync = false;
        for m in group {
            match m {
                WriterMsg::Sync => sync = true,
                WriterMsg::RollIfDone => {
                    w.flush();
                    if w.end >= IDLE_ROLL_BYTES && w.shared.active_done(w.seq) {
                        w.roll();
                    }
                }
                WriterMsg::Append {
                    payload,
                    spans,
                    ack,
                } => w.stage(payload, spans, ack),
            }
        }
        w.flush();
        if sync && w.dirty {
            if let Err(e) = w.file.sync_data() {
                tracing::error!(exporter = %w.shared.id, "fsync of the persistent queue failed: {e}");
            }
            w.dirty = false;
        }
    }
    // Closed: last sync, then seal so a fully exported segment can go.
    w.flush();
    let _ = w.file.sync_all();
    let mut st = w.shared.state.lock();
    if let Some(m) = st.segs.get_mut(&w.seq) {
        m.sealed = true;
    }
    st.writer_done = true;
    w.shared.maybe_delete(&mut st, w.seq);
    drop(st);
    w.shared.publish_gauges();
    w.shared.notify.notify_waiters();
}

struct Writer {
    shared: Arc<Shared>,
    file: File,
    seq: u64,
    /// Bytes of the active segment already published.
    end: u64,
    buf: Vec<u8>,
    staged: Vec<(u64, oneshot::Sender<Result<(), AppendError>>)>,
    /// Written since the last sync (`fsync: interval`).
    dirty: bool,
}

impl Writer {
    fn stage(&mut self, payload: Bytes, spans: u64, ack: oneshot::Sender<Result<(), AppendError>>) {
        if payload.len() > u32::MAX as usize {
            let _ = ack.send(Err(AppendError::Io("record larger than 4 GiB".into())));
            return;
        }
        let need = RECORD_HEADER + payload.len() as u64;
        let max = self.shared.cfg.max_bytes;
        let used = self.shared.state.lock().bytes + self.buf.len() as u64;
        if used + need > max {
            let room = match self.shared.when_full {
                WhenFull::Refuse => false,
                WhenFull::DropOldest => {
                    // Publish what is staged so the byte count is exact, then free sealed
                    // segments; the active one is sealed first when it is all that is left.
                    self.flush();
                    if self.shared.drop_oldest(need) {
                        true
                    } else if self.end > 0 {
                        self.roll();
                        self.shared.drop_oldest(need)
                    } else {
                        false
                    }
                }
            };
            if !room {
                let _ = ack.send(Err(AppendError::Full));
                return;
            }
        }
        let staged_end = self.end + self.buf.len() as u64;
        if staged_end > 0 && staged_end + need > self.shared.segment_size {
            self.flush();
            self.roll();
        }
        encode_record(&payload, &mut self.buf);
        self.staged.push((spans, ack));
    }

    /// Writes what is staged, syncs per the policy, publishes it to the readers, answers.
    fn flush(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let mut result = self.file.write_all(&self.buf);
        if result.is_ok() && self.shared.cfg.fsync == FsyncPolicy::Batch {
            result = self.file.sync_data();
        }
        let staged = std::mem::take(&mut self.staged);
        let written = self.buf.len() as u64;
        self.buf.clear();
        if let Err(e) = result {
            tracing::error!(exporter = %self.shared.id, "persistent queue write failed: {e}");
            // Cut back to the last good record, so a partial write is not mistaken for data.
            let _ = self.file.set_len(self.end);
            for (_, ack) in staged {
                let _ = ack.send(Err(AppendError::Io(e.to_string())));
            }
            return;
        }
        self.dirty = true;
        self.end += written;
        {
            let mut st = self.shared.state.lock();
            let n = staged.len() as u64;
            let spans: u64 = staged.iter().map(|(s, _)| s).sum();
            st.bytes += written;
            st.pending += n;
            if let Some(m) = st.segs.get_mut(&self.seq) {
                m.end = self.end;
                m.records += n;
                m.spans += spans;
            }
        }
        self.shared.publish_gauges();
        self.shared.notify.notify_waiters();
        for (_, ack) in staged {
            let _ = ack.send(Ok(()));
        }
    }

    /// Seals the active segment and starts the next one.
    fn roll(&mut self) {
        let next = self.seq + 1;
        let file = match create_segment(
            &self.shared.dir,
            next,
            self.shared.cfg.fsync == FsyncPolicy::Batch,
        ) {
            Ok(f) => f,
            Err(e) => {
                // Keep appending to the current segment; it only grows past its target size.
                tracing::error!(exporter = %self.shared.id, "cannot start a new queue segment: {e}");
                return;
            }
        };
        if self.dirty {
            let _ = self.file.sync_data();
        }
        let old = self.seq;
        self.file = file;
        self.seq = next;
        self.end = 0;
        self.dirty = false;
        let mut st = self.shared.state.lock();
        if let Some(m) = st.segs.get_mut(&old) {
            m.sealed = true;
        }
        st.segs.insert(next, SegMeta::default());
        st.active = next;
        self.shared.maybe_delete(&mut st, old);
    }
}

impl Shared {
    /// Reads the next records (merged into one export request), or None when nothing is ready.
    fn take(&self) -> Option<Taken> {
        let mut rd = self.reader.lock();
        let mut resource_spans = Vec::new();
        let mut from = Vec::new();
        let (mut spans, mut bytes) = (0usize, 0usize);
        loop {
            if spans >= MAX_EXPORT_SPANS || bytes >= MAX_EXPORT_BYTES {
                break;
            }
            let (end, sealed) = {
                let st = self.state.lock();
                match st.segs.get(&rd.seq) {
                    Some(m) => (m.end, m.sealed),
                    None => {
                        // Dropped (drop_oldest) or done: go on with the next segment, if any.
                        match st.segs.range(rd.seq + 1..).next() {
                            Some((&next, _)) => {
                                rd.seq = next;
                                rd.off = 0;
                                continue;
                            }
                            None => break,
                        }
                    }
                }
            };
            if rd.off >= end {
                if !sealed {
                    break;
                }
                let done = rd.seq;
                let mut st = self.state.lock();
                let next = st.segs.range(done + 1..).next().map(|(s, _)| *s);
                self.maybe_delete(&mut st, done);
                match next {
                    Some(n) => {
                        rd.seq = n;
                        rd.off = 0;
                        continue;
                    }
                    None => break,
                }
            }
            match self.read_record(&mut rd, end) {
                Ok((req, len)) => {
                    let n = span_count(&req.resource_spans);
                    rd.off += RECORD_HEADER + len;
                    let mut st = self.state.lock();
                    if let Some(m) = st.segs.get_mut(&rd.seq) {
                        m.taken += 1;
                        m.spans_taken += n as u64;
                        m.inflight += 1;
                    }
                    drop(st);
                    spans += n;
                    bytes += len as usize;
                    resource_spans.extend(req.resource_spans);
                    from.push(rd.seq);
                }
                Err(reason) => {
                    // Damage after start (the disk changed under us): skip the rest of the
                    // segment, as a replay would.
                    self.metrics.add(
                        "loom_sidecar_exporter_queue_corrupt_records_total",
                        &[("exporter", &self.id), ("reason", reason)],
                        1,
                    );
                    tracing::warn!(exporter = %self.id, segment = rd.seq, offset = rd.off, reason, "damaged record in the persistent queue: skipping the rest of its segment");
                    rd.off = end;
                    let mut st = self.state.lock();
                    if let Some(m) = st.segs.get_mut(&rd.seq) {
                        let lost = m.records - m.taken;
                        m.taken = m.records;
                        st.pending = st.pending.saturating_sub(lost);
                    }
                }
            }
        }
        drop(rd);
        self.publish_gauges();
        if from.is_empty() {
            return None;
        }
        Some(Taken {
            batch: Batch::new(resource_spans, Arc::new(Vec::new())),
            from,
        })
    }

    fn read_record(&self, rd: &mut Reader, end: u64) -> Result<(TraceRequest, u64), &'static str> {
        if rd.file.as_ref().is_none_or(|(s, _)| *s != rd.seq) {
            let f = File::open(segment_path(&self.dir, rd.seq)).map_err(|_| "unreadable")?;
            rd.file = Some((rd.seq, f));
        }
        let Some((_, f)) = rd.file.as_ref() else {
            return Err("unreadable");
        };
        let mut head = [0u8; RECORD_HEADER as usize];
        f.read_exact_at(&mut head, rd.off)
            .map_err(|_| "truncated")?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as u64;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if rd.off + RECORD_HEADER + len > end {
            return Err("truncated");
        }
        let mut payload = vec![0u8; len as usize];
        f.read_exact_at(&mut payload, rd.off + RECORD_HEADER)
            .map_err(|_| "truncated")?;
        if crc32fast::hash(&payload) != crc {
            return Err("checksum");
        }
        // Spans become slices of this buffer, not copies.
        let req = TraceRequest::decode(Bytes::from(payload)).map_err(|_| "decode")?;
        Ok((req, len))
    }

    /// The exports of these records ended (delivered or dropped, both counted elsewhere).
    fn complete(&self, from: &[u64]) {
        let mut st = self.state.lock();
        for seq in from {
            st.pending = st.pending.saturating_sub(1);
            if let Some(m) = st.segs.get_mut(seq) {
                m.inflight = m.inflight.saturating_sub(1);
            }
            self.maybe_delete(&mut st, *seq);
        }
        let active = st.active;
        let roll = st
            .segs
            .get(&active)
            .is_some_and(|m| m.end >= IDLE_ROLL_BYTES)
            && Self::done(&st, active);
        drop(st);
        self.publish_gauges();
        if roll {
            // Best effort: a full channel means the writer is busy and rolls on its own soon.
            if let Some(tx) = self.writer.lock().as_ref().and_then(|w| w.upgrade()) {
                let _ = tx.try_send(WriterMsg::RollIfDone);
            }
        }
    }

    /// Every record of segment `seq` was read and none is being exported.
    fn done(st: &State, seq: u64) -> bool {
        st.segs
            .get(&seq)
            .is_some_and(|m| m.records > 0 && m.taken >= m.records && m.inflight == 0)
    }

    fn active_done(&self, seq: u64) -> bool {
        Self::done(&self.state.lock(), seq)
    }

    /// Deletes a segment that is sealed, fully read and has nothing in flight.
    fn maybe_delete(&self, st: &mut State, seq: u64) {
        // Only the writer seals, and it never writes to a sealed segment again.
        let gone = st
            .segs
            .get(&seq)
            .is_some_and(|m| m.sealed && m.inflight == 0 && m.taken >= m.records);
        if !gone {
            return;
        }
        if let Some(m) = st.segs.remove(&seq) {
            st.bytes = st.bytes.saturating_sub(m.end);
            let path = segment_path(&self.dir, seq);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(exporter = %self.id, file = %path.display(), "cannot delete an exported queue segment: {e}");
            }
        }
    }

    /// Deletes sealed segments, oldest first, until `need` more bytes fit. False when they
    /// do not fit even then.
    fn drop_oldest(&self, need: u64) -> bool {
        let max = self.cfg.max_bytes;
        let mut st = self.state.lock();
        let (mut spans, mut records) = (0u64, 0u64);
        while st.bytes + need > max {
            let active = st.active;
            let Some(oldest) = st.segs.keys().copied().find(|s| *s != active) else {
                break;
            };
            let Some(m) = st.segs.remove(&oldest) else {
                break;
            };
            st.bytes = st.bytes.saturating_sub(m.end);
            let unsent = m.records - m.taken;
            st.pending = st.pending.saturating_sub(unsent);
            records += unsent;
            spans += m.spans - m.spans_taken;
            let _ = std::fs::remove_file(segment_path(&self.dir, oldest));
        }
        let fits = st.bytes + need <= max;
        drop(st);
        if spans > 0 {
            self.metrics.add(
                "loom_sidecar_exporter_send_failed_spans_total",
                &[("exporter", &self.id), ("reason", "queue_full")],
                spans,
            );
            let mut last = self.last_drop_warning.lock();
            if last.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                *last = Some(Instant::now());
                tracing::warn!(exporter = %self.id, records, spans, "persistent queue full: dropped its oldest data (when_full: drop_oldest)");
            }
        }
        self.publish_gauges();
        fits
    }

    /// The queue is closed and everything in it has been handed out.
    fn drained(&self) -> bool {
        let st = self.state.lock();
        st.writer_done && st.segs.values().all(|m| m.taken >= m.records)
    }

    fn publish_gauges(&self) {
        let (pending, bytes) = {
            let st = self.state.lock();
            (st.pending, st.bytes)
        };
        self.metrics.set(
            "loom_sidecar_exporter_queue_size",
            &[("exporter", &self.id)],
            pending as i64,
        );
        self.metrics.set(
            "loom_sidecar_exporter_queue_bytes",
            &[("exporter", &self.id)],
            bytes as i64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exporters::{BoxFuture, ExportError, ExportOk, Exporter, QueueConfig, RetryConfig};
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
        let metrics = Metrics::new();
        let down = Arc::new(Recorder {
            up: AtomicBool::new(false),
            names: Default::default(),
        });
        let stop = CancellationToken::new();
        let (q, tasks) = start(
            "otlp/x".into(),
            built(down),
            &storage(dir.path(), 1 << 20),
            WhenFull::Refuse,
            metrics.clone(),
            stop.clone(),
        )
        .unwrap();
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

        let up = Arc::new(Recorder {
            up: AtomicBool::new(true),
            names: Default::default(),
        });
        let metrics2 = Metrics::new();
        let stop2 = CancellationToken::new();
        let (q2, tasks2) = start(
            "otlp/x".into(),
            built(up.clone()),
            &storage(dir.path(), 1 << 20),
            WhenFull::Refuse,
            metrics2.clone(),
            stop2.clone(),
        )
        .unwrap();
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
        let corrupt = metrics2.get(
            "loom_sidecar_exporter_queue_corrupt_records_total",
            &[("exporter", "otlp/x"), ("reason", "truncated")],
        );
        let replayed = metrics2.get(
            "loom_sidecar_exporter_queue_replayed_records_total",
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
            let metrics = Metrics::new();
            let down = Arc::new(Recorder {
                up: AtomicBool::new(false),
                names: Default::default(),
            });
            let stop = CancellationToken::new();
            let (q, tasks) = start(
                "otlp/x".into(),
                built(down),
                &storage(dir.path(), MIN_MAX_BYTES),
                when_full,
                metrics.clone(),
                stop.clone(),
            )
            .unwrap();
            let one = payload("p", 50);
            let (mut ok, mut full) = (0, 0);
            for _ in 0..200 {
                match q.append(one.clone(), 50).await {
                    Ok(()) => ok += 1,
                    Err(AppendError::Full) => full += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            let dropped = metrics.get(
                "loom_sidecar_exporter_send_failed_spans_total",
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
}
