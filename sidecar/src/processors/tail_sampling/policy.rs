//! tail_sampling's policies: each looks at a whole buffered trace and says sampled or not.

use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::model::ResourceSpans;
use crate::processors::sampler::ratio_keeps;

/// One named policy of the config.
#[derive(Debug)]
pub struct Policy {
    pub name: String,
    pub kind: PolicyKind,
}

/// Which `Status.code`s a `status_code` policy keeps.
#[derive(Debug, Default, Clone, Copy)]
pub struct StatusCodes {
    pub unset: bool,
    pub ok: bool,
    pub error: bool,
}

impl StatusCodes {
    fn has(self, code: i32) -> bool {
        match code {
            0 => self.unset,
            1 => self.ok,
            2 => self.error,
            _ => false,
        }
    }
}

#[derive(Debug)]
pub enum PolicyKind {
    AlwaysSample,
    StatusCode(StatusCodes),
    /// The trace's duration (earliest start to latest end) at least `threshold_ns`, and at
    /// most `upper_ns` when set.
    Latency {
        threshold_ns: u64,
        upper_ns: Option<u64>,
    },
    /// The sampler's consistent trace-id ratio (`processors/sampler.rs`): every gateway, and
    /// every head sampler with the same ratio, gives a trace id the same verdict.
    Probabilistic {
        threshold: u64,
    },
    StringAttribute {
        key: String,
        values: Vec<String>,
        regexes: Option<Vec<regex::Regex>>,
        invert: bool,
    },
    NumericAttribute {
        key: String,
        min: f64,
        max: f64,
        invert: bool,
    },
    SpanCount {
        min: usize,
        max: usize,
    },
    /// Keeps traces while the spans kept in the current second stay within the budget.
    RateLimiting {
        spans_per_second: u64,
        window: Mutex<Window>,
    },
    /// Sampled when every sub-policy says so.
    And(Vec<Policy>),
    /// Sub-policies in `policy_order`, each with its share of `max_total_spans_per_second`
    /// (a `RateLimiting`); the first that samples within its share keeps the trace.
    Composite(Vec<(Policy, PolicyKind)>),
}

/// The current one-second window of a rate limit.
#[derive(Debug, Default)]
pub struct Window {
    start: Option<Instant>,
    spent: u64,
}

impl PolicyKind {
    pub fn rate_limiting(spans_per_second: u64) -> PolicyKind {
        PolicyKind::RateLimiting {
            spans_per_second,
            window: Mutex::new(Window::default()),
        }
    }
}

/// What the policies read of one buffered trace.
pub struct TraceView<'a> {
    pub trace_id: &'a [u8],
    pub fragments: &'a [ResourceSpans],
    pub span_count: usize,
}

impl TraceView<'_> {
    fn spans(&self) -> impl Iterator<Item = (&ResourceSpans, &crate::model::Span)> {
        self.fragments.iter().flat_map(|rs| {
            rs.scope_spans
                .iter()
                .flat_map(move |s| s.spans.iter().map(move |sp| (rs, sp)))
        })
    }

    /// Whether any span (its attributes, then its resource's) has `key` with a value
    /// `matches` accepts.
    fn any_attr(&self, key: &str, matches: &dyn Fn(&any_value::Value) -> bool) -> bool {
        let hit = |kvs: &[KeyValue]| {
            kvs.iter().any(|kv| {
                kv.key == key
                    && kv
                        .value
                        .as_ref()
                        .and_then(|v| v.value.as_ref())
                        .is_some_and(matches)
            })
        };
        self.fragments.iter().any(|rs| {
            rs.resource.as_ref().is_some_and(|r| hit(&r.attributes))
                || rs
                    .scope_spans
                    .iter()
                    .flat_map(|s| s.spans.iter())
                    .any(|sp| {
                        // Decoded only for the attribute policies, only at decision time.
                        sp.to_proto().is_ok_and(|p| hit(&p.attributes))
                    })
        })
    }
}

impl Policy {
    /// Sampled or not. `now` drives the rate limits.
    pub fn evaluate(&self, t: &TraceView<'_>, now: Instant) -> bool {
        self.kind.evaluate(t, now)
    }
}

impl PolicyKind {
    fn evaluate(&self, t: &TraceView<'_>, now: Instant) -> bool {
        match self {
            PolicyKind::AlwaysSample => true,
            PolicyKind::StatusCode(codes) => {
                t.spans().any(|(_, sp)| codes.has(sp.times_and_status().2))
            }
            PolicyKind::Latency {
                threshold_ns,
                upper_ns,
            } => {
                let (mut first, mut last) = (u64::MAX, 0u64);
                for (_, sp) in t.spans() {
                    let (start, end, _) = sp.times_and_status();
                    first = first.min(start);
                    last = last.max(end);
                }
                let d = last.saturating_sub(first);
                d >= *threshold_ns && upper_ns.is_none_or(|u| d <= u)
            }
            PolicyKind::Probabilistic { threshold } => ratio_keeps(t.trace_id, *threshold),
            PolicyKind::StringAttribute {
                key,
                values,
                regexes,
                invert,
            } => {
                let found = t.any_attr(key, &|v| match v {
                    any_value::Value::StringValue(s) => match regexes {
                        Some(rs) => rs.iter().any(|r| r.is_match(s)),
                        None => values.iter().any(|x| x == s),
                    },
                    _ => false,
                });
                found != *invert
            }
            PolicyKind::NumericAttribute {
                key,
                min,
                max,
                invert,
            } => {
                let found = t.any_attr(key, &|v| {
                    let n = match v {
                        any_value::Value::IntValue(i) => *i as f64,
                        any_value::Value::DoubleValue(d) => *d,
                        _ => return false,
                    };
                    n >= *min && n <= *max
                });
                found != *invert
            }
            PolicyKind::SpanCount { min, max } => t.span_count >= *min && t.span_count <= *max,
            PolicyKind::RateLimiting {
                spans_per_second,
                window,
            } => {
                let mut w = window.lock();
                if w.start.is_none_or(|s| now.duration_since(s).as_secs() >= 1) {
                    w.start = Some(now);
                    w.spent = 0;
                }
                let spans = t.span_count as u64;
                if w.spent + spans <= *spans_per_second {
                    w.spent += spans;
                    true
                } else {
                    false
                }
            }
            PolicyKind::And(subs) => subs.iter().all(|p| p.evaluate(t, now)),
            PolicyKind::Composite(subs) => subs
                .iter()
                .any(|(p, budget)| p.evaluate(t, now) && budget.evaluate(t, now)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry_proto::tonic::common::v1::AnyValue;
    use opentelemetry_proto::tonic::trace::v1 as pb;

    use super::*;
    use crate::model::{ScopeSpans, Span};
    use crate::processors::sampler::threshold;

    fn span(id: [u8; 16], start: u64, end: u64, code: i32, attrs: Vec<KeyValue>) -> Span {
        Span::from_proto(&pb::Span {
            trace_id: id.to_vec(),
            span_id: vec![1; 8],
            start_time_unix_nano: start,
            end_time_unix_nano: end,
            status: Some(pb::Status {
                code,
                ..pb::Status::default()
            }),
            attributes: attrs,
            ..pb::Span::default()
        })
    }

    fn frag(spans: Vec<Span>) -> ResourceSpans {
        ResourceSpans {
            resource: None,
            scope_spans: vec![ScopeSpans {
                spans,
                ..ScopeSpans::default()
            }],
            schema_url: String::new(),
        }
    }

    fn attr(key: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..KeyValue::default()
        }
    }

    fn verdict(kind: PolicyKind, frags: &[ResourceSpans]) -> bool {
        let id = frags[0].scope_spans[0].spans[0].trace_id().to_vec();
        let t = TraceView {
            trace_id: &id,
            fragments: frags,
            span_count: crate::model::span_count(frags),
        };
        kind.evaluate(&t, Instant::now())
    }

    #[test]
    fn each_policy_reads_the_whole_trace() {
        let id = [7u8; 16];
        // Two fragments, as from two agents: the error and the long span are in the second.
        let trace = [
            frag(vec![span(id, 1_000, 2_000, 0, vec![])]),
            frag(vec![span(
                id,
                1_500,
                900_000_000,
                2,
                vec![
                    attr(
                        "loom.topic",
                        any_value::Value::StringValue("orders.new".into()),
                    ),
                    attr("retries", any_value::Value::IntValue(3)),
                ],
            )]),
        ];
        let codes = |error| StatusCodes {
            error,
            ..StatusCodes::default()
        };
        assert!(verdict(PolicyKind::StatusCode(codes(true)), &trace));
        assert!(!verdict(PolicyKind::StatusCode(codes(false)), &trace));
        let latency = |ms: u64| PolicyKind::Latency {
            threshold_ns: ms * 1_000_000,
            upper_ns: None,
        };
        assert!(verdict(latency(899), &trace), "duration is 899.999 ms");
        assert!(!verdict(latency(900), &trace));
        let string = |v: &str, re: bool, invert| PolicyKind::StringAttribute {
            key: "loom.topic".into(),
            values: vec![v.into()],
            regexes: re.then(|| vec![regex::Regex::new(v).expect("regex")]),
            invert,
        };
        assert!(verdict(string("orders.new", false, false), &trace));
        assert!(!verdict(string("orders", false, false), &trace));
        assert!(verdict(string("^orders\\.", true, false), &trace));
        assert!(!verdict(string("orders.new", false, true), &trace));
        let numeric = |min, max| PolicyKind::NumericAttribute {
            key: "retries".into(),
            min,
            max,
            invert: false,
        };
        assert!(verdict(numeric(1.0, 3.0), &trace));
        assert!(!verdict(numeric(4.0, 9.0), &trace));
        assert!(verdict(PolicyKind::SpanCount { min: 2, max: 2 }, &trace));
        assert!(!verdict(PolicyKind::SpanCount { min: 3, max: 9 }, &trace));
        let and = PolicyKind::And(vec![
            Policy {
                name: "a".into(),
                kind: latency(1),
            },
            Policy {
                name: "b".into(),
                kind: PolicyKind::SpanCount { min: 5, max: 9 },
            },
        ]);
        assert!(!verdict(and, &trace), "one of the two says no");
    }

    #[test]
    fn probabilistic_is_the_head_samplers_trace_id_ratio() {
        let t = threshold(0.25);
        let mut kept = 0;
        for i in 0u32..4000 {
            let mut id = [0u8; 16];
            // Spread the randomness (low 56 bits) over the range.
            id[9..13].copy_from_slice(&i.wrapping_mul(2_654_435_761).to_be_bytes());
            let v = verdict(
                PolicyKind::Probabilistic { threshold: t },
                &[frag(vec![span(id, 0, 1, 0, vec![])])],
            );
            assert_eq!(v, ratio_keeps(&id, t), "same verdict as the sampler");
            kept += usize::from(v);
        }
        assert!((900..1100).contains(&kept), "kept {kept} of 4000 at 25 %");
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limiting_spends_a_budget_per_second() {
        let p = PolicyKind::rate_limiting(3);
        let trace = [frag(vec![
            span([1; 16], 0, 1, 0, vec![]),
            span([1; 16], 0, 1, 0, vec![]),
        ])];
        let t = TraceView {
            trace_id: &[1; 16],
            fragments: &trace,
            span_count: 2,
        };
        assert!(p.evaluate(&t, Instant::now()), "2 of 3");
        assert!(!p.evaluate(&t, Instant::now()), "4 would exceed 3");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(p.evaluate(&t, Instant::now()), "a new second");
    }
}
