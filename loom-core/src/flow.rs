//! FlowTracker: a bounded ring of recent event flows (who published what to whom), by trace id.
//!
//! It feeds the bridge dashboard; memory is capped by the ring size, oldest records go first.

use std::collections::VecDeque;
use std::time::SystemTime;

use parking_lot::Mutex;

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

/// Thread-safe bounded ring of [`FlowRecord`]s.
#[derive(Debug)]
pub struct FlowTracker {
    capacity: usize,
    ring: Mutex<VecDeque<FlowRecord>>,
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

    pub fn record(&self, rec: FlowRecord) {
        if self.capacity == 0 {
            return;
        }
        let mut ring = self.ring.lock();
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        ring.push_back(rec);
    }

    /// Every retained record of one trace, oldest first.
    pub fn by_trace(&self, trace_id: &str) -> Vec<FlowRecord> {
        let trace_id = trace_id.to_ascii_lowercase();
        self.ring
            .lock()
            .iter()
            .filter(|r| r.trace_id.as_deref() == Some(trace_id.as_str()))
            .cloned()
            .collect()
    }

    /// The newest `n` records, oldest first.
    pub fn recent(&self, n: usize) -> Vec<FlowRecord> {
        let ring = self.ring.lock();
        ring.iter()
            .skip(ring.len().saturating_sub(n))
            .cloned()
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
        let f = FlowTracker::new(3);
        for i in 0..5 {
            f.record(rec(i, Some(if i % 2 == 0 { "aa" } else { "bb" })));
        }
        assert_eq!(f.len(), 3);
        let ids: Vec<_> = f.by_trace("AA").into_iter().map(|r| r.event_id).collect();
        assert_eq!(ids, vec!["e2", "e4"]);
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
