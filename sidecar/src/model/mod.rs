//! The data that flows through a pipeline: OTLP resource spans plus their memory accounting.

pub mod otlp;

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

use bytes::Bytes;

pub use otlp::{ResourceSpans, ScopeSpans, Span, TraceRequest};

use crate::memory::MemoryTicket;

/// Spans on their way to the exporters. Every exporter shares one `Arc<Batch>`; the memory it
/// was accounted with (shared by all chunks of one flush) is released when the last one is done,
/// and so are its request bodies.
#[derive(Debug, Default)]
pub struct Batch {
    pub resource_spans: Vec<ResourceSpans>,
    pub span_count: usize,
    pub memory: Arc<Vec<MemoryTicket>>,
    /// The request bodies made from these spans, filled at the first export attempt that needs
    /// each one and shared by every retry and every exporter of the batch
    /// (`sidecar/src/exporters/encoded.rs` fills them).
    pub bodies: Bodies,
}

/// The encodings of one batch's `ExportTraceServiceRequest`, each made at most once (two
/// exporters racing for the same one may both encode; one result is kept).
#[derive(Debug, Default)]
pub struct Bodies {
    /// Protobuf: what OTLP/gRPC sends (gRPC compression is tonic's) and OTLP/HTTP's default.
    pub proto: OnceLock<Bytes>,
    pub proto_gzip: OnceLock<Bytes>,
    /// OTLP/JSON.
    pub json: OnceLock<Bytes>,
    pub json_gzip: OnceLock<Bytes>,
}

impl Batch {
    pub fn new(resource_spans: Vec<ResourceSpans>, memory: Arc<Vec<MemoryTicket>>) -> Batch {
        let span_count = span_count(&resource_spans);
        Batch {
            resource_spans,
            span_count,
            memory,
            bodies: Bodies::default(),
        }
    }
}

pub fn span_count(rs: &[ResourceSpans]) -> usize {
    rs.iter()
        .flat_map(|r| r.scope_spans.iter())
        .map(|s| s.spans.len())
        .sum()
}

/// Splits `rs` into chunks of at most `max` spans, keeping resource and scope of every span.
pub fn split(rs: Vec<ResourceSpans>, max: usize) -> Vec<Vec<ResourceSpans>> {
    if max == 0 || span_count(&rs) <= max {
        return vec![rs];
    }
    let mut out: Vec<Vec<ResourceSpans>> = Vec::new();
    let mut cur: Vec<ResourceSpans> = Vec::new();
    let mut n = 0usize;
    for r in rs {
        let mut r_head = ResourceSpans {
            resource: r.resource.clone(),
            scope_spans: Vec::new(),
            schema_url: r.schema_url.clone(),
        };
        for mut s in r.scope_spans {
            let mut spans = std::mem::take(&mut s.spans);
            while !spans.is_empty() {
                let room = max - n;
                let take = room.min(spans.len());
                let rest = spans.split_off(take);
                let mut chunk = s.clone();
                chunk.spans = spans;
                r_head.scope_spans.push(chunk);
                n += take;
                spans = rest;
                if n == max {
                    cur.push(std::mem::replace(
                        &mut r_head,
                        ResourceSpans {
                            resource: r.resource.clone(),
                            scope_spans: Vec::new(),
                            schema_url: r.schema_url.clone(),
                        },
                    ));
                    out.push(std::mem::take(&mut cur));
                    n = 0;
                }
            }
        }
        if !r_head.scope_spans.is_empty() {
            cur.push(r_head);
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Splits resource spans into one piece per key (`key` sees each span and its resource), each
/// piece keeping the span's resource and scope; pieces come in order of each key's first span
/// within a resource. Tail sampling groups by trace id, load balancing by backend.
pub fn group_by<K: Copy + Eq + std::hash::Hash>(
    rs: Vec<ResourceSpans>,
    mut key: impl FnMut(&ResourceSpans, &Span) -> K,
) -> Vec<(K, ResourceSpans)> {
    let mut out: Vec<(K, ResourceSpans)> = Vec::new();
    for mut r in rs {
        let scopes = std::mem::take(&mut r.scope_spans);
        // Per key: its piece in `out` and the scope it last took a span from, so consecutive
        // spans of one scope share a ScopeSpans.
        let mut pieces: HashMap<K, (usize, usize)> = HashMap::new();
        for (si, mut scope) in scopes.into_iter().enumerate() {
            for span in std::mem::take(&mut scope.spans) {
                let k = key(&r, &span);
                let (ix, last_scope) = *pieces.entry(k).or_insert_with(|| {
                    out.push((
                        k,
                        ResourceSpans {
                            resource: r.resource.clone(),
                            scope_spans: Vec::new(),
                            schema_url: r.schema_url.clone(),
                        },
                    ));
                    (out.len() - 1, usize::MAX)
                });
                let piece = &mut out[ix].1;
                if last_scope != si {
                    piece.scope_spans.push(ScopeSpans {
                        scope: scope.scope.clone(),
                        spans: Vec::new(),
                        schema_url: scope.schema_url.clone(),
                    });
                    pieces.insert(k, (ix, si));
                }
                if let Some(s) = piece.scope_spans.last_mut() {
                    s.spans.push(span);
                }
            }
        }
    }
    out
}

/// A resource with one scope per entry of `scopes`, holding that many spans named `s0`, `s1`, …
/// (the shape the batcher, pipeline and split tests feed through).
#[cfg(test)]
pub(crate) fn test_resource_spans(scopes: &[usize]) -> ResourceSpans {
    use opentelemetry_proto::tonic::trace::v1 as pb;

    ResourceSpans {
        resource: None,
        scope_spans: scopes
            .iter()
            .map(|&n| ScopeSpans {
                scope: None,
                spans: (0..n)
                    .map(|i| {
                        Span::from_proto(&pb::Span {
                            name: format!("s{i}"),
                            ..pb::Span::default()
                        })
                    })
                    .collect(),
                schema_url: String::new(),
            })
            .collect(),
        schema_url: String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rs(scopes: &[usize]) -> ResourceSpans {
        test_resource_spans(scopes)
    }

    #[test]
    fn split_respects_max_and_keeps_every_span() {
        let input = vec![rs(&[3, 4]), rs(&[5])];
        let chunks = split(input, 4);
        let sizes: Vec<_> = chunks.iter().map(|c| span_count(c)).collect();
        assert_eq!(sizes, vec![4, 4, 4]);
        assert!(split(vec![rs(&[2])], 4).len() == 1);
        assert_eq!(split(vec![rs(&[9])], 0).len(), 1);
    }
}
