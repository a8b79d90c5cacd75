//! tail_sampling's state: undecided traces in arrival order under a byte and a count bound,
//! and the bounded caches of decided trace ids that late spans follow.

use std::collections::{HashMap, HashSet, VecDeque};

use prost::Message;
use tokio::time::Instant;

use crate::memory::MemoryTicket;
use crate::model::{ResourceSpans, ScopeSpans, Span};

/// A trace id as a map key (ids of another length are zero-padded or cut: they are invalid
/// OTLP, and only need to stay together).
pub type TraceKey = [u8; 16];

pub fn key_of(id: &[u8]) -> TraceKey {
    let mut k = [0u8; 16];
    let n = id.len().min(16);
    k[..n].copy_from_slice(&id[..n]);
    k
}

/// Bookkeeping per trace (its map entry, with the map's spare room, and its place in the
/// arrival order), counted with the span bytes so `max_bytes` bounds what the process holds.
const TRACE_OVERHEAD: usize =
    2 * (size_of::<TraceKey>() + size_of::<Pending>()) + 2 * size_of::<TraceKey>() + 64;

/// What a held piece costs: its encoded bytes (each span's own copy), the structs around them
/// and an allocator header per allocation.
fn held_size(frag: &ResourceSpans) -> usize {
    const ALLOC: usize = 16;
    let mut n = frag.encoded_len()
        + size_of::<ResourceSpans>()
        + size_of::<MemoryTicket>()
        + frag.scope_spans.len() * (size_of::<ScopeSpans>() + ALLOC);
    for s in &frag.scope_spans {
        n += s.spans.len() * (size_of::<Span>() + ALLOC);
    }
    n + 2 * ALLOC
}

/// One undecided trace: the pieces of requests that carried its spans.
pub struct Pending {
    pub fragments: Vec<ResourceSpans>,
    pub spans: usize,
    pub bytes: usize,
    pub first_seen: Instant,
    _memory: Vec<MemoryTicket>,
}

/// Why an undecided trace left before its `decision_wait`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overflow {
    MaxBytes,
    NumTraces,
}

impl Overflow {
    pub fn label(self) -> &'static str {
        match self {
            Overflow::MaxBytes => "max_bytes",
            Overflow::NumTraces => "num_traces",
        }
    }
}

/// A FIFO set of decided trace ids.
struct Cache {
    set: HashSet<TraceKey>,
    order: VecDeque<TraceKey>,
    cap: usize,
}

impl Cache {
    fn new(cap: usize) -> Cache {
        Cache {
            set: HashSet::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    fn insert(&mut self, k: TraceKey) {
        if self.cap == 0 || !self.set.insert(k) {
            return;
        }
        self.order.push_back(k);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }
}

/// What became of an arriving trace piece.
pub enum Arrival {
    /// Its trace was decided sampled: send it on now.
    Sampled(ResourceSpans),
    /// Its trace was decided not sampled.
    NotSampled(usize),
    /// Buffered.
    Held,
}

pub struct Buffer {
    traces: HashMap<TraceKey, Pending>,
    /// Trace ids by first arrival; every entry is in `traces` (traces leave only from the front).
    order: VecDeque<TraceKey>,
    bytes: usize,
    max_bytes: usize,
    max_traces: usize,
    sampled: Cache,
    not_sampled: Cache,
}

impl Buffer {
    pub fn new(
        max_bytes: usize,
        max_traces: usize,
        sampled_cache: usize,
        not_sampled_cache: usize,
    ) -> Buffer {
        Buffer {
            traces: HashMap::new(),
            order: VecDeque::new(),
            bytes: 0,
            max_bytes,
            max_traces,
            sampled: Cache::new(sampled_cache),
            not_sampled: Cache::new(not_sampled_cache),
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.traces.len()
    }

    /// Buffers a trace piece, or says what its cached decision is. `memory` accounts for the
    /// bytes in the pipeline's memory tracker while they are held.
    pub fn arrive(
        &mut self,
        key: TraceKey,
        frag: ResourceSpans,
        now: Instant,
        memory: impl FnOnce(usize) -> MemoryTicket,
    ) -> Arrival {
        if self.sampled.set.contains(&key) {
            return Arrival::Sampled(frag);
        }
        if self.not_sampled.set.contains(&key) {
            return Arrival::NotSampled(crate::model::span_count(std::slice::from_ref(&frag)));
        }
        let mut frag = frag;
        // Own copies of the span bytes and tight vectors: what is held is what is counted.
        frag.scope_spans.shrink_to_fit();
        for scope in &mut frag.scope_spans {
            scope.spans.shrink_to_fit();
            for s in &mut scope.spans {
                s.detach();
            }
        }
        let spans = crate::model::span_count(std::slice::from_ref(&frag));
        let mut bytes = held_size(&frag);
        let t = self.traces.entry(key).or_insert_with(|| {
            bytes += TRACE_OVERHEAD;
            self.order.push_back(key);
            Pending {
                fragments: Vec::with_capacity(1),
                spans: 0,
                bytes: 0,
                first_seen: now,
                _memory: Vec::with_capacity(1),
            }
        });
        t.fragments.push(frag);
        t.spans += spans;
        t.bytes += bytes;
        t._memory.push(memory(bytes));
        self.bytes += bytes;
        Arrival::Held
    }

    /// The oldest undecided trace while a bound is exceeded, with the bound.
    pub fn pop_overflow(&mut self) -> Option<(TraceKey, Pending, Overflow)> {
        let why = if self.bytes > self.max_bytes {
            Overflow::MaxBytes
        } else if self.traces.len() > self.max_traces {
            Overflow::NumTraces
        } else {
            return None;
        };
        self.pop_front().map(|(k, p)| (k, p, why))
    }

    /// The oldest undecided trace if it arrived at or before `cutoff`.
    pub fn pop_due(&mut self, cutoff: Instant) -> Option<(TraceKey, Pending)> {
        let first = self.order.front()?;
        if self
            .traces
            .get(first)
            .is_some_and(|t| t.first_seen > cutoff)
        {
            return None;
        }
        self.pop_front()
    }

    /// The oldest undecided trace, whatever its age (shutdown, tests).
    pub fn pop_front(&mut self) -> Option<(TraceKey, Pending)> {
        while let Some(k) = self.order.pop_front() {
            if let Some(t) = self.traces.remove(&k) {
                self.bytes -= t.bytes;
                return Some((k, t));
            }
        }
        None
    }

    /// Remembers a decision for the spans still to come.
    pub fn decided(&mut self, key: TraceKey, sampled: bool) {
        if sampled {
            self.sampled.insert(key);
        } else {
            self.not_sampled.insert(key);
        }
    }
}

/// Splits resource spans into one piece per trace id, each keeping its resource and scopes.
pub fn split_by_trace(rs: Vec<ResourceSpans>) -> Vec<(TraceKey, ResourceSpans)> {
    crate::model::group_by(rs, |_, span| key_of(span.trace_id()))
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::trace::v1 as pb;

    use super::*;
    use crate::memory::MemoryTracker;

    fn span(id: u8) -> Span {
        Span::from_proto(&pb::Span {
            trace_id: vec![id; 16],
            span_id: vec![1; 8],
            name: "x".repeat(100),
            ..pb::Span::default()
        })
    }

    fn rs(scopes: Vec<Vec<u8>>) -> ResourceSpans {
        ResourceSpans {
            resource: None,
            scope_spans: scopes
                .into_iter()
                .map(|ids| ScopeSpans {
                    spans: ids.into_iter().map(span).collect(),
                    ..ScopeSpans::default()
                })
                .collect(),
            schema_url: String::new(),
        }
    }

    #[test]
    fn splits_a_request_per_trace_keeping_scopes() {
        let parts = split_by_trace(vec![rs(vec![vec![1, 2, 1], vec![1]]), rs(vec![vec![2]])]);
        let shape: Vec<(u8, Vec<usize>)> = parts
            .iter()
            .map(|(k, r)| (k[0], r.scope_spans.iter().map(|s| s.spans.len()).collect()))
            .collect();
        assert_eq!(
            shape,
            [(1, vec![2, 1]), (2, vec![1]), (2, vec![1])],
            "per resource, per trace; scopes kept apart"
        );
    }

    #[test]
    fn byte_bound_lets_the_oldest_go_first_and_cache_answers_late_spans() {
        let memory = MemoryTracker::new();
        let one = held_size(&rs(vec![vec![1]])) + TRACE_OVERHEAD;
        let mut b = Buffer::new(one * 2, 100, 10, 10);
        let now = Instant::now();
        for id in 1..=3u8 {
            assert!(matches!(
                b.arrive(key_of(&[id; 16]), rs(vec![vec![id]]), now, |n| memory
                    .take(n)),
                Arrival::Held
            ));
        }
        assert_eq!(memory.in_use(), 3 * one);
        let (k, _, why) = b.pop_overflow().expect("over max_bytes");
        assert_eq!((k[0], why), (1, Overflow::MaxBytes));
        assert!(b.pop_overflow().is_none(), "two fit");
        assert_eq!(memory.in_use(), 2 * one, "the ticket left with the trace");
        b.decided(k, true);
        assert!(matches!(
            b.arrive(k, rs(vec![vec![1]]), now, |n| memory.take(n)),
            Arrival::Sampled(_)
        ));
        b.decided(key_of(&[9; 16]), false);
        assert!(matches!(
            b.arrive(key_of(&[9; 16]), rs(vec![vec![9, 9]]), now, |n| memory
                .take(n)),
            Arrival::NotSampled(2)
        ));
        assert_eq!(b.len(), 2);
    }
}
