//! FlowTracker: a bounded ring of recent event flows (who published what to whom), by trace id.
//!
//! It feeds the bridge dashboard; memory is capped by the ring size, oldest records go first.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::envelope::{decode_hex, to_hex};

/// One published event and where it went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowRecord {
    pub event_id: String,
    pub topic: String,
    /// `loom.sender` of the event, when the publisher set it.
    pub sender: Option<String>,
    /// Names of the subscriptions the event was queued for.
    pub receivers: Vec<String>,
    pub published_at: SystemTime,
    /// Trace id (32 hex) of the publish span, when the event carried trace context.
    pub trace_id: Option<String>,
}

/// What the ring holds. Recording happens on every publish, reading only when someone looks,
/// so the ring keeps trace ids as bytes and receiver names shared with their subscriptions,
/// and [`FlowRecord`]'s strings are made on the way out.
#[derive(Debug)]
pub(crate) struct FlowEntry {
    pub(crate) event_id: String,
    pub(crate) topic: String,
    pub(crate) sender: Option<String>,
    pub(crate) receivers: Vec<Arc<str>>,
    pub(crate) published_at: SystemTime,
    pub(crate) trace_id: Option<[u8; 16]>,
}

impl FlowEntry {
    fn to_record(&self) -> FlowRecord {
        FlowRecord {
            event_id: self.event_id.clone(),
            topic: self.topic.clone(),
            sender: self.sender.clone(),
            receivers: self.receivers.iter().map(|r| r.to_string()).collect(),
            published_at: self.published_at,
            trace_id: self.trace_id.map(|t| to_hex(&t)),
        }
    }
}

/// 32 hex digits (either case) as trace id bytes.
fn parse_trace_id(hex: &str) -> Option<[u8; 16]> {
    decode_hex::<16>(hex.to_ascii_lowercase().as_bytes())
}

/// Thread-safe bounded ring of flow records.
#[derive(Debug)]
pub struct FlowTracker {
    capacity: usize,
    ring: Mutex<VecDeque<FlowEntry>>,
}

impl FlowTracker {
    /// A tracker keeping the newest `capacity` records (0 disables recording).
    pub fn new(capacity: usize) -> FlowTracker {
        FlowTracker {
            capacity,
            ring: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
        }
    }

    pub fn enabled(&self) -> bool {
        self.capacity > 0
    }

    /// Records a flow given as a [`FlowRecord`] (a trace id that is not 32 hex digits is kept
    /// as absent).
    pub fn record(&self, rec: FlowRecord) {
        self.push(FlowEntry {
            trace_id: rec.trace_id.as_deref().and_then(parse_trace_id),
            event_id: rec.event_id,
            topic: rec.topic,
            sender: rec.sender,
            receivers: rec.receivers.into_iter().map(Arc::from).collect(),
            published_at: rec.published_at,
        });
    }

    pub(crate) fn push(&self, entry: FlowEntry) {
        if self.capacity == 0 {
            return;
        }
        let mut ring = self.ring.lock();
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        ring.push_back(entry);
    }

    /// Every retained record of one trace (32 hex digits, either case), oldest first.
    pub fn by_trace(&self, trace_id: &str) -> Vec<FlowRecord> {
        let Some(want) = parse_trace_id(trace_id) else {
            return Vec::new();
        };
        self.ring
            .lock()
            .iter()
            .filter(|r| r.trace_id == Some(want))
            .map(FlowEntry::to_record)
            .collect()
    }

    /// The newest `n` records, oldest first.
    pub fn recent(&self, n: usize) -> Vec<FlowRecord> {
        let ring = self.ring.lock();
        ring.iter()
            .skip(ring.len().saturating_sub(n))
            .map(FlowEntry::to_record)
            .collect()
    }

    pub fn len(&self) -> usize {
        self.ring.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: usize, trace: Option<&str>) -> FlowRecord {
        FlowRecord {
            event_id: format!("e{i}"),
            topic: "t".into(),
            sender: None,
            receivers: vec![],
            published_at: SystemTime::UNIX_EPOCH,
            trace_id: trace.map(str::to_owned),
        }
    }

    #[test]
    fn ring_is_bounded_and_queryable_by_trace() {
        let (a, b) = ("aa".repeat(16), "0b".repeat(16));
        let f = FlowTracker::new(3);
        for i in 0..5 {
            f.record(rec(i, Some(if i % 2 == 0 { &a } else { &b })));
        }
        assert_eq!(f.len(), 3);
        let ids: Vec<_> = f
            .by_trace(&a.to_ascii_uppercase())
            .into_iter()
            .map(|r| r.event_id)
            .collect();
        assert_eq!(ids, vec!["e2", "e4"]);
        let rec = &f.by_trace(&b)[0];
        assert_eq!(
            rec.trace_id.as_deref(),
            Some(b.as_str()),
            "ids come back as lower hex"
        );
        assert!(f.by_trace("not-a-trace-id").is_empty());
        let recent: Vec<_> = f.recent(2).into_iter().map(|r| r.event_id).collect();
        assert_eq!(recent, vec!["e3", "e4"]);
    }

    #[test]
    fn zero_capacity_records_nothing() {
        let f = FlowTracker::new(0);
        f.record(rec(1, None));
        assert!(f.is_empty());
    }
}
