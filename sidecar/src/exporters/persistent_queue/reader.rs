//! The consumers' side: reads records in log order, merges them into export requests, and
//! marks them done when their export ends.

use std::fs::File;
use std::os::unix::fs::FileExt as _;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;
use tokio_util::sync::CancellationToken;

use super::super::{send_with_retry, Exporter, Outcome, RetryConfig};
use super::record::{segment_path, RECORD_HEADER};
use super::writer::WriterMsg;
use super::{Shared, State, IDLE_ROLL_BYTES, MAX_EXPORT_BYTES, MAX_EXPORT_SPANS};
use crate::metrics::{Metric, Metrics};
use crate::model::{span_count, Batch, TraceRequest};

/// Where the consumers read next: one cursor shared by all of them, so records go out in order.
pub(super) struct Reader {
    pub(super) seq: u64,
    pub(super) off: u64,
    pub(super) file: Option<(u64, File)>,
}

/// What a consumer took: one export request and the segments its records came from.
pub(super) struct Taken {
    pub(super) batch: Batch,
    pub(super) from: Vec<u64>,
}

impl Shared {
    /// Reads the next records (merged into one export request), or None when nothing is ready.
    pub(super) fn take(&self) -> Option<Taken> {
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
                    self.metrics.count(
                        Metric::ExporterQueueCorruptRecords,
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

    pub(super) fn read_record(
        &self,
        rd: &mut Reader,
        end: u64,
    ) -> Result<(TraceRequest, u64), &'static str> {
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
    pub(super) fn complete(&self, from: &[u64]) {
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
    pub(super) fn done(st: &State, seq: u64) -> bool {
        st.segs
            .get(&seq)
            .is_some_and(|m| m.records > 0 && m.taken >= m.records && m.inflight == 0)
    }

    pub(super) fn active_done(&self, seq: u64) -> bool {
        Self::done(&self.state.lock(), seq)
    }

    /// The queue is closed and everything in it has been handed out.
    pub(super) fn drained(&self) -> bool {
        let st = self.state.lock();
        st.writer_done && st.segs.values().all(|m| m.taken >= m.records)
    }
}

/// One consumer: takes merged records, sends them with retry, marks them done; ends when the
/// queue is closed and drained, or at the hard stop (what is left stays in the log).
pub(super) async fn consume(
    shared: Arc<Shared>,
    exporter: Arc<dyn Exporter>,
    retry: RetryConfig,
    metrics: Arc<Metrics>,
    hard_stop: CancellationToken,
) {
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
}
