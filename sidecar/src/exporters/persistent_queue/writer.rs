//! The writer thread: appends groups of records, syncs per the fsync policy, rolls segments.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::record::{encode_record, segment_path, RECORD_HEADER};
use super::{AppendError, FsyncPolicy, SegMeta, Shared, WhenFull, IDLE_ROLL_BYTES};

/// Records the writer takes from its channel in one group (one write, one fsync).
const MAX_GROUP: usize = 512;

pub(super) enum WriterMsg {
    Append {
        payload: Bytes,
        spans: u64,
        ack: oneshot::Sender<Result<(), AppendError>>,
    },
    Sync,
    /// Consumers exported everything in the active segment: seal it so it can be deleted.
    RollIfDone,
}

pub(super) fn create_segment(dir: &Path, seq: u64, sync_dir: bool) -> std::io::Result<File> {
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

/// The writer thread: appends groups of records, syncs per the policy, answers the receivers.
pub(super) fn writer_loop(
    shared: Arc<Shared>,
    mut rx: mpsc::Receiver<WriterMsg>,
    file: File,
    seq: u64,
) {
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
