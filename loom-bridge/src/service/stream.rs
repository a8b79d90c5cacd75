//! EventStream: the Hello handshake, the inbound loop (publishes, action results, acks) and one
//! forward loop per subscription moving the bus's deliveries to the agent.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use futures::Stream;
use loom_core::envelope::{self, Envelope};
use loom_core::event_bus::{self, Delivery, QoS};
use loom_core::proto::client_message::Msg as ClientMsg;
use loom_core::proto::server_message::Msg as ServerMsg;
use loom_core::proto::{ClientMessage, Publish, PublishAck, ServerMessage};
use loom_core::telemetry::LoomSpan;
use opentelemetry::trace::SpanKind;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming};

use crate::auth::{Action, Grant};
use crate::bridge::Shared;
use crate::registry::{AgentCounters, StreamHandle};

pub(crate) type EventStreamOut =
    Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send + 'static>>;

/// Opens an agent's EventStream: waits for its Hello, attaches the stream to its registration,
/// subscribes it to the bus and starts the loops. The returned stream is what the agent reads.
/// `token` is the stream's grant key ([`Grant::key`]): its rules apply to the Hello's agent id
/// and to every publish.
pub(super) async fn open(
    shared: Arc<Shared>,
    token: Option<usize>,
    mut inbound: Streaming<ClientMessage>,
) -> Result<EventStreamOut, Status> {
    let first = tokio::time::timeout(shared.config.hello_timeout, inbound.message())
        .await
        .map_err(|_| {
            Status::deadline_exceeded(format!(
                "no Hello within {} ms of opening EventStream",
                shared.config.hello_timeout.as_millis()
            ))
        })??;
    let hello = match first.and_then(|m| m.msg) {
        Some(ClientMsg::Hello(h)) => h,
        Some(_) => {
            return Err(Status::failed_precondition(
                "the first EventStream message must be Hello{agent_id, session_id} of a registered agent: call RegisterAgent, then send Hello before publishing",
            ))
        }
        None => {
            return Err(Status::failed_precondition(
                "EventStream closed or empty message before Hello",
            ))
        }
    };

    Grant::resume(shared.config.auth.as_deref(), token).check(Action::Agent, &hello.agent_id)?;

    let (tx, rx) = mpsc::channel(shared.config.outbound_queue.max(1));
    let handle = Arc::new(StreamHandle::new(tx, shared.shutdown.child_token()));
    let (subscriptions, counters) =
        shared
            .registry
            .attach_stream(&hello.agent_id, &hello.session_id, handle.clone())?;

    for s in subscriptions {
        let qos = QoS::try_from(s.qos).unwrap_or(QoS::Realtime);
        match shared.bus.subscribe_as(
            &hello.agent_id,
            &s.pattern,
            qos,
            shared.config.subscription_queue,
        ) {
            Ok(sub) => {
                handle.monitors.lock().push(sub.monitor());
                tokio::spawn(forward_loop(
                    shared.clone(),
                    sub,
                    handle.clone(),
                    hello.agent_id.clone(),
                    counters.clone(),
                ));
            }
            Err(e) => {
                shared.deregister(
                    &hello.agent_id,
                    Some(&hello.session_id),
                    Status::internal(""),
                );
                return Err(Status::invalid_argument(format!("subscriptions: {e}")));
            }
        }
    }
    tokio::spawn(inbound_loop(
        shared.clone(),
        inbound,
        handle.clone(),
        Sender {
            agent_id: hello.agent_id.clone(),
            token,
            counters,
        },
        hello.session_id.clone(),
    ));
    tracing::info!(agent.id = %hello.agent_id, "agent stream open");
    Ok(Box::pin(ReceiverStream::new(rx)))
}

fn ack(event_id: &str, code: Code, message: impl Into<String>) -> ServerMessage {
    ServerMessage {
        msg: Some(ServerMsg::PublishAck(PublishAck {
            event_id: event_id.to_owned(),
            code: code as i32,
            message: message.into(),
        })),
    }
}

/// Who publishes on a stream: the agent, its token (grant key) and its counters.
struct Sender {
    agent_id: String,
    token: Option<usize>,
    counters: Arc<AgentCounters>,
}

/// A token bucket: `rate` tokens a second up to `burst`. Lives in the stream's own task, so the
/// limit costs no shared state and ends with the stream.
struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// `None` when the rate is off (0).
    fn new(rate: f64, burst: u32) -> Option<Bucket> {
        let burst = f64::from(burst.max(1));
        (rate > 0.0).then(|| Bucket {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
        })
    }

    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.at = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// Reads the agent's stream until it closes or the agent is deregistered, then deregisters it.
async fn inbound_loop(
    shared: Arc<Shared>,
    mut inbound: Streaming<ClientMessage>,
    handle: Arc<StreamHandle>,
    sender: Sender,
    session_id: String,
) {
    let agent_id = sender.agent_id.as_str();
    let counters = &sender.counters;
    let limits = &shared.config.limits;
    let mut bucket = Bucket::new(limits.publish_rate, limits.publish_burst);
    let end = loop {
        let next = tokio::select! {
            _ = handle.cancel.cancelled() => break None,
            next = inbound.message() => next,
        };
        let msg = match next {
            Ok(Some(m)) => m,
            Ok(None) => break Some(Status::ok("stream closed by the agent")),
            Err(status) => break Some(status),
        };
        shared.registry.touch(agent_id, &session_id);
        match msg.msg {
            Some(ClientMsg::Publish(p)) => {
                let reply = if bucket.as_mut().is_some_and(|b| !b.take(Instant::now())) {
                    let id = p.event.as_ref().map_or("", |e| e.id.as_str());
                    let msg = format!(
                        "publish_rate: agent {agent_id} exceeds {} events/s (burst {})",
                        limits.publish_rate, limits.publish_burst
                    );
                    shared
                        .counters
                        .limit_refused
                        .fetch_add(1, Ordering::Relaxed);
                    reject(&shared, counters, id, Code::ResourceExhausted, msg)
                } else {
                    tokio::select! {
                        _ = handle.cancel.cancelled() => break None,
                        r = on_publish(&shared, &sender, p) => r,
                    }
                };
                let sent = tokio::select! {
                    _ = handle.cancel.cancelled() => break None,
                    r = handle.outbound.send(Ok(reply)) => r,
                };
                if sent.is_err() {
                    break Some(Status::cancelled("outbound stream closed"));
                }
            }
            Some(ClientMsg::ActionResult(r)) => {
                counters.actions_served.fetch_add(1, Ordering::Relaxed);
                let waiter = handle.pending.lock().remove(&r.call_id);
                match waiter {
                    Some(tx) => {
                        let _ = tx.send(r);
                    }
                    None => tracing::debug!(
                        agent.id = %agent_id,
                        call.id = %r.call_id,
                        "action result for an unknown or timed-out call"
                    ),
                }
            }
            Some(ClientMsg::Ack(_)) => {
                counters.acked.fetch_add(1, Ordering::Relaxed);
            }
            Some(ClientMsg::Hello(_)) => {
                tracing::debug!(agent.id = %agent_id, "repeated Hello ignored");
            }
            None => {}
        }
    };
    if let Some(status) = end {
        tracing::debug!(agent.id = %agent_id, code = ?status.code(), "agent stream ended: {}", status.message());
        shared.deregister(
            agent_id,
            Some(&session_id),
            Status::cancelled("stream closed"),
        );
    }
}

/// Validates and publishes one event; the reply tells the agent how it went.
async fn on_publish(shared: &Shared, sender: &Sender, p: Publish) -> ServerMessage {
    let (agent_id, counters) = (sender.agent_id.as_str(), &*sender.counters);
    let Some(mut event) = p.event else {
        return reject(
            shared,
            counters,
            "",
            Code::InvalidArgument,
            "publish carries no event",
        );
    };
    if event.id.is_empty() {
        event.id = uuid::Uuid::new_v4().to_string();
    }
    let id = event.id.clone();
    let topic = p.topic;
    if topic.is_empty() {
        return reject(
            shared,
            counters,
            &id,
            Code::InvalidArgument,
            "topic is empty",
        );
    }
    if let Err(e) = event_bus::validate_topic(&topic) {
        return reject(shared, counters, &id, Code::InvalidArgument, e.to_string());
    }
    if let Err(s) =
        Grant::resume(shared.config.auth.as_deref(), sender.token).check(Action::Publish, &topic)
    {
        return reject(shared, counters, &id, s.code(), s.message());
    }
    if event.payload.len() > shared.config.max_payload_bytes {
        let msg = format!(
            "payload of {} bytes exceeds the bridge limit of {} bytes",
            event.payload.len(),
            shared.config.max_payload_bytes
        );
        return reject(shared, counters, &id, Code::ResourceExhausted, msg);
    }
    // The stream's agent is the sender, whatever the event claims.
    event
        .metadata
        .insert(envelope::SENDER.to_owned(), agent_id.to_owned());

    // Started on the tracer, not as a `tracing` span: tracing-opentelemetry builds every field
    // of a span before its sampler runs, which cost more than the rest of the publish.
    let mut span = loom_core::telemetry::start_span(
        "bridge.publish",
        SpanKind::Server,
        Envelope::remote_parent(&event.metadata).as_ref(),
    );
    if let Some(span) = span.as_mut() {
        span.set_event_attributes(&topic, &event, Some(agent_id), "send");
    }
    // No span means tracing is off, for the bus too: the empty parent is then never read.
    let parent = span.as_ref().map(LoomSpan::as_parent).unwrap_or_default();
    let result = shared.bus.publish_with_parent(&parent, &topic, event).await;
    // Ends with the publish (queued for every subscriber), as the span covers.
    drop(span);
    match result {
        Ok(_) => {
            counters.published.fetch_add(1, Ordering::Relaxed);
            shared.counters.published.fetch_add(1, Ordering::Relaxed);
            ack(&id, Code::Ok, "")
        }
        Err(e) => reject(shared, counters, &id, Code::Unavailable, e.to_string()),
    }
}

fn reject(
    shared: &Shared,
    counters: &AgentCounters,
    id: &str,
    code: Code,
    message: impl Into<String>,
) -> ServerMessage {
    counters.publish_rejected.fetch_add(1, Ordering::Relaxed);
    shared
        .counters
        .publish_rejected
        .fetch_add(1, Ordering::Relaxed);
    let message = message.into();
    tracing::debug!(event.id = %id, ?code, "publish rejected: {message}");
    ack(id, code, message)
}

/// Moves one subscription's deliveries to the agent's stream, each in a `bridge.forward` span.
async fn forward_loop(
    shared: Arc<Shared>,
    mut sub: event_bus::Subscription,
    handle: Arc<StreamHandle>,
    agent_id: String,
    counters: Arc<AgentCounters>,
) {
    let mut dropped_seen = 0u64;
    let mut last_warn: Option<Instant> = None;
    loop {
        let next = tokio::select! {
            _ = handle.cancel.cancelled() => break,
            d = sub.recv() => d,
        };
        let Some(delivery) = next else { break };
        let dropped = sub.dropped();
        if dropped > dropped_seen {
            dropped_seen = dropped;
            // A persistently slow agent would log on every event: at most one line per 5 s.
            if last_warn.is_none_or(|t| t.elapsed() >= std::time::Duration::from_secs(5)) {
                last_warn = Some(Instant::now());
                tracing::warn!(
                    agent.id = %agent_id,
                    pattern = %sub.pattern(),
                    dropped_total = dropped,
                    "slow agent: realtime subscription queue full, oldest deliveries dropped"
                );
            }
        }
        let (span, msg) = forward_message(&agent_id, delivery);
        let sent = tokio::select! {
            _ = handle.cancel.cancelled() => break,
            r = handle.outbound.send(Ok(msg)) => r,
        };
        // bridge.forward covers the hand-off to the agent's outbound queue.
        drop(span);
        if sent.is_err() {
            break;
        }
        counters.delivered.fetch_add(1, Ordering::Relaxed);
        shared.counters.delivered.fetch_add(1, Ordering::Relaxed);
    }
}

/// Wraps a delivery for the agent: starts `bridge.forward` under the delivery's context and
/// writes that span's own context into the outgoing event, so the agent's span hangs below it.
/// The span is returned so it can cover the hand-off to the agent's outbound queue.
fn forward_message(agent_id: &str, mut delivery: Delivery) -> (Option<LoomSpan>, ServerMessage) {
    let mut span = loom_core::telemetry::start_span(
        "bridge.forward",
        SpanKind::Client,
        delivery.parent_context().as_ref(),
    );
    if let Some(span) = span.as_mut() {
        span.set_event_attributes(&delivery.topic, &delivery.event, Some(agent_id), "receive");
        if span.span_context().is_valid() {
            delivery.trace = Some(span.span_context().clone());
        }
    }
    let topic = std::mem::take(&mut delivery.topic);
    let msg = ServerMessage {
        msg: Some(ServerMsg::Delivery(loom_core::proto::Delivery {
            topic,
            // With tracing off everywhere the event's metadata goes out as it came.
            event: Some(delivery.into_event()),
        })),
    };
    (span, msg)
}

#[cfg(test)]
#[path = "../../tests/support/trace_capture.rs"]
mod trace_capture;

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use loom_core::envelope::{TRACEPARENT, TRACESTATE};
    use loom_core::proto::Event;
    use loom_core::telemetry::SamplerSpec;
    use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};

    use super::trace_capture::capture;
    use super::*;

    fn delivered_event(msg: ServerMessage) -> (String, Event) {
        match msg.msg {
            Some(ServerMsg::Delivery(d)) => (d.topic, d.event.expect("event")),
            other => panic!("expected a Delivery, got {other:?}"),
        }
    }

    #[test]
    fn forward_message_writes_its_own_span_below_the_deliverys_context() {
        let (exporter, provider, _guard) = capture(SamplerSpec::AlwaysOn);
        // The bus's publish span, as another tracer would have made it.
        let publish = provider.tracer("bus").start("event_bus.publish");
        let parent = publish.span_context().clone();
        let event = Event {
            id: "ev-1".into(),
            metadata: HashMap::from([(SENDER_KEY.to_owned(), "sensor".to_owned())]),
            ..Event::default()
        };
        let delivery = Delivery {
            topic: "sensor.data".into(),
            event,
            trace: Some(parent.clone()),
        };

        let (span, msg) = forward_message("processor", delivery);
        let forward = span.expect("tracing is on").span_context().clone();
        let (topic, out) = delivered_event(msg);
        assert_eq!(topic, "sensor.data");
        assert_eq!(out.metadata[SENDER_KEY], "sensor");
        let tp = loom_core::envelope::parse_traceparent(&out.metadata[TRACEPARENT])
            .expect("a valid traceparent");
        assert_eq!(tp.trace_id, parent.trace_id().to_bytes());
        // The agent's parent is bridge.forward itself, not the publish span.
        assert_eq!(tp.span_id, forward.span_id().to_bytes());
        assert_ne!(forward.span_id(), parent.span_id());

        provider.force_flush().expect("flush");
        let spans = exporter.get_finished_spans().expect("spans");
        let f = spans
            .iter()
            .find(|s| s.name == "bridge.forward")
            .expect("bridge.forward exported");
        assert_eq!(f.span_kind, SpanKind::Client);
        assert_eq!(f.parent_span_id, parent.span_id());
        assert_eq!(f.span_context.span_id(), forward.span_id());
        let attr = |k: &str| {
            f.attributes
                .iter()
                .find(|kv| kv.key.as_str() == k)
                .map(|kv| kv.value.as_str().into_owned())
        };
        assert_eq!(attr("loom.agent.id").as_deref(), Some("processor"));
        assert_eq!(attr("loom.topic").as_deref(), Some("sensor.data"));
        assert_eq!(attr("messaging.operation.type").as_deref(), Some("receive"));
        drop(publish);
    }

    const SENDER_KEY: &str = envelope::SENDER;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        assert!(Bucket::new(0.0, 10).is_none(), "rate 0 = off");
        let mut b = Bucket::new(10.0, 3).unwrap();
        let t0 = b.at;
        assert!((0..3).all(|_| b.take(t0)));
        assert!(!b.take(t0));
        // 10/s: one more after 100 ms, never more than the burst after a long pause.
        assert!(b.take(t0 + std::time::Duration::from_millis(100)));
        assert!(!b.take(t0 + std::time::Duration::from_millis(100)));
        let later = t0 + std::time::Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.take(later)).count(), 3);
    }

    #[test]
    fn with_tracing_off_forward_message_passes_metadata_through_unchanged() {
        // An agent's context, as the publisher sent it; the bus (tracing off) added none.
        let metadata = HashMap::from([
            (SENDER_KEY.to_owned(), "sensor".to_owned()),
            ("custom".to_owned(), "kept as is".to_owned()),
            (
                TRACEPARENT.to_owned(),
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
            ),
            (TRACESTATE.to_owned(), "vendor=1".to_owned()),
        ]);
        let event = Event {
            id: "ev-2".into(),
            payload: b"21.5".to_vec(),
            metadata,
            ..Event::default()
        };
        let delivery = Delivery {
            topic: "sensor.data".into(),
            event: event.clone(),
            trace: None,
        };

        let (span, msg) = forward_message("processor", delivery);
        assert!(span.is_none(), "no tracer installed: no span");
        let (topic, out) = delivered_event(msg);
        assert_eq!(topic, "sensor.data");
        assert_eq!(out, event);
    }
}
