//! Deleting segments: exported ones, and the oldest ones when the queue is full (`drop_oldest`).

use std::time::{Duration, Instant};

use super::record::segment_path;
use super::{Shared, State};
use crate::metrics::Metric;

impl Shared {
    /// Deletes a segment that is sealed, fully read and has nothing in flight.
    pub(super) fn maybe_delete(&self, st: &mut State, seq: u64) {
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
    pub(super) fn drop_oldest(&self, need: u64) -> bool {
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
            self.metrics.count(
                Metric::ExporterSendFailedSpans,
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
}
