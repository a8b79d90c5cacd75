//! tail_sampling: holds each trace's spans until `decision_wait` after its first span, then
//! keeps it when any policy says so; bounded in bytes, with a cache of decided ids for late spans.
//!
//! It runs inline like the other processors: arriving spans are taken out of the request and
//! buffered per trace (late spans of a sampled trace go straight on). A task owned by the
//! processor decides due traces and hands the sampled ones to the rest of the pipeline (the
//! `Consumer` the pipeline attaches), so a batch processor after it batches them as usual.

mod buffer;
mod config;
mod policy;

use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

use self::buffer::{split_by_trace, Arrival, Buffer, Pending, TraceKey};
pub use self::config::{Settings, WhenFull, MIN_MAX_BYTES};
use self::policy::{Policy, TraceView};
use super::{BuildCtx, Processor, ProcessorSpec, Stage};
use crate::component::{BoxFuture, Consumer, Factory, Refusal};
use crate::config::{ComponentId, ComponentYaml, ConfigError};
use crate::memory::MemoryTracker;
use crate::metrics::{Metric, Metrics};
use crate::model::{self, ResourceSpans};

pub const FACTORY: Factory<dyn ProcessorSpec> = Factory {
    kind: "tail_sampling",
    parse,
};

fn parse(y: &ComponentYaml<'_>) -> Result<Box<dyn ProcessorSpec>, ConfigError> {
    Ok(Box::new(Spec(Arc::new(config::parse_settings(
        y.value, y.path,
    )?))))
}

struct Spec(Arc<Settings>);

impl ProcessorSpec for Spec {
    fn build(&self, id: &ComponentId, ctx: &BuildCtx) -> Stage {
        Stage::Inline(TailSampler::start(
            id.to_string(),
            self.0.clone(),
            ctx.metrics.clone(),
            ctx.memory.clone(),
        ))
    }
}

/// How many times a refused hand-off is tried before the trace is dropped (counted).
const FORWARD_ATTEMPTS: u32 = 5;

pub struct TailSampler {
    inner: Arc<Inner>,
}

struct Inner {
    id: String,
    s: Arc<Settings>,
    buffer: Mutex<Buffer>,
    downstream: OnceLock<Arc<dyn Consumer>>,
    metrics: Arc<Metrics>,
    memory: Arc<MemoryTracker>,
}

impl TailSampler {
    /// Builds the processor and starts its decision task (it ends with the processor).
    pub fn start(
        id: String,
        s: Arc<Settings>,
        metrics: Arc<Metrics>,
        memory: Arc<MemoryTracker>,
    ) -> Arc<TailSampler> {
        let inner = Arc::new(Inner {
            id,
            buffer: Mutex::new(Buffer::new(
                s.max_bytes,
                s.num_traces,
                s.cache.sampled_cache_size,
                s.cache.non_sampled_cache_size,
            )),
            s,
            downstream: OnceLock::new(),
            metrics,
            memory,
        });
        tokio::spawn(decide_loop(Arc::downgrade(&inner)));
        Arc::new(TailSampler { inner })
    }
}

/// Wakes often enough that a trace is decided within a tenth of `decision_wait` of its due time.
fn tick(wait: Duration) -> Duration {
    (wait / 10).clamp(Duration::from_millis(10), Duration::from_secs(1))
}

async fn decide_loop(inner: Weak<Inner>) {
    let Some(period) = inner.upgrade().map(|i| tick(i.s.decision_wait)) else {
        return;
    };
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        let sampled = inner.decide_due(Instant::now());
        if !sampled.is_empty() {
            inner.forward(sampled).await;
        }
    }
}

impl Inner {
    /// Decides every trace whose `decision_wait` is over; returns the sampled spans.
    fn decide_due(&self, now: Instant) -> Vec<ResourceSpans> {
        match now.checked_sub(self.s.decision_wait) {
            Some(cutoff) => self.decide_popped(now, |b| b.pop_due(cutoff)),
            None => Vec::new(),
        }
    }

    /// Decides every trace held, whatever its age (shutdown); returns the sampled spans.
    fn decide_all(&self, now: Instant) -> Vec<ResourceSpans> {
        self.decide_popped(now, Buffer::pop_front)
    }

    fn decide_popped(
        &self,
        now: Instant,
        mut pop: impl FnMut(&mut Buffer) -> Option<(TraceKey, Pending)>,
    ) -> Vec<ResourceSpans> {
        let mut out = Vec::new();
        let mut b = self.buffer.lock();
        while let Some((k, t)) = pop(&mut b) {
            if self.decide(&mut b, k, &t, now) {
                out.extend(t.fragments);
            }
        }
        self.gauges(&b);
        out
    }

    /// Runs the policies on a trace, counts every vote and remembers the verdict.
    fn decide(&self, b: &mut Buffer, key: TraceKey, t: &Pending, now: Instant) -> bool {
        let view = TraceView {
            trace_id: &key,
            fragments: &t.fragments,
            span_count: t.spans,
        };
        let mut sampled = false;
        for p in &self.s.policies {
            let v = p.evaluate(&view, now);
            self.count_vote(p, v);
            sampled |= v;
        }
        self.metrics.count(
            Metric::TailSamplingTraces,
            &[("processor", &self.id), ("decision", verdict(sampled))],
            1,
        );
        b.decided(key, sampled);
        sampled
    }

    fn count_vote(&self, p: &Policy, v: bool) {
        self.metrics.count(
            Metric::TailSamplingPolicyDecisions,
            &[
                ("processor", &self.id),
                ("policy", &p.name),
                ("decision", verdict(v)),
            ],
            1,
        );
    }

    fn gauges(&self, b: &Buffer) {
        let l = [("processor", self.id.as_str())];
        self.metrics
            .gauge(Metric::TailSamplingBufferedTraces, &l, b.len() as i64);
        self.metrics
            .gauge(Metric::TailSamplingBufferedBytes, &l, b.bytes() as i64);
    }

    /// Hands sampled spans to the rest of the pipeline; a refusal (its queue is full) is
    /// retried after its hint a few times, then the spans are dropped and counted.
    async fn forward(&self, spans: Vec<ResourceSpans>) {
        let Some(next) = self.downstream.get() else {
            self.forward_failed(&spans, "no_pipeline");
            return;
        };
        let len = spans.iter().map(prost::Message::encoded_len).sum();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match next.consume(spans.clone(), len).await {
                Ok(_) => return,
                Err(r @ Refusal::ShuttingDown) => return self.forward_failed(&spans, r.reason()),
                Err(r) if attempt >= FORWARD_ATTEMPTS => {
                    return self.forward_failed(&spans, r.reason())
                }
                Err(r) => {
                    tokio::time::sleep(r.retry_after().min(Duration::from_secs(1))).await;
                }
            }
        }
    }

    fn forward_failed(&self, spans: &[ResourceSpans], reason: &str) {
        self.metrics.count(
            Metric::TailSamplingForwardFailedSpans,
            &[("processor", &self.id), ("reason", reason)],
            model::span_count(spans) as u64,
        );
    }
}

fn verdict(sampled: bool) -> &'static str {
    if sampled {
        "sampled"
    } else {
        "not_sampled"
    }
}

impl Processor for TailSampler {
    fn process(&self, spans: &mut Vec<ResourceSpans>) -> Result<(), Refusal> {
        let inner = &self.inner;
        let now = Instant::now();
        let mut out = Vec::new();
        let (mut late_sampled, mut late_dropped) = (0u64, 0u64);
        let mut b = inner.buffer.lock();
        for (key, frag) in split_by_trace(std::mem::take(spans)) {
            match b.arrive(key, frag, now, |n| inner.memory.take(n)) {
                Arrival::Held => {}
                Arrival::Sampled(f) => {
                    late_sampled += model::span_count(std::slice::from_ref(&f)) as u64;
                    out.push(f);
                }
                Arrival::NotSampled(n) => late_dropped += n as u64,
            }
        }
        // Over a bound: the oldest undecided traces go first, decided now or dropped.
        while let Some((key, t, why)) = b.pop_overflow() {
            let action = match inner.s.when_full {
                WhenFull::Decide => {
                    if inner.decide(&mut b, key, &t, now) {
                        out.extend(t.fragments);
                    }
                    "decided_early"
                }
                WhenFull::Drop => {
                    b.decided(key, false);
                    "dropped"
                }
            };
            inner.metrics.count(
                Metric::TailSamplingOverflowTraces,
                &[
                    ("processor", &inner.id),
                    ("reason", why.label()),
                    ("action", action),
                ],
                1,
            );
        }
        inner.gauges(&b);
        drop(b);
        for (decision, n) in [("sampled", late_sampled), ("not_sampled", late_dropped)] {
            inner.metrics.count(
                Metric::TailSamplingLateSpans,
                &[("processor", &inner.id), ("decision", decision)],
                n,
            );
        }
        // Late spans of sampled traces and early-decided ones go on with this request.
        *spans = out;
        Ok(())
    }

    fn attach_downstream(&self, next: Arc<dyn Consumer>) {
        let _ = self.inner.downstream.set(next);
    }

    /// Shutdown: every trace still held is decided now on what arrived (the Collector drops
    /// them), and the kept ones go downstream before the pipeline closes.
    fn drain(&self) -> BoxFuture<'static, ()> {
        let inner = self.inner.clone();
        Box::pin(async move {
            let sampled = inner.decide_all(Instant::now());
            if !sampled.is_empty() {
                inner.forward(sampled).await;
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_proto::tonic::trace::v1 as pb;
    use tokio::sync::mpsc;

    use super::*;
    use crate::model::{ScopeSpans, Span};

    /// The rest of the pipeline: reports the trace ids (first byte) of what it is handed.
    struct Sink(mpsc::UnboundedSender<Vec<u8>>);

    impl Consumer for Sink {
        fn consume(
            &self,
            spans: Vec<ResourceSpans>,
            _len: usize,
        ) -> BoxFuture<'_, Result<usize, Refusal>> {
            let ids: Vec<u8> = spans
                .iter()
                .flat_map(|r| r.scope_spans.iter().flat_map(|s| s.spans.iter()))
                .map(|s| s.trace_id()[0])
                .collect();
            let n = ids.len();
            let _ = self.0.send(ids);
            Box::pin(async move { Ok(n) })
        }
    }

    fn request(spans: &[(u8, i32)]) -> Vec<ResourceSpans> {
        vec![ResourceSpans {
            resource: None,
            scope_spans: vec![ScopeSpans {
                spans: spans
                    .iter()
                    .map(|&(id, code)| {
                        Span::from_proto(&pb::Span {
                            trace_id: vec![id; 16],
                            span_id: vec![1; 8],
                            status: Some(pb::Status {
                                code,
                                ..pb::Status::default()
                            }),
                            ..pb::Span::default()
                        })
                    })
                    .collect(),
                ..ScopeSpans::default()
            }],
            schema_url: String::new(),
        }]
    }

    fn settings(yaml: &str) -> Arc<Settings> {
        let s = crate::config::parse_yaml(yaml, "processors.tail_sampling", config::parse_settings);
        Arc::new(s.expect("valid"))
    }

    const ERRORS_ONLY: &str = "decision_wait: 2s\npolicies: [{name: errors, type: status_code, status_code: {status_codes: [ERROR]}}]\n";

    #[tokio::test(start_paused = true)]
    async fn holds_each_trace_for_decision_wait_then_sends_the_sampled_whole() {
        let metrics = Metrics::new();
        let ts = TailSampler::start(
            "tail_sampling".into(),
            settings(ERRORS_ONLY),
            metrics.clone(),
            MemoryTracker::new(),
        );
        let (tx, mut rx) = mpsc::unbounded_channel();
        ts.attach_downstream(Arc::new(Sink(tx)));
        let mut req = request(&[(1, 0), (2, 0)]);
        ts.process(&mut req).expect("taken");
        assert!(req.is_empty(), "held, nothing passes inline");
        tokio::time::advance(Duration::from_secs(1)).await;
        // The error of trace 1 arrives in a later request, from another agent.
        let mut req = request(&[(1, 2)]);
        ts.process(&mut req).expect("taken");
        assert!(req.is_empty());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let got = rx.recv().await.expect("decided");
        assert_eq!(got, [1, 1], "trace 1 whole; trace 2 had no error");
        assert!(rx.try_recv().is_err());
        // A late span follows the cached verdict, inline.
        let mut late = request(&[(1, 0), (2, 0)]);
        ts.process(&mut late).expect("taken");
        assert_eq!(model::span_count(&late), 1, "trace 1's late span passes");
        let c = |m, l: &[(&'static str, &str)]| metrics.counter(m, l);
        let p = ("processor", "tail_sampling");
        assert_eq!(
            c(
                Metric::TailSamplingPolicyDecisions,
                &[p, ("policy", "errors"), ("decision", "sampled")]
            ),
            1
        );
        assert_eq!(
            c(
                Metric::TailSamplingTraces,
                &[p, ("decision", "not_sampled")]
            ),
            1
        );
        assert_eq!(
            c(
                Metric::TailSamplingLateSpans,
                &[p, ("decision", "not_sampled")]
            ),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn drain_decides_what_is_held_now_and_hands_on_the_sampled() {
        let ts = TailSampler::start(
            "ts".into(),
            settings(ERRORS_ONLY),
            Metrics::new(),
            MemoryTracker::new(),
        );
        let (tx, mut rx) = mpsc::unbounded_channel();
        ts.attach_downstream(Arc::new(Sink(tx)));
        let mut req = request(&[(1, 2), (2, 0), (3, 2)]);
        ts.process(&mut req).expect("taken");
        ts.drain().await;
        let got = rx.try_recv().expect("handed on before decision_wait");
        assert_eq!(
            got,
            [1, 3],
            "the erroring traces; trace 2 decided not sampled"
        );
        assert_eq!(
            ts.inner.buffer.lock().len(),
            0,
            "nothing held after the drain"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn over_max_bytes_the_oldest_are_decided_early_or_dropped_and_counted() {
        for (when_full, action) in [("decide", "decided_early"), ("drop", "dropped")] {
            let metrics = Metrics::new();
            let memory = MemoryTracker::new();
            let yaml = format!("max_bytes: 65536\nwhen_full: {when_full}\n{ERRORS_ONLY}");
            let ts = TailSampler::start(
                "ts".into(),
                settings(&yaml),
                metrics.clone(),
                memory.clone(),
            );
            // 2000 traces of one erroring span each: far more than 64 KiB.
            let mut passed = 0;
            for i in 0..2000u32 {
                let mut req = request(&[((i % 250) as u8, 2)]);
                if let Some(s) = req[0].scope_spans[0].spans.first_mut() {
                    s.push_str_attr("pad", &"x".repeat(200));
                }
                ts.process(&mut req).expect("taken");
                passed += model::span_count(&req);
            }
            let b = ts.inner.buffer.lock();
            assert!(b.bytes() <= 65536, "{when_full}: holds {}", b.bytes());
            assert_eq!(
                memory.in_use(),
                b.bytes(),
                "accounted in the pipeline's memory"
            );
            let overflowed = metrics.counter(
                Metric::TailSamplingOverflowTraces,
                &[
                    ("processor", "ts"),
                    ("reason", "max_bytes"),
                    ("action", action),
                ],
            );
            assert!(overflowed > 0, "{when_full}: counted");
            if when_full == "decide" {
                assert!(passed > 0, "early-decided errors go on");
            } else {
                assert_eq!(passed, 0, "dropped, and their late spans with them");
            }
        }
    }
}
