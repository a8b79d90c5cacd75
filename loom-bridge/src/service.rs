//! The `loom.v1.Bridge` gRPC service: registration, event streams, action forwarding, liveness.
//!
//! Trace context crosses the process boundary here. An inbound publish runs in `bridge.publish`
//! (SERVER, parent = the agent's span from `traceparent`), the EventBus nests
//! `event_bus.publish` under it, and each delivery to an agent runs in `bridge.forward` (CLIENT,
//! parent = the delivery's context) whose own context goes into the outgoing event's metadata.
//! Both are started straight on the tracer (`telemetry::start_span`), sampled before anything
//! else is built.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use futures::Stream;
use loom_core::action_broker::{ActionBroker, ActionProvider, BoxFuture, BrokerConfig};
use loom_core::envelope::{self, Envelope};
use loom_core::event_bus::{self, BusConfig, Delivery, EventBus, QoS};
use loom_core::proto::bridge_server::{Bridge as BridgeRpc, BridgeServer};
use loom_core::proto::client_message::Msg as ClientMsg;
use loom_core::proto::server_message::Msg as ServerMsg;
use loom_core::proto::{
    ActionCall, ActionResult, ActionStatus, ClientMessage, HeartbeatRequest, HeartbeatResponse,
    Publish, PublishAck, RegisterAgentRequest, RegisterAgentResponse, ServerMessage,
};
use loom_core::telemetry::LoomSpan;
use opentelemetry::trace::SpanKind;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::field::Empty;
use tracing::Instrument;

use crate::config::BridgeConfig;
use crate::registry::{AgentCounters, AgentEntry, AgentInfo, Registry, StreamHandle};

/// Longest agent id accepted.
pub const MAX_AGENT_ID_LEN: usize = 128;

/// Bridge-wide counters.
#[derive(Debug, Default)]
pub struct BridgeCounters {
    pub registered: AtomicU64,
    pub deregistered: AtomicU64,
    pub expired: AtomicU64,
    pub published: AtomicU64,
    pub publish_rejected: AtomicU64,
    pub delivered: AtomicU64,
    pub actions_forwarded: AtomicU64,
}

/// What `/api/stats` shows.
#[derive(Debug, Clone, Serialize)]
pub struct BridgeStats {
    pub agents: usize,
    pub registered: u64,
    pub deregistered: u64,
    pub expired: u64,
    pub published: u64,
    pub publish_rejected: u64,
    pub delivered: u64,
    /// Deliveries lost to drop-oldest in realtime subscription queues (all agents).
    pub dropped: u64,
    pub actions_forwarded: u64,
    pub bus_published: u64,
    pub bus_delivered: u64,
    pub topics: HashMap<String, TopicCount>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopicCount {
    pub published: u64,
    pub delivered: u64,
    pub dropped: u64,
}

pub(crate) struct Shared {
    pub config: BridgeConfig,
    pub bus: EventBus,
    pub broker: ActionBroker,
    pub registry: Registry,
    pub counters: BridgeCounters,
    pub shutdown: CancellationToken,
}

/// The bridge: an EventBus + ActionBroker with remote agents attached. Cheap to clone.
#[derive(Clone)]
pub struct Bridge {
    pub(crate) shared: Arc<Shared>,
}

impl Bridge {
    pub fn new(config: BridgeConfig) -> Bridge {
        let bus = EventBus::new(BusConfig {
            queue_capacity: config.subscription_queue,
            ..BusConfig::default()
        });
        let broker = ActionBroker::new(BrokerConfig {
            default_timeout: config.default_action_timeout,
            ..BrokerConfig::default()
        });
        Bridge::with_parts(config, bus, broker)
    }

    /// A bridge over an existing bus and broker, so Rust code in the same process shares them.
    pub fn with_parts(config: BridgeConfig, bus: EventBus, broker: ActionBroker) -> Bridge {
        Bridge {
            shared: Arc::new(Shared {
                config,
                bus,
                broker,
                registry: Registry::default(),
                counters: BridgeCounters::default(),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    pub fn bus(&self) -> &EventBus {
        &self.shared.bus
    }

    pub fn broker(&self) -> &ActionBroker {
        &self.shared.broker
    }

    pub fn config(&self) -> &BridgeConfig {
        &self.shared.config
    }

    /// The tonic service, with the message size limit derived from the payload limit.
    pub fn service(&self) -> BridgeServer<BridgeService> {
        BridgeServer::new(BridgeService {
            shared: self.shared.clone(),
        })
        .max_decoding_message_size(self.shared.config.max_message_bytes())
        .max_encoding_message_size(self.shared.config.max_message_bytes())
    }

    pub fn agents(&self) -> Vec<AgentInfo> {
        self.shared.registry.info()
    }

    pub fn stats(&self) -> BridgeStats {
        let c = &self.shared.counters;
        let bus = self.shared.bus.stats();
        BridgeStats {
            agents: self.shared.registry.agents.lock().len(),
            registered: c.registered.load(Ordering::Relaxed),
            deregistered: c.deregistered.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
            published: c.published.load(Ordering::Relaxed),
            publish_rejected: c.publish_rejected.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            dropped: bus.dropped,
            actions_forwarded: c.actions_forwarded.load(Ordering::Relaxed),
            bus_published: bus.published,
            bus_delivered: bus.delivered,
            topics: bus
                .topics
                .into_iter()
                .map(|(k, t)| {
                    (
                        k,
                        TopicCount {
                            published: t.published,
                            delivered: t.delivered,
                            dropped: t.dropped,
                        },
                    )
                })
                .collect(),
        }
    }

    /// Closes every agent stream (with UNAVAILABLE, so agents reconnect elsewhere or later).
    pub fn shutdown(&self) {
        let ids: Vec<String> = self.shared.registry.agents.lock().keys().cloned().collect();
        for id in ids {
            self.shared.deregister(
                &id,
                None,
                Status::unavailable("loom-bridge is shutting down"),
            );
        }
        self.shared.shutdown.cancel();
    }

    /// Deregisters agents whose last heartbeat (or stream message) is older than the timeout.
    /// Returns the ids removed.
    pub fn expire_stale(&self) -> Vec<String> {
        let timeout = self.shared.config.heartbeat_timeout;
        let stale: Vec<(String, String)> = self
            .shared
            .registry
            .agents
            .lock()
            .values()
            .filter(|a| a.last_seen.elapsed() > timeout)
            .map(|a| (a.agent_id.clone(), a.session_id.clone()))
            .collect();
        let mut removed = Vec::new();
        for (id, session) in stale {
            let reason = Status::failed_precondition(format!(
                "agent {id} missed heartbeats for {} ms and was deregistered; register again",
                timeout.as_millis()
            ));
            if self.shared.deregister(&id, Some(&session), reason) {
                self.shared.counters.expired.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(agent.id = %id, "agent missed heartbeats: deregistered");
                removed.push(id);
            }
        }
        removed
    }

    /// Runs [`Bridge::expire_stale`] periodically until shutdown.
    pub async fn run_reaper(self) {
        let period =
            (self.shared.config.heartbeat_timeout / 4).max(std::time::Duration::from_millis(20));
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.shared.shutdown.cancelled() => return,
                _ = tick.tick() => { self.expire_stale(); }
            }
        }
    }
}

impl Shared {
    /// Removes an agent (if `session` matches, when given): capabilities, subscriptions, stream.
    /// The stream gets `reason` as its final status. Returns whether anything was removed.
    fn deregister(&self, agent_id: &str, session: Option<&str>, reason: Status) -> bool {
        let entry = {
            let mut agents = self.registry.agents.lock();
            match agents.get(agent_id) {
                Some(a) if session.is_none_or(|s| s == a.session_id) => agents.remove(agent_id),
                _ => None,
            }
        };
        let Some(entry) = entry else { return false };
        for cap in &entry.capabilities {
            self.broker.unregister(cap);
        }
        if let Some(stream) = &entry.stream {
            // Best effort: a full queue means the agent is not reading anyway.
            let _ = stream.outbound.try_send(Err(reason));
            stream.cancel.cancel();
            // Dropping the senders fails the callers waiting on this agent at once.
            stream.pending.lock().clear();
        }
        self.counters.deregistered.fetch_add(1, Ordering::Relaxed);
        tracing::info!(agent.id = %agent_id, "agent deregistered");
        true
    }
}

fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.chars().all(|c| !c.is_whitespace() && !c.is_control())
}

fn now_unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
        .unwrap_or(0)
}

/// A capability served by a remote agent: the call goes down the agent's stream and the
/// agent's ActionResult comes back up it, matched by call id.
struct RemoteProvider {
    shared: Weak<Shared>,
    agent_id: String,
}

/// Removes a pending call when its invocation ends for any reason (answer, timeout, cancel).
struct PendingGuard {
    stream: Arc<StreamHandle>,
    call_id: String,
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.stream.pending.lock().remove(&self.call_id);
    }
}

impl ActionProvider for RemoteProvider {
    fn invoke(&self, call: ActionCall) -> BoxFuture<Result<Vec<u8>, String>> {
        let shared = self.shared.clone();
        let agent_id = self.agent_id.clone();
        Box::pin(async move {
            let shared = shared
                .upgrade()
                .ok_or_else(|| "loom-bridge is shutting down".to_owned())?;
            let stream = shared
                .registry
                .agents
                .lock()
                .get(&agent_id)
                .and_then(|a| a.stream.clone())
                .ok_or_else(|| {
                    format!("agent {agent_id} serving this capability is not connected")
                })?;
            let (tx, rx) = oneshot::channel();
            stream.pending.lock().insert(call.id.clone(), tx);
            let _guard = PendingGuard {
                stream: stream.clone(),
                call_id: call.id.clone(),
            };
            let msg = ServerMessage {
                msg: Some(ServerMsg::ActionCall(call)),
            };
            stream
                .outbound
                .send(Ok(msg))
                .await
                .map_err(|_| format!("agent {agent_id} stream closed"))?;
            let result = rx
                .await
                .map_err(|_| format!("agent {agent_id} disconnected before answering"))?;
            if result.status == ActionStatus::Ok as i32 {
                Ok(result.output)
            } else if result.error.is_empty() {
                Err(format!(
                    "agent {agent_id} answered with status {}",
                    result.status
                ))
            } else {
                Err(result.error)
            }
        })
    }
}

/// The tonic service implementation.
pub struct BridgeService {
    shared: Arc<Shared>,
}

type EventStreamOut = Pin<Box<dyn Stream<Item = Result<ServerMessage, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl BridgeRpc for BridgeService {
    async fn register_agent(
        &self,
        request: Request<RegisterAgentRequest>,
    ) -> Result<Response<RegisterAgentResponse>, Status> {
        let req = request.into_inner();
        let shared = &self.shared;
        if !valid_name(&req.agent_id, MAX_AGENT_ID_LEN) {
            return Err(Status::invalid_argument(format!(
                "agent_id {:?} must be 1..={MAX_AGENT_ID_LEN} printable characters without whitespace",
                req.agent_id
            )));
        }
        for s in &req.subscriptions {
            event_bus::validate_pattern(&s.pattern)
                .map_err(|e| Status::invalid_argument(format!("subscriptions: {e}")))?;
        }
        let mut caps = req.capabilities.clone();
        caps.sort();
        caps.dedup();
        for cap in &caps {
            if !valid_name(cap, event_bus::MAX_TOPIC_LEN) {
                return Err(Status::invalid_argument(format!(
                    "capability {cap:?} must be non-empty printable characters without whitespace"
                )));
            }
        }

        let session_id = uuid::Uuid::new_v4().to_string();
        let mut agents = shared.registry.agents.lock();
        if let Some(existing) = agents.get(&req.agent_id) {
            let live = existing.stream.is_some()
                || existing.last_seen.elapsed() <= shared.config.heartbeat_timeout;
            if live {
                return Err(Status::already_exists(format!(
                    "agent {} is already registered and live; pick another agent_id or stop the other instance",
                    req.agent_id
                )));
            }
        }
        if let Some(stale) = agents.remove(&req.agent_id) {
            for cap in &stale.capabilities {
                shared.broker.unregister(cap);
            }
        }
        let mut registered: Vec<String> = Vec::new();
        for cap in &caps {
            let provider = Arc::new(RemoteProvider {
                shared: Arc::downgrade(shared),
                agent_id: req.agent_id.clone(),
            });
            if let Err(e) = shared.broker.register(cap, provider) {
                for done in registered.iter() {
                    shared.broker.unregister(done);
                }
                return Err(Status::already_exists(format!(
                    "capabilities: {e} (served by another agent or a Rust provider)"
                )));
            }
            registered.push(cap.clone());
        }
        agents.insert(
            req.agent_id.clone(),
            AgentEntry {
                agent_id: req.agent_id.clone(),
                session_id: session_id.clone(),
                subscriptions: req.subscriptions,
                capabilities: caps,
                registered_at: SystemTime::now(),
                last_seen: Instant::now(),
                stream: None,
                counters: Arc::new(AgentCounters::default()),
            },
        );
        drop(agents);
        shared.counters.registered.fetch_add(1, Ordering::Relaxed);
        tracing::info!(agent.id = %req.agent_id, "agent registered");
        Ok(Response::new(RegisterAgentResponse {
            session_id,
            heartbeat_interval_ms: shared.config.heartbeat_interval.as_millis() as u64,
        }))
    }

    type EventStreamStream = EventStreamOut;

    async fn event_stream(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Self::EventStreamStream>, Status> {
        let shared = self.shared.clone();
        let mut inbound = request.into_inner();
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

        let (tx, rx) = mpsc::channel(shared.config.outbound_queue.max(1));
        let handle = Arc::new(StreamHandle {
            outbound: tx,
            cancel: shared.shutdown.child_token(),
            pending: parking_lot::Mutex::new(HashMap::new()),
            monitors: parking_lot::Mutex::new(Vec::new()),
        });
        let (subscriptions, counters) = {
            let mut agents = shared.registry.agents.lock();
            let entry = match agents.get_mut(&hello.agent_id) {
                Some(e) if e.session_id == hello.session_id => e,
                _ => {
                    return Err(Status::failed_precondition(format!(
                        "agent {:?} with this session is not registered (never, or expired): call RegisterAgent first",
                        hello.agent_id
                    )))
                }
            };
            if entry.stream.is_some() {
                return Err(Status::already_exists(format!(
                    "agent {} already has an open EventStream",
                    hello.agent_id
                )));
            }
            entry.stream = Some(handle.clone());
            entry.last_seen = Instant::now();
            (entry.subscriptions.clone(), entry.counters.clone())
        };

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
            hello.agent_id.clone(),
            hello.session_id.clone(),
            counters,
        ));
        tracing::info!(agent.id = %hello.agent_id, "agent stream open");
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn forward_action(
        &self,
        request: Request<ActionCall>,
    ) -> Result<Response<ActionResult>, Status> {
        let mut call = request.into_inner();
        let shared = &self.shared;
        if call.capability.is_empty() {
            return Err(Status::invalid_argument("capability is empty"));
        }
        if call.args.len() > shared.config.max_payload_bytes {
            return Err(Status::resource_exhausted(format!(
                "action args of {} bytes exceed the bridge limit of {} bytes",
                call.args.len(),
                shared.config.max_payload_bytes
            )));
        }
        if call.id.is_empty() {
            call.id = uuid::Uuid::new_v4().to_string();
        }
        let call_id = call.id.clone();
        let span = tracing::info_span!(
            "bridge.forward_action",
            otel.kind = "server",
            loom.capability = call.capability.as_str(),
            loom.call.id = call.id.as_str(),
            loom.agent.id = Empty,
        );
        if !call.caller.is_empty() {
            span.record("loom.agent.id", call.caller.as_str());
        }
        Envelope::from_metadata(&call.headers).set_parent_of(&span);
        shared
            .counters
            .actions_forwarded
            .fetch_add(1, Ordering::Relaxed);
        // invoke() opens action_broker.invoke when called, so call it inside our span.
        let invocation = {
            let _entered = span.enter();
            shared.broker.invoke(call)
        };
        let outcome = invocation.instrument(span).await;
        Ok(Response::new(match outcome {
            Ok(r) => r,
            Err(e) => e.to_result(&call_id),
        }))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let req = request.into_inner();
        if self.shared.registry.touch(&req.agent_id, &req.session_id) {
            Ok(Response::new(HeartbeatResponse {
                server_time_unix_nano: now_unix_nanos(),
            }))
        } else {
            Err(Status::not_found(format!(
                "agent {:?} with this session is not registered (expired or never registered): call RegisterAgent again",
                req.agent_id
            )))
        }
    }
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

/// Reads the agent's stream until it closes or the agent is deregistered, then deregisters it.
async fn inbound_loop(
    shared: Arc<Shared>,
    mut inbound: Streaming<ClientMessage>,
    handle: Arc<StreamHandle>,
    agent_id: String,
    session_id: String,
    counters: Arc<AgentCounters>,
) {
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
        shared.registry.touch(&agent_id, &session_id);
        match msg.msg {
            Some(ClientMsg::Publish(p)) => {
                let reply = tokio::select! {
                    _ = handle.cancel.cancelled() => break None,
                    r = on_publish(&shared, &agent_id, &counters, p) => r,
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
            &agent_id,
            Some(&session_id),
            Status::cancelled("stream closed"),
        );
    }
}

/// Validates and publishes one event; the reply tells the agent how it went.
async fn on_publish(
    shared: &Arc<Shared>,
    agent_id: &str,
    counters: &AgentCounters,
    p: Publish,
) -> ServerMessage {
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
    if let Some(span) = span.as_mut().filter(|s| s.is_recording()) {
        span.set_attributes(loom_core::telemetry::event_span_attributes(
            &topic,
            &event,
            Some(agent_id),
            "send",
        ));
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
        if span.is_recording() {
            span.set_attributes(loom_core::telemetry::event_span_attributes(
                &delivery.topic,
                &delivery.event,
                Some(agent_id),
                "receive",
            ));
        }
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
