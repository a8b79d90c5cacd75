//! FlowTracker: a bounded ring of recent event flows (who published what to whom), by trace id.
//!
//! It feeds the bridge dashboard; memory is capped by the ring size, oldest records go first.
//! A live tap ([`FlowTracker::watch`]) hands each new flow, with a bounded payload preview, to
//! whoever listens; with no listener it costs one atomic load per publish.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::envelope::{decode_hex, to_hex};
use crate::proto::Event;

/// Longest payload preview a [`LiveFlow`] carries, in bytes of the payload read.
pub const PAYLOAD_PREVIEW_BYTES: usize = 256;
/// How many live flows a slow watcher may fall behind before it skips (and is told how many).
pub const LIVE_BUFFER: usize = 1024;

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

/// One published event as a live watcher sees it: its flow record, its type and the start of
/// its payload (lossy UTF-8, at most [`PAYLOAD_PREVIEW_BYTES`] read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveFlow {
    pub record: FlowRecord,
    /// `Event.type` as the publisher set it.
    pub event_type: String,
    pub payload_preview: String,
    /// Full payload size in bytes (the preview may be shorter).
    pub payload_bytes: usize,
}

/// The start of `payload` as text: at most `PAYLOAD_PREVIEW_BYTES` read, a character cut at the
/// end dropped rather than shown as a replacement mark.
fn preview(payload: &[u8]) -> String {
    let cut = payload.len().min(PAYLOAD_PREVIEW_BYTES);
    let head = &payload[..cut];
    match std::str::from_utf8(head) {
        Ok(s) => s.to_owned(),
        Err(e) if e.error_len().is_none() => {
            String::from_utf8_lossy(&head[..e.valid_up_to()]).into_owned()
        }
        Err(_) => String::from_utf8_lossy(head).into_owned(),
    }
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
    live: tokio::sync::broadcast::Sender<Arc<LiveFlow>>,
}

impl FlowTracker {
    /// A tracker keeping the newest `capacity` records (0 disables recording).
    pub fn new(capacity: usize) -> FlowTracker {
        FlowTracker {
            capacity,
            ring: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
            live: tokio::sync::broadcast::channel(LIVE_BUFFER).0,
        }
    }

    /// A live feed of every flow recorded from now on. Bounded: a receiver more than
    /// [`LIVE_BUFFER`] flows behind gets `RecvError::Lagged(n)` and skips them.
    pub fn watch(&self) -> tokio::sync::broadcast::Receiver<Arc<LiveFlow>> {
        self.live.subscribe()
    }

    /// Number of live receivers currently open.
    pub fn watchers(&self) -> usize {
        self.live.receiver_count()
    }

    /// Hands `entry` (with `event`'s type and payload preview) to the live watchers, if any.
    pub(crate) fn tap(&self, entry: &FlowEntry, event: &Event) {
        if self.live.receiver_count() == 0 {
            return;
        }
        let _ = self.live.send(Arc::new(LiveFlow {
            record: entry.to_record(),
            event_type: event.r#type.clone(),
            payload_preview: preview(&event.payload),
            payload_bytes: event.payload.len(),
        }));
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
    fn live_tap_reaches_watchers_with_a_bounded_preview() {
        let f = FlowTracker::new(4);
        let entry = |id: &str| FlowEntry {
            event_id: id.into(),
            topic: "t".into(),
            sender: Some("s".into()),
            receivers: vec![Arc::from("r")],
            published_at: SystemTime::UNIX_EPOCH,
            trace_id: Some([0xab; 16]),
        };
        let mut payload = "é".repeat(PAYLOAD_PREVIEW_BYTES).into_bytes();
        payload.push(b'!');
        let event = Event {
            r#type: "kind".into(),
            payload: payload.clone(),
            ..Default::default()
        };
        // Nobody listens: nothing is built or kept.
        f.tap(&entry("e0"), &event);
        let mut rx = f.watch();
        assert_eq!(f.watchers(), 1);
        f.tap(&entry("e1"), &event);
        let got = rx.try_recv().expect("a live flow");
        assert_eq!(got.record.event_id, "e1");
        assert_eq!(
            got.record.trace_id.as_deref(),
            Some("ab".repeat(16).as_str())
        );
        assert_eq!(got.event_type, "kind");
        assert_eq!(got.payload_bytes, payload.len());
        // 256 bytes of two-byte characters: 128 whole ones, no replacement mark.
        assert_eq!(got.payload_preview, "é".repeat(PAYLOAD_PREVIEW_BYTES / 2));
        assert!(
            rx.try_recv().is_err(),
            "e0 was tapped before anyone watched"
        );
    }

    #[test]
    fn preview_keeps_short_text_and_marks_invalid_bytes() {
        assert_eq!(preview(b"{\"a\":1}"), "{\"a\":1}");
        assert_eq!(preview(&[0xff, b'x']), "\u{fffd}x");
    }

    #[test]
    fn zero_capacity_records_nothing() {
        let f = FlowTracker::new(0);
        f.record(rec(1, None));
        assert!(f.is_empty());
    }
}
