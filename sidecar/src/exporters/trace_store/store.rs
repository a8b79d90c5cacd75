//! The bounded in-memory trace store: span bytes per trace, indexed by service, operation and
//! time; whole traces leave oldest first (least recently received) by bytes, count and age.
//!
//! A trace is kept as the OTLP `ResourceSpans` pieces it arrived in: per batch and resource, the
//! spans of one trace, re-encoded with their resource and scope into bytes the store owns (never
//! slices of a request buffer, which would keep the whole request alive and make the byte
//! count a lie). Every piece also adds one small index entry per span. `bytes` counts the piece
//! bytes, the index entries and the names they point to (names shared between spans are counted
//! once per span: the bound errs on the safe side) and a fixed overhead per trace.
//!
//! Time is passed in (`now`), so tests drive the clock.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::encoding::{decode_key, decode_varint, WireType};
use prost::Message;

use crate::model::{ResourceSpans, ScopeSpans};

pub type TraceId = [u8; 16];

/// Index names longer than this are cut (the stored span keeps its full name).
const MAX_NAME: usize = 1024;
/// What one trace costs beyond its pieces and index: the map and order entries, the `Trace`.
const TRACE_OVERHEAD: usize = std::mem::size_of::<Trace>() + 2 * 64;

/// The store's bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_bytes: usize,
    pub max_traces: usize,
    pub ttl: Duration,
}

/// Why a trace left the store (the `reason` label of the evictions counter).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    MaxBytes,
    MaxTraces,
    Ttl,
}

impl Reason {
    pub const ALL: [Reason; 3] = [Reason::MaxBytes, Reason::MaxTraces, Reason::Ttl];

    pub fn label(self) -> &'static str {
        match self {
            Reason::MaxBytes => "max_bytes",
            Reason::MaxTraces => "max_traces",
            Reason::Ttl => "ttl",
        }
    }
}

/// What one insert or expiry did, for the metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// Traces evicted, indexed like [`Reason::ALL`].
    pub evicted: [u64; 3],
    /// Spans not stored because their trace alone would pass `max_bytes`.
    pub too_large_spans: u64,
    /// Spans not stored because their trace id is not 16 bytes.
    pub bad_id_spans: u64,
}

impl Outcome {
    fn evict(&mut self, r: Reason) {
        self.evicted[r as usize] += 1;
    }
}

/// OTLP `SpanKind` as Jaeger's api_v3 names it (`unspecified` reads as `internal`, as Jaeger's
/// `getOperations` does).
pub fn kind_name(kind: u64) -> &'static str {
    match kind {
        2 => "server",
        3 => "client",
        4 => "producer",
        5 => "consumer",
        _ => "internal",
    }
}

/// One span in the index.
#[derive(Debug, Clone)]
struct SpanEntry {
    service: Arc<str>,
    name: Arc<str>,
    kind: &'static str,
    start: u64,
    end: u64,
}

impl SpanEntry {
    fn cost(&self) -> usize {
        std::mem::size_of::<SpanEntry>() + self.service.len() + self.name.len()
    }
}

/// The spans of one trace from one batch and resource, ready to insert.
pub struct Piece {
    trace_id: TraceId,
    bytes: Bytes,
    spans: Vec<SpanEntry>,
    cost: usize,
}

/// A batch cut into pieces, done before taking the store's lock.
#[derive(Default)]
pub struct Prepared {
    pieces: Vec<Piece>,
    bad_id_spans: u64,
}

/// `service.name` of a resource; OpenTelemetry's `unknown_service` when absent.
fn service_name(attrs: &[KeyValue]) -> &str {
    attrs
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) if !s.is_empty() => Some(s.as_str()),
            _ => None,
        })
        .unwrap_or("unknown_service")
}

/// One protobuf field.
enum Val<'a> {
    Int(u64),
    Bytes(&'a [u8]),
}

/// Calls `f` for every field of a message; None when the bytes are not protobuf.
fn walk<'a>(mut b: &'a [u8], mut f: impl FnMut(u32, Val<'a>)) -> Option<()> {
    while !b.is_empty() {
        let (tag, wt) = decode_key(&mut b).ok()?;
        let v = match wt {
            WireType::Varint => Val::Int(decode_varint(&mut b).ok()?),
            WireType::SixtyFourBit => {
                let (x, rest) = b.split_first_chunk::<8>()?;
                b = rest;
                Val::Int(u64::from_le_bytes(*x))
            }
            WireType::ThirtyTwoBit => {
                let (x, rest) = b.split_first_chunk::<4>()?;
                b = rest;
                Val::Int(u32::from_le_bytes(*x) as u64)
            }
            WireType::LengthDelimited => {
                let n = usize::try_from(decode_varint(&mut b).ok()?).ok()?;
                if n > b.len() {
                    return None;
                }
                let (x, rest) = b.split_at(n);
                b = rest;
                Val::Bytes(x)
            }
            _ => return None,
        };
        f(tag, v);
    }
    Some(())
}

/// Index entries of every span in an encoded `ResourceSpans`.
fn index_piece(
    piece: &[u8],
    service: &Arc<str>,
    names: &mut HashMap<Vec<u8>, Arc<str>>,
) -> Vec<SpanEntry> {
    let mut out = Vec::new();
    let _ = walk(piece, |tag, v| {
        // ResourceSpans.scope_spans = 2, ScopeSpans.spans = 2.
        let (2, Val::Bytes(scope)) = (tag, v) else {
            return;
        };
        let _ = walk(scope, |tag, v| {
            let (2, Val::Bytes(span)) = (tag, v) else {
                return;
            };
            let mut e = SpanEntry {
                service: service.clone(),
                name: Arc::from(""),
                kind: "internal",
                start: 0,
                end: 0,
            };
            let mut name: &[u8] = &[];
            let _ = walk(span, |tag, v| match (tag, v) {
                (5, Val::Bytes(n)) => name = n,
                (6, Val::Int(k)) => e.kind = kind_name(k),
                (7, Val::Int(t)) => e.start = t,
                (8, Val::Int(t)) => e.end = t,
                _ => {}
            });
            let name = &name[..name.len().min(MAX_NAME)];
            e.name = names
                .entry(name.to_vec())
                .or_insert_with(|| Arc::from(String::from_utf8_lossy(name).as_ref()))
                .clone();
            out.push(e);
        });
    });
    out
}

/// Cuts a batch into per-trace pieces that own their bytes, and indexes them.
pub fn prepare(batch: &[ResourceSpans]) -> Prepared {
    let mut p = Prepared::default();
    let mut names = HashMap::new();
    for r in batch {
        let attrs = r.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
        let service: Arc<str> = Arc::from(service_name(attrs));
        // Per trace (in order of first appearance, so the batch's last traces are the newest
        // in the store), its spans by scope.
        let mut slot: HashMap<TraceId, usize> = HashMap::new();
        let mut groups: Vec<(TraceId, Vec<(usize, ScopeSpans)>)> = Vec::new();
        for (si, s) in r.scope_spans.iter().enumerate() {
            for span in &s.spans {
                let Ok(tid) = TraceId::try_from(span.trace_id()) else {
                    p.bad_id_spans += 1;
                    continue;
                };
                let i = *slot.entry(tid).or_insert_with(|| {
                    groups.push((tid, Vec::new()));
                    groups.len() - 1
                });
                let g = &mut groups[i].1;
                match g.last_mut() {
                    Some((i, ss)) if *i == si => ss.spans.push(span.clone()),
                    _ => g.push((
                        si,
                        ScopeSpans {
                            scope: s.scope.clone(),
                            spans: vec![span.clone()],
                            schema_url: s.schema_url.clone(),
                        },
                    )),
                }
            }
        }
        for (trace_id, scopes) in groups {
            let piece = ResourceSpans {
                resource: r.resource.clone(),
                scope_spans: scopes.into_iter().map(|(_, s)| s).collect(),
                schema_url: r.schema_url.clone(),
            };
            let bytes = Bytes::from(piece.encode_to_vec());
            let spans = index_piece(&bytes, &service, &mut names);
            let cost = bytes.len()
                + spans.iter().map(SpanEntry::cost).sum::<usize>()
                + std::mem::size_of::<Bytes>();
            p.pieces.push(Piece {
                trace_id,
                bytes,
                spans,
                cost,
            });
        }
    }
    p
}

struct Trace {
    /// Position in `order`: the last time spans arrived.
    seq: u64,
    updated: Instant,
    pieces: Vec<Bytes>,
    spans: Vec<SpanEntry>,
    bytes: usize,
}

/// A `find` request (Jaeger's `TraceQueryParameters`). Times are Unix nanoseconds.
#[derive(Debug, Clone, Default)]
pub struct Query {
    pub service: Option<String>,
    pub operation: Option<String>,
    pub start_min: u64,
    pub start_max: u64,
    pub duration_min: Option<u64>,
    pub duration_max: Option<u64>,
    /// Every pair must be on one span of the trace (span or resource attributes).
    pub attributes: Vec<(String, String)>,
    pub limit: usize,
}

impl Query {
    fn matches(&self, s: &SpanEntry) -> bool {
        let dur = s.end.saturating_sub(s.start);
        self.service.as_deref().is_none_or(|x| *s.service == *x)
            && self.operation.as_deref().is_none_or(|x| *s.name == *x)
            && s.start >= self.start_min
            && s.start <= self.start_max
            && self.duration_min.is_none_or(|d| dur >= d)
            && self.duration_max.is_none_or(|d| dur <= d)
    }
}

/// (operation, span kind) → spans stored.
type Operations = BTreeMap<(Arc<str>, &'static str), u64>;

/// The store. Not synchronized: the exporter wraps it in a mutex.
pub struct Store {
    limits: Limits,
    traces: HashMap<TraceId, Trace>,
    /// Traces by last arrival, oldest first.
    order: BTreeMap<u64, TraceId>,
    next_seq: u64,
    bytes: usize,
    /// service → (operation, kind) → spans stored.
    ops: BTreeMap<Arc<str>, Operations>,
}

impl Store {
    pub fn new(limits: Limits) -> Store {
        Store {
            limits,
            traces: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            bytes: 0,
            ops: BTreeMap::new(),
        }
    }

    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn len(&self) -> usize {
        self.traces.len()
    }

    pub fn is_empty(&self) -> bool {
        self.traces.is_empty()
    }

    /// Stores a prepared batch, then evicts whole traces, oldest first, until within bounds.
    pub fn insert(&mut self, p: Prepared, now: Instant) -> Outcome {
        let mut out = Outcome {
            bad_id_spans: p.bad_id_spans,
            ..Outcome::default()
        };
        self.expire_into(now, &mut out);
        for piece in p.pieces {
            let existing = self.traces.get(&piece.trace_id).map_or(0, |t| t.bytes);
            let added = piece.cost + if existing == 0 { TRACE_OVERHEAD } else { 0 };
            if existing + added > self.limits.max_bytes {
                // One trace larger than the whole store: keep what it has, refuse the rest.
                out.too_large_spans += piece.spans.len() as u64;
                continue;
            }
            let seq = self.next_seq;
            self.next_seq += 1;
            for s in &piece.spans {
                *self
                    .ops
                    .entry(s.service.clone())
                    .or_default()
                    .entry((s.name.clone(), s.kind))
                    .or_insert(0) += 1;
            }
            match self.traces.get_mut(&piece.trace_id) {
                Some(t) => {
                    self.order.remove(&t.seq);
                    t.seq = seq;
                    t.updated = now;
                    t.pieces.push(piece.bytes);
                    t.spans.extend(piece.spans);
                    t.bytes += added;
                }
                None => {
                    self.traces.insert(
                        piece.trace_id,
                        Trace {
                            seq,
                            updated: now,
                            pieces: vec![piece.bytes],
                            spans: piece.spans,
                            bytes: added,
                        },
                    );
                }
            }
            self.order.insert(seq, piece.trace_id);
            self.bytes += added;
            while self.bytes > self.limits.max_bytes || self.traces.len() > self.limits.max_traces {
                let reason = if self.traces.len() > self.limits.max_traces {
                    Reason::MaxTraces
                } else {
                    Reason::MaxBytes
                };
                let Some((_, oldest)) = self.order.first_key_value() else {
                    break;
                };
                let oldest = *oldest;
                self.remove(&oldest);
                out.evict(reason);
            }
        }
        out
    }

    /// Drops the traces that received nothing for `ttl`.
    pub fn expire(&mut self, now: Instant) -> Outcome {
        let mut out = Outcome::default();
        self.expire_into(now, &mut out);
        out
    }

    fn expire_into(&mut self, now: Instant, out: &mut Outcome) {
        while let Some((_, id)) = self.order.first_key_value() {
            let id = *id;
            let expired = self
                .traces
                .get(&id)
                .is_none_or(|t| now.saturating_duration_since(t.updated) >= self.limits.ttl);
            if !expired {
                break;
            }
            self.remove(&id);
            out.evict(Reason::Ttl);
        }
    }

    fn remove(&mut self, id: &TraceId) {
        let Some(t) = self.traces.remove(id) else {
            return;
        };
        self.order.remove(&t.seq);
        self.bytes -= t.bytes;
        for s in &t.spans {
            if let Some(ops) = self.ops.get_mut(&s.service) {
                let key = (s.name.clone(), s.kind);
                if let Some(n) = ops.get_mut(&key) {
                    *n -= 1;
                    if *n == 0 {
                        ops.remove(&key);
                    }
                }
                if ops.is_empty() {
                    self.ops.remove(&s.service);
                }
            }
        }
    }

    /// A trace's pieces (cheap clones of shared bytes), when stored and not expired.
    pub fn get(&self, id: &TraceId, now: Instant) -> Option<Vec<Bytes>> {
        self.traces
            .get(id)
            .filter(|t| now.saturating_duration_since(t.updated) < self.limits.ttl)
            .map(|t| t.pieces.clone())
    }

    /// Changes whenever the trace receives spans (or leaves and comes back): a cache key.
    pub fn version(&self, id: &TraceId) -> Option<u64> {
        self.traces.get(id).map(|t| t.seq)
    }

    /// Traces with at least one span matching `q` (attributes aside: see
    /// [`matches_attributes`]), most recently received first. With attributes, every candidate
    /// is returned: the caller filters and cuts to `q.limit` without the lock.
    pub fn find(&self, q: &Query, now: Instant) -> Vec<Vec<Bytes>> {
        let limit = if q.attributes.is_empty() {
            q.limit
        } else {
            usize::MAX
        };
        self.order
            .values()
            .rev()
            .filter_map(|id| self.traces.get(id))
            .filter(|t| now.saturating_duration_since(t.updated) < self.limits.ttl)
            .filter(|t| t.spans.iter().any(|s| q.matches(s)))
            .take(limit)
            .map(|t| t.pieces.clone())
            .collect()
    }

    /// Service names, sorted.
    pub fn services(&self) -> Vec<String> {
        self.ops.keys().map(|s| s.to_string()).collect()
    }

    /// A service's operations with their span kinds, sorted; `kind` filters.
    pub fn operations(&self, service: &str, kind: Option<&str>) -> Vec<(String, &'static str)> {
        self.ops
            .get(service)
            .map(|ops| {
                ops.keys()
                    .filter(|(_, k)| kind.is_none_or(|want| want == *k))
                    .map(|(n, k)| (n.to_string(), *k))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The pieces as one OTLP `TracesData` message (`resource_spans` = 1, repeated).
pub fn traces_data(pieces: &[Bytes]) -> Vec<u8> {
    let mut out = Vec::with_capacity(pieces.iter().map(|p| p.len() + 6).sum());
    for p in pieces {
        prost::encoding::encode_key(1, WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(p.len() as u64, &mut out);
        out.extend_from_slice(p);
    }
    out
}

fn value_text(v: &Option<AnyValue>) -> Option<String> {
    Some(match v.as_ref()?.value.as_ref()? {
        any_value::Value::StringValue(s) => s.clone(),
        any_value::Value::BoolValue(b) => b.to_string(),
        any_value::Value::IntValue(i) => i.to_string(),
        any_value::Value::DoubleValue(d) => d.to_string(),
        _ => return None,
    })
}

/// Whether one span of the trace carries every `key = value` pair (its own attributes first,
/// then its resource's); values compare as text, so `200` matches an int attribute 200.
pub fn matches_attributes(
    td: &opentelemetry_proto::tonic::trace::v1::TracesData,
    want: &[(String, String)],
) -> bool {
    let has = |attrs: &[KeyValue], k: &str, v: &str| {
        attrs
            .iter()
            .any(|kv| kv.key == k && value_text(&kv.value).as_deref() == Some(v))
    };
    td.resource_spans.iter().any(|rs| {
        let res = rs.resource.as_ref().map_or(&[][..], |r| &r.attributes[..]);
        rs.scope_spans.iter().flat_map(|s| &s.spans).any(|span| {
            want.iter()
                .all(|(k, v)| has(&span.attributes, k, v) || has(res, k, v))
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::otlp::string_attr as kv;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1 as pb;

    fn span(trace: u8, id: u8, name: &str, kind: i32, start: u64, end: u64) -> pb::Span {
        pb::Span {
            trace_id: vec![trace; 16],
            span_id: vec![id; 8],
            name: name.into(),
            kind,
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            attributes: vec![kv("id", &id.to_string())],
            ..pb::Span::default()
        }
    }

    fn batch(service: &str, spans: Vec<pb::Span>) -> Vec<ResourceSpans> {
        let rs = pb::ResourceSpans {
            resource: Some(Resource {
                attributes: vec![kv("service.name", service)],
                ..Resource::default()
            }),
            scope_spans: vec![pb::ScopeSpans {
                spans,
                ..pb::ScopeSpans::default()
            }],
            schema_url: String::new(),
        };
        vec![ResourceSpans::from_proto(&rs).expect("valid")]
    }

    fn limits(max_bytes: usize, max_traces: usize) -> Limits {
        Limits {
            max_bytes,
            max_traces,
            ttl: Duration::from_secs(60),
        }
    }

    /// Stores a batch of `service` with one span `id` of trace `trace`.
    fn insert_one(s: &mut Store, service: &str, trace: u8, id: u8, now: Instant) -> Outcome {
        s.insert(
            prepare(&batch(service, vec![span(trace, id, "x", 1, 1, 2)])),
            now,
        )
    }

    /// A store that received one single-span batch per `(service, trace, span)` at `now`.
    fn store_of(limits: Limits, spans: &[(&str, u8, u8)], now: Instant) -> Store {
        let mut s = Store::new(limits);
        for &(service, trace, id) in spans {
            insert_one(&mut s, service, trace, id, now);
        }
        s
    }

    fn decode(pieces: &[Bytes]) -> pb::TracesData {
        pb::TracesData::decode(&traces_data(pieces)[..]).expect("decodes")
    }

    #[test]
    fn pieces_round_trip_with_resource_and_index() {
        let mut s = Store::new(limits(1 << 20, 100));
        let now = Instant::now();
        let b = batch(
            "svc",
            vec![
                span(1, 1, "root", 2, 10, 50),
                span(2, 2, "other", 3, 20, 30),
                span(1, 3, "child", 3, 15, 40),
            ],
        );
        let out = s.insert(prepare(&b), now);
        assert_eq!(out, Outcome::default());
        assert_eq!(s.len(), 2);
        let td = decode(&s.get(&[1; 16], now).expect("stored"));
        let names: Vec<_> = td.resource_spans[0].scope_spans[0]
            .spans
            .iter()
            .map(|s| s.name.as_str())
            .collect();
        assert_eq!(names, ["root", "child"]);
        let res = td.resource_spans[0].resource.as_ref().expect("resource");
        assert_eq!(res.attributes[0], kv("service.name", "svc"));
        assert!(s.get(&[9; 16], now).is_none());
        assert_eq!(s.services(), ["svc"]);
        assert_eq!(
            s.operations("svc", None),
            [
                ("child".to_string(), "client"),
                ("other".to_string(), "client"),
                ("root".to_string(), "server"),
            ]
        );
        assert_eq!(
            s.operations("svc", Some("server")),
            [("root".to_string(), "server")]
        );
        assert!(s.operations("nope", None).is_empty());
    }

    #[test]
    fn spans_of_one_trace_from_two_batches_and_services_come_back_together() {
        let now = Instant::now();
        let s = store_of(limits(1 << 20, 100), &[("a", 1, 1), ("b", 1, 2)], now);
        let td = decode(&s.get(&[1; 16], now).expect("stored"));
        assert_eq!(td.resource_spans.len(), 2);
        assert_eq!(s.services(), ["a", "b"]);
    }

    #[test]
    fn evicts_oldest_whole_traces_at_max_traces() {
        let t0 = Instant::now();
        let mut s = store_of(limits(1 << 20, 2), &[("a", 1, 1), ("a", 2, 1)], t0);
        // Trace 1 receives again: now trace 2 is the least recently received.
        insert_one(&mut s, "a", 1, 2, t0);
        let out = insert_one(&mut s, "a", 3, 1, t0);
        assert_eq!(out.evicted, [0, 1, 0]);
        assert!(s.get(&[2; 16], t0).is_none());
        assert_eq!(
            decode(&s.get(&[1; 16], t0).unwrap()).resource_spans.len(),
            2
        );
        assert!(s.get(&[3; 16], t0).is_some());
    }

    #[test]
    fn within_one_batch_the_last_traces_are_the_newest() {
        let mut s = Store::new(limits(1 << 20, 3));
        let now = Instant::now();
        let spans = (1..=40u8).map(|t| span(t, 1, "x", 1, 1, 2)).collect();
        let out = s.insert(prepare(&batch("a", spans)), now);
        assert_eq!(out.evicted, [0, 37, 0]);
        for t in 38..=40u8 {
            assert!(s.get(&[t; 16], now).is_some(), "trace {t}");
        }
    }

    #[test]
    fn byte_bound_holds_and_index_shrinks_with_evictions() {
        let max = 64 * 1024;
        let mut s = Store::new(limits(max, 1_000_000));
        let now = Instant::now();
        let mut evicted = 0;
        for t in 0..200u8 {
            let spans = (0..20)
                .map(|i| span(t, i, &format!("op-{t}"), 1, 1, 2))
                .collect();
            let out = s.insert(prepare(&batch("a", spans)), now);
            evicted += out.evicted[Reason::MaxBytes as usize];
            assert!(s.bytes() <= max, "{} > {max}", s.bytes());
        }
        assert!(evicted > 100, "evicted {evicted}");
        assert_eq!(s.len() as u64, 200 - evicted);
        // Only the newest traces remain; the index forgot the evicted operations.
        assert!(s.get(&[199; 16], now).is_some());
        assert!(s.get(&[0; 16], now).is_none());
        let ops = s.operations("a", None);
        assert_eq!(ops.len(), s.len());
        assert!(!ops.iter().any(|(n, _)| n == "op-0"));
        // What is held is at least the piece bytes: the count is not an underestimate.
        let held: usize = s
            .traces
            .values()
            .flat_map(|t| &t.pieces)
            .map(Bytes::len)
            .sum();
        assert!(held <= s.bytes());
    }

    #[test]
    fn a_trace_larger_than_the_store_is_refused_not_evicting_the_rest() {
        let now = Instant::now();
        let mut s = store_of(limits(8 * 1024, 100), &[("a", 1, 1)], now);
        let big: Vec<_> = (0..200).map(|i| span(2, i as u8, "y", 1, 1, 2)).collect();
        let out = s.insert(prepare(&batch("a", big)), now);
        assert_eq!(out.too_large_spans, 200);
        assert!(s.get(&[1; 16], now).is_some());
        assert!(s.bytes() <= 8 * 1024);
    }

    #[test]
    fn ttl_drops_idle_traces() {
        let t0 = Instant::now();
        let mut s = store_of(limits(1 << 20, 100), &[("a", 1, 1)], t0);
        let t1 = t0 + Duration::from_secs(30);
        insert_one(&mut s, "a", 2, 1, t1);
        let t2 = t0 + Duration::from_secs(61);
        assert!(
            s.get(&[1; 16], t2).is_none(),
            "expired traces are not served"
        );
        let out = s.expire(t2);
        assert_eq!(out.evicted, [0, 0, 1]);
        assert_eq!(s.len(), 1);
        assert!(s.get(&[2; 16], t2).is_some());
        let out = s.expire(t1 + Duration::from_secs(60));
        assert_eq!(out.evicted, [0, 0, 1]);
        assert!(s.is_empty());
        assert_eq!(s.bytes(), 0);
        assert!(s.services().is_empty());
    }

    #[test]
    fn find_filters_by_service_operation_time_duration_and_limit() {
        let mut s = Store::new(limits(1 << 20, 100));
        let now = Instant::now();
        s.insert(
            prepare(&batch("a", vec![span(1, 1, "x", 1, 100, 200)])),
            now,
        );
        s.insert(
            prepare(&batch("b", vec![span(2, 1, "y", 1, 300, 1300)])),
            now,
        );
        s.insert(
            prepare(&batch("a", vec![span(3, 1, "y", 1, 500, 510)])),
            now,
        );
        let ids = |q: &Query| -> Vec<u8> {
            s.find(q, now)
                .iter()
                .map(|p| decode(p).resource_spans[0].scope_spans[0].spans[0].trace_id[0])
                .collect()
        };
        let all = Query {
            start_min: 0,
            start_max: u64::MAX,
            limit: 10,
            ..Query::default()
        };
        assert_eq!(ids(&all), [3, 2, 1], "most recent first");
        let q = Query {
            service: Some("a".into()),
            ..all.clone()
        };
        assert_eq!(ids(&q), [3, 1]);
        let q = Query {
            operation: Some("y".into()),
            ..all.clone()
        };
        assert_eq!(ids(&q), [3, 2]);
        let q = Query {
            start_min: 250,
            start_max: 400,
            ..all.clone()
        };
        assert_eq!(ids(&q), [2]);
        let q = Query {
            duration_min: Some(50),
            duration_max: Some(500),
            ..all.clone()
        };
        assert_eq!(ids(&q), [1]);
        let q = Query {
            limit: 1,
            ..all.clone()
        };
        assert_eq!(ids(&q), [3]);
    }

    #[test]
    fn attributes_match_span_or_resource_values_as_text() {
        let mut sp = span(1, 1, "x", 1, 1, 2);
        sp.attributes.push(KeyValue {
            key: "http.status_code".into(),
            value: Some(AnyValue {
                value: Some(any_value::Value::IntValue(200)),
            }),
            ..KeyValue::default()
        });
        let td = decode(&[prepare(&batch("svc", vec![sp])).pieces[0].bytes.clone()]);
        let want = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<Vec<_>>()
        };
        assert!(matches_attributes(
            &td,
            &want(&[("http.status_code", "200")])
        ));
        assert!(matches_attributes(
            &td,
            &want(&[("http.status_code", "200"), ("service.name", "svc")])
        ));
        assert!(!matches_attributes(
            &td,
            &want(&[("http.status_code", "500")])
        ));
    }

    #[test]
    fn spans_without_a_16_byte_trace_id_are_counted_not_stored() {
        let mut bad = span(1, 1, "x", 1, 1, 2);
        bad.trace_id = vec![1; 8];
        let mut s = Store::new(limits(1 << 20, 100));
        let out = s.insert(prepare(&batch("a", vec![bad])), Instant::now());
        assert_eq!(out.bad_id_spans, 1);
        assert!(s.is_empty());
    }
}
