//! EventBus: async in-process pub/sub with wildcard topics, bounded per-subscriber queues and QoS.
//!
//! Every publish runs in an `event_bus.publish` PRODUCER span whose context travels with each
//! delivery, so subscribers (the bridge's `bridge.forward`, local handlers) continue the trace.
//! In the process the context stays typed (`Delivery::trace`); it becomes W3C `traceparent`
//! metadata where the event leaves the process (`Delivery::into_event`).
//! Memory is bounded everywhere: a realtime subscriber that falls behind loses its oldest events
//! (counted), a reliable one makes publishers wait for room (backpressure).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

use parking_lot::{Mutex, RwLock};
use tokio::sync::Notify;

use crate::envelope;
use crate::flow::{FlowEntry, FlowTracker};
use crate::proto::Event;
pub use crate::proto::Qos as QoS;
use crate::telemetry::LoomSpan;
use crate::trace_util::{inject_span_context, refresh_span_context};
use opentelemetry::trace::{SpanContext, TraceContextExt as _};

/// Longest topic or pattern accepted, in bytes.
pub const MAX_TOPIC_LEN: usize = 256;

/// Bus-wide settings.
#[derive(Debug, Clone)]
pub struct BusConfig {
    /// Per-subscriber queue bound, used by [`EventBus::subscribe`].
    pub queue_capacity: usize,
    /// How many recent flows the [`FlowTracker`] keeps (0 turns flow tracking off).
    pub flow_capacity: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig {
            queue_capacity: 1024,
            flow_capacity: 1024,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BusError {
    #[error("invalid topic {0:?}: a topic is 1..=256 bytes of printable characters without '*' or whitespace")]
    InvalidTopic(String),
    #[error("invalid subscription pattern {0:?}: a pattern is 1..=256 bytes of printable characters without whitespace")]
    InvalidPattern(String),
    #[error("invalid queue capacity 0: a subscriber queue holds at least one event")]
    InvalidCapacity,
    #[error("the event bus is closed")]
    Closed,
}

/// One event as a subscriber receives it.
///
/// The trace context of the publish rides beside the event, typed, rather than as a
/// `traceparent` entry added to its metadata: for an event published without metadata that entry
/// costs a map, two strings and a hash, more than the rest of an unsampled publish. A
/// `traceparent` the event already carries is kept current (rewritten in place), so the metadata
/// never names a stale parent; it just may not name one. Read the context with
/// [`Delivery::envelope`], or take the event as it goes on the wire with [`Delivery::into_event`].
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    pub topic: String,
    pub event: Event,
    /// Context of the `event_bus.publish` span (sampled or not); `None` when tracing is off, and
    /// then the event's metadata carries whatever context it was published with.
    pub trace: Option<SpanContext>,
}

impl Delivery {
    /// The event's envelope, with the trace context of this delivery.
    pub fn envelope(&self) -> envelope::Envelope {
        let mut env = envelope::Envelope::from_event(&self.event);
        if let Some(sc) = &self.trace {
            env.set_span_context(sc);
        }
        env
    }

    /// The context a subscriber's span should take as parent: this delivery's, or (tracing off
    /// in the bus) the one the event's metadata names.
    pub fn parent_context(&self) -> Option<opentelemetry::Context> {
        match &self.trace {
            Some(sc) => Some(opentelemetry::Context::new().with_remote_span_context(sc.clone())),
            None => envelope::Envelope::remote_parent(&self.event.metadata),
        }
    }

    /// The event with this delivery's trace context written into its metadata as W3C
    /// `traceparent`/`tracestate`: the form it takes on the wire.
    pub fn into_event(self) -> Event {
        let mut event = self.event;
        if let Some(sc) = &self.trace {
            inject_span_context(&mut event.metadata, sc);
        }
        event
    }
}

/// Counters of the bus as a whole and per topic.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BusStats {
    pub published: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub subscribers: usize,
    pub topics: HashMap<String, TopicStats>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicStats {
    pub published: u64,
    /// Events queued for subscribers (one per matching subscriber).
    pub delivered: u64,
    /// Events a realtime subscriber lost because its queue was full.
    pub dropped: u64,
}

fn valid_chars(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_TOPIC_LEN
        && s.chars().all(|c| !c.is_whitespace() && !c.is_control())
}

/// Checks a topic an event is published to (no wildcards).
pub fn validate_topic(topic: &str) -> Result<(), BusError> {
    if valid_chars(topic) && !topic.contains('*') {
        Ok(())
    } else {
        Err(BusError::InvalidTopic(topic.to_owned()))
    }
}

/// Checks a subscription pattern (wildcards allowed).
pub fn validate_pattern(pattern: &str) -> Result<(), BusError> {
    Pattern::new(pattern).map(|_| ())
}

/// A subscription pattern: `*` matches any run of characters (dots included), so `sensor.*`
/// matches `sensor.data` and `sensor.a.b`, and `*` alone matches every topic.
#[derive(Debug, Clone)]
struct Pattern {
    raw: String,
    /// The pattern split at `*`; a single part means an exact topic.
    parts: Vec<String>,
}

impl Pattern {
    fn new(raw: &str) -> Result<Pattern, BusError> {
        if !valid_chars(raw) {
            return Err(BusError::InvalidPattern(raw.to_owned()));
        }
        Ok(Pattern {
            raw: raw.to_owned(),
            parts: raw.split('*').map(str::to_owned).collect(),
        })
    }

    fn matches(&self, topic: &str) -> bool {
        let parts = &self.parts;
        if parts.len() == 1 {
            return parts[0] == topic;
        }
        let (first, last) = (&parts[0], &parts[parts.len() - 1]);
        // `sensor.*` (empty last part) is the common form: skip the empty comparisons, which
        // showed up as a libc call on every delivery.
        if topic.len() < first.len() + last.len()
            || (!first.is_empty() && !topic.starts_with(first.as_str()))
            || (!last.is_empty() && !topic.ends_with(last.as_str()))
        {
            return false;
        }
        let mut rest = &topic[first.len()..topic.len() - last.len()];
        for mid in &parts[1..parts.len() - 1] {
            match rest.find(mid.as_str()) {
                Some(at) => rest = &rest[at + mid.len()..],
                None => return false,
            }
        }
        true
    }
}

/// Whether `topic` matches the subscription `pattern` (exact, `*`, or globs like `sensor.*`).
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    Pattern::new(pattern)
        .map(|p| p.matches(topic))
        .unwrap_or(false)
}

/// A subscriber's bounded queue. Not a tokio channel because realtime QoS must evict the oldest
/// entry, which mpsc cannot do.
struct Queue {
    state: Mutex<QueueState>,
    capacity: usize,
    items: Notify,
    space: Notify,
}

struct QueueState {
    buf: VecDeque<Delivery>,
    closed: bool,
}

impl Queue {
    fn new(capacity: usize) -> Queue {
        Queue {
            state: Mutex::new(QueueState {
                buf: VecDeque::with_capacity(capacity.min(1024)),
                closed: false,
            }),
            capacity,
            items: Notify::new(),
            space: Notify::new(),
        }
    }

    /// Realtime push: never waits; evicts the oldest delivery when full.
    fn push_evicting(&self, d: Delivery) -> Push {
        let outcome = {
            let mut st = self.state.lock();
            if st.closed {
                return Push::Closed;
            }
            let outcome = if st.buf.len() >= self.capacity && st.buf.pop_front().is_some() {
                Push::EvictedOldest
            } else {
                Push::Queued
            };
            st.buf.push_back(d);
            outcome
        };
        self.items.notify_one();
        outcome
    }

    /// Reliable push: waits for room (backpressure).
    async fn push_waiting(&self, d: Delivery) -> Push {
        let mut d = Some(d);
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            // Register interest before checking, so a pop between check and await is not missed.
            notified.as_mut().enable();
            {
                let mut st = self.state.lock();
                if st.closed {
                    return Push::Closed;
                }
                if st.buf.len() < self.capacity {
                    if let Some(d) = d.take() {
                        st.buf.push_back(d);
                    }
                    drop(st);
                    self.items.notify_one();
                    return Push::Queued;
                }
            }
            notified.await;
        }
    }

    async fn pop(&self) -> Option<Delivery> {
        loop {
            let notified = self.items.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut st = self.state.lock();
                if let Some(d) = st.buf.pop_front() {
                    drop(st);
                    self.space.notify_one();
                    return Some(d);
                }
                if st.closed {
                    return None;
                }
            }
            notified.await;
        }
    }

    fn try_pop(&self) -> Option<Delivery> {
        let d = self.state.lock().buf.pop_front();
        if d.is_some() {
            self.space.notify_one();
        }
        d
    }

    fn close(&self) {
        self.state.lock().closed = true;
        self.items.notify_waiters();
        self.space.notify_waiters();
    }

    fn len(&self) -> usize {
        self.state.lock().buf.len()
    }
}

enum Push {
    Queued,
    EvictedOldest,
    /// The subscriber went away; the delivery is discarded.
    Closed,
}

struct Subscriber {
    id: u64,
    // Shared with flow records, which name their receivers on every publish.
    name: Arc<str>,
    pattern: Pattern,
    qos: QoS,
    queue: Queue,
    dropped: AtomicU64,
}

struct Inner {
    config: BusConfig,
    // Copy-on-write: publishers clone the Arc and never block subscribe/unsubscribe for long.
    subscribers: RwLock<Arc<Vec<Arc<Subscriber>>>>,
    next_id: AtomicU64,
    closed: AtomicBool,
    published: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    topics: Mutex<HashMap<String, TopicStats>>,
    flow: FlowTracker,
}

impl Inner {
    fn remove(&self, id: u64) {
        let mut subs = self.subscribers.write();
        if subs.iter().any(|s| s.id == id) {
            let kept: Vec<_> = subs.iter().filter(|s| s.id != id).cloned().collect();
            *subs = Arc::new(kept);
        }
    }

    fn count_topic(&self, topic: &str, f: impl FnOnce(&mut TopicStats)) {
        let mut topics = self.topics.lock();
        match topics.get_mut(topic) {
            Some(t) => f(t),
            None => f(topics.entry(topic.to_owned()).or_default()),
        }
    }
}

/// A subscriber's end of the bus; dropping it unsubscribes.
pub struct Subscription {
    sub: Arc<Subscriber>,
    bus: Weak<Inner>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.sub.id)
            .field("name", &self.sub.name)
            .field("pattern", &self.sub.pattern.raw)
            .finish()
    }
}

impl Subscription {
    pub fn id(&self) -> u64 {
        self.sub.id
    }

    /// The subscriber's name (its agent id for the bridge), used in flow records.
    pub fn name(&self) -> &str {
        &self.sub.name
    }

    pub fn pattern(&self) -> &str {
        &self.sub.pattern.raw
    }

    pub fn qos(&self) -> QoS {
        self.sub.qos
    }

    /// The next delivery; `None` once the bus is closed and the queue is drained.
    pub async fn recv(&mut self) -> Option<Delivery> {
        self.sub.queue.pop().await
    }

    /// A delivery if one is queued right now.
    pub fn try_recv(&mut self) -> Option<Delivery> {
        self.sub.queue.try_pop()
    }

    /// Events this subscriber lost to drop-oldest.
    pub fn dropped(&self) -> u64 {
        self.sub.dropped.load(Ordering::Relaxed)
    }

    /// Deliveries waiting in the queue.
    pub fn queued(&self) -> usize {
        self.sub.queue.len()
    }

    /// A read-only view of this subscription's counters that outlives borrows of it.
    pub fn monitor(&self) -> SubscriptionMonitor {
        SubscriptionMonitor {
            sub: self.sub.clone(),
        }
    }
}

/// Live counters of one subscription (for stats pages), without the right to receive.
#[derive(Clone)]
pub struct SubscriptionMonitor {
    sub: Arc<Subscriber>,
}

impl SubscriptionMonitor {
    pub fn pattern(&self) -> &str {
        &self.sub.pattern.raw
    }

    pub fn dropped(&self) -> u64 {
        self.sub.dropped.load(Ordering::Relaxed)
    }

    pub fn queued(&self) -> usize {
        self.sub.queue.len()
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.sub.queue.close();
        if let Some(bus) = self.bus.upgrade() {
            bus.remove(self.sub.id);
        }
    }
}

/// Cheap to clone: all clones are one bus.
#[derive(Clone)]
pub struct EventBus {
    inner: Arc<Inner>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(BusConfig::default())
    }
}

impl std::fmt::Debug for EventBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBus")
            .field("subscribers", &self.inner.subscribers.read().len())
            .finish()
    }
}

fn now_unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
        .unwrap_or(0)
}

impl EventBus {
    pub fn new(config: BusConfig) -> EventBus {
        let flow = FlowTracker::new(config.flow_capacity);
        EventBus {
            inner: Arc::new(Inner {
                config,
                subscribers: RwLock::new(Arc::new(Vec::new())),
                next_id: AtomicU64::new(1),
                closed: AtomicBool::new(false),
                published: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                topics: Mutex::new(HashMap::new()),
                flow,
            }),
        }
    }

    pub fn subscribe(&self, pattern: &str, qos: QoS) -> Result<Subscription, BusError> {
        self.subscribe_as("", pattern, qos, self.inner.config.queue_capacity)
    }

    pub fn subscribe_with_capacity(
        &self,
        pattern: &str,
        qos: QoS,
        capacity: usize,
    ) -> Result<Subscription, BusError> {
        self.subscribe_as("", pattern, qos, capacity)
    }

    /// Subscribes under a name (shown in flow records and stats); an empty name becomes `sub-{id}`.
    pub fn subscribe_as(
        &self,
        name: &str,
        pattern: &str,
        qos: QoS,
        capacity: usize,
    ) -> Result<Subscription, BusError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        if capacity == 0 {
            return Err(BusError::InvalidCapacity);
        }
        let pattern = Pattern::new(pattern)?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        let sub = Arc::new(Subscriber {
            id,
            name: if name.is_empty() {
                Arc::from(format!("sub-{id}"))
            } else {
                Arc::from(name)
            },
            pattern,
            qos: match qos {
                QoS::Unspecified => QoS::Realtime,
                q => q,
            },
            queue: Queue::new(capacity),
            dropped: AtomicU64::new(0),
        });
        {
            let mut subs = self.inner.subscribers.write();
            let mut next: Vec<_> = subs.iter().cloned().collect();
            next.push(sub.clone());
            *subs = Arc::new(next);
        }
        Ok(Subscription {
            sub,
            bus: Arc::downgrade(&self.inner),
        })
    }

    /// Publishes `event` to `topic` inside an `event_bus.publish` PRODUCER span (a child of the
    /// current span). Stamps the event's topic, id (a UUID when empty) and timestamp, hands the
    /// span's trace context to every delivery (and rewrites a `traceparent` the event carries),
    /// and queues it for every matching subscriber. Returns how many subscribers it was queued
    /// for.
    pub fn publish(
        &self,
        topic: &str,
        event: Event,
    ) -> impl Future<Output = Result<usize, BusError>> + Send + 'static {
        self.publish_under(topic, event, None)
    }

    /// [`publish`](Self::publish) with the span's parent given, for callers whose own span is
    /// not a `tracing` span (the bridge starts `bridge.publish` straight on the tracer).
    pub fn publish_with_parent(
        &self,
        parent: &opentelemetry::Context,
        topic: &str,
        event: Event,
    ) -> impl Future<Output = Result<usize, BusError>> + Send + 'static {
        self.publish_under(topic, event, Some(parent))
    }

    fn publish_under(
        &self,
        topic: &str,
        mut event: Event,
        parent: Option<&opentelemetry::Context>,
    ) -> impl Future<Output = Result<usize, BusError>> + Send + 'static {
        let prepared = validate_topic(topic).and_then(|()| {
            if self.inner.closed.load(Ordering::Acquire) {
                Err(BusError::Closed)
            } else {
                Ok(())
            }
        });
        let inner = self.inner.clone();
        let topic = topic.to_owned();
        let (span, sender) = match &prepared {
            Ok(()) => {
                if event.id.is_empty() {
                    event.id = uuid::Uuid::new_v4().to_string();
                }
                event.topic.clone_from(&topic);
                if event.timestamp_unix_nano == 0 {
                    event.timestamp_unix_nano = now_unix_nanos();
                }
                // Read before the trace context goes in: a bare event's map is still empty
                // then, and a lookup in an empty map hashes nothing.
                let sender = inner
                    .flow
                    .enabled()
                    .then(|| event.metadata.get(envelope::SENDER))
                    .flatten()
                    .filter(|s| !s.is_empty())
                    .cloned();
                (start_publish_span(&topic, &mut event, parent), sender)
            }
            Err(_) => (None, None),
        };
        async move {
            prepared?;
            let trace = span.as_ref().map(|s| s.span_context().clone());
            let out = deliver(&inner, topic, event, sender, trace).await;
            // Dropping the span ends it, after delivery (or when the publish is abandoned).
            drop(span);
            out
        }
    }

    /// Closes the bus: further publishes fail, subscribers drain their queues and then end.
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        for s in self.inner.subscribers.read().iter() {
            s.queue.close();
        }
    }

    pub fn stats(&self) -> BusStats {
        BusStats {
            published: self.inner.published.load(Ordering::Relaxed),
            delivered: self.inner.delivered.load(Ordering::Relaxed),
            dropped: self.inner.dropped.load(Ordering::Relaxed),
            subscribers: self.inner.subscribers.read().len(),
            topics: self.inner.topics.lock().clone(),
        }
    }

    pub fn flow(&self) -> &FlowTracker {
        &self.inner.flow
    }
}

/// Starts the `event_bus.publish` PRODUCER span (child of `parent`, else of the current span)
/// on the installed tracer and refreshes a `traceparent` the event carries. The sampler decides
/// before any attribute is built, so an unsampled publish costs ids and a decision.
/// `None` when tracing is off or the context is invalid (the event's metadata, and so any
/// context it arrived with, is left as it is).
fn start_publish_span(
    topic: &str,
    event: &mut Event,
    parent: Option<&opentelemetry::Context>,
) -> Option<LoomSpan> {
    use opentelemetry::trace::SpanKind;
    let mut span = crate::telemetry::start_span("event_bus.publish", SpanKind::Producer, parent)?;
    if !span.span_context().is_valid() {
        return None;
    }
    refresh_span_context(&mut event.metadata, span.span_context());
    span.set_event_attributes(topic, event, None, "send");
    Some(span)
}

async fn deliver(
    inner: &Arc<Inner>,
    topic: String,
    event: Event,
    sender: Option<String>,
    mut trace: Option<SpanContext>,
) -> Result<usize, BusError> {
    let subs = inner.subscribers.read().clone();
    let matching: Vec<&Arc<Subscriber>> =
        subs.iter().filter(|s| s.pattern.matches(&topic)).collect();
    inner.published.fetch_add(1, Ordering::Relaxed);

    if inner.flow.enabled() {
        let entry = FlowEntry {
            event_id: event.id.clone(),
            topic: topic.clone(),
            sender,
            receivers: matching.iter().map(|s| s.name.clone()).collect(),
            published_at: SystemTime::now(),
            trace_id: trace
                .as_ref()
                .map(|sc| sc.trace_id().to_bytes())
                .or_else(|| {
                    event
                        .metadata
                        .get(envelope::TRACEPARENT)
                        .and_then(|tp| envelope::parse_traceparent(tp))
                        .map(|tp| tp.trace_id)
                }),
        };
        inner.flow.tap(&entry, &event);
        inner.flow.push(entry);
    }

    let mut queued = 0usize;
    let mut dropped = 0u64;
    let last = matching.len().saturating_sub(1);
    let mut event = Some(event);
    for (i, sub) in matching.iter().enumerate() {
        // The last subscriber takes the event itself: one clone fewer on the common 1:1 path.
        let (ev, trace) = if i == last {
            (
                event
                    .take()
                    .expect("event moved only at the last subscriber"),
                trace.take(),
            )
        } else {
            (
                event
                    .clone()
                    .expect("event present before the last subscriber"),
                trace.clone(),
            )
        };
        let d = Delivery {
            topic: topic.clone(),
            event: ev,
            trace,
        };
        let outcome = match sub.qos {
            QoS::Reliable => sub.queue.push_waiting(d).await,
            _ => sub.queue.push_evicting(d),
        };
        match outcome {
            Push::Queued => queued += 1,
            Push::EvictedOldest => {
                sub.dropped.fetch_add(1, Ordering::Relaxed);
                dropped += 1;
                queued += 1;
            }
            Push::Closed => {}
        }
    }
    inner.delivered.fetch_add(queued as u64, Ordering::Relaxed);
    if dropped > 0 {
        inner.dropped.fetch_add(dropped, Ordering::Relaxed);
        tracing::debug!(topic = %topic, dropped, "realtime subscriber queue full: dropped oldest");
    }
    inner.count_topic(&topic, |t| {
        t.published += 1;
        t.delivered += queued as u64;
        t.dropped += dropped;
    });
    Ok(queued)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_matching() {
        for (p, t, want) in [
            ("sensor.data", "sensor.data", true),
            ("sensor.data", "sensor.data2", false),
            ("sensor.*", "sensor.data", true),
            ("sensor.*", "sensor.a.b", true),
            ("sensor.*", "sensor", false),
            ("sensor.*", "processed.data", false),
            ("*", "anything.at.all", true),
            ("*.data", "sensor.data", true),
            ("*.data", "sensor.datum", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "acb", false),
            ("a*a", "a", false),
        ] {
            assert_eq!(topic_matches(p, t), want, "{p} vs {t}");
        }
    }

    #[test]
    fn topic_validation() {
        assert!(validate_topic("sensor.data").is_ok());
        for bad in [
            "",
            "a b",
            "sensor.*",
            "tab\t",
            &"x".repeat(MAX_TOPIC_LEN + 1),
        ] {
            assert!(
                matches!(validate_topic(bad), Err(BusError::InvalidTopic(_))),
                "{bad:?}"
            );
        }
        assert!(matches!(Pattern::new(""), Err(BusError::InvalidPattern(_))));
    }
}
