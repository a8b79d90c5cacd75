//! The bridge's state handle: bus, broker, agent registry, config, counters, shutdown and reaper.
//!
//! [`Bridge`] is what Rust code holds (cheap to clone); the gRPC service in [`crate::service`]
//! works on the same [`Shared`] state. Removing an agent is split in two: the registry takes the
//! entry out of its map ([`crate::registry::Registry::remove`]), then [`Shared::teardown`]
//! releases what the agent held outside it (capabilities, stream, waiting callers).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use loom_core::action_broker::{ActionBroker, BrokerConfig};
use loom_core::event_bus::{BusConfig, EventBus};
use loom_core::proto::bridge_server::BridgeServer;
use parking_lot::Mutex;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::auth::{Auth, LogThrottle};
use crate::config::BridgeConfig;
use crate::registry::{AgentEntry, AgentInfo, Registry};
use crate::service::BridgeService;

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
    /// Requests and publishes refused by a limit (RESOURCE_EXHAUSTED naming it).
    pub limit_refused: AtomicU64,
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
    /// Requests refused for a missing or unknown bearer token.
    pub unauthenticated: u64,
    /// Requests and publishes a token's rules did not allow.
    pub permission_denied: u64,
    /// Requests and publishes refused by a limit (agents, subscriptions, capabilities, action
    /// calls in flight, publish rate).
    pub limit_refused: u64,
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
    /// ForwardAction calls in flight per caller id; an id leaves the map when its count is 0,
    /// so it holds at most one entry per call in flight.
    pub calls_in_flight: Mutex<HashMap<String, usize>>,
    /// Limit refusals are logged at most once a second.
    pub log_limits: LogThrottle,
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
                bus,
                broker,
                registry: Registry::new(config.limits.max_agents),
                counters: BridgeCounters::default(),
                shutdown: CancellationToken::new(),
                calls_in_flight: Mutex::new(HashMap::new()),
                log_limits: LogThrottle::default(),
                config,
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
        BridgeServer::new(BridgeService::new(self.shared.clone()))
            .max_decoding_message_size(self.shared.config.max_message_bytes())
            .max_encoding_message_size(self.shared.config.max_message_bytes())
    }

    /// A snapshot of every registered agent with its counters, sorted by agent id.
    pub fn agents(&self) -> Vec<AgentInfo> {
        self.shared.registry.snapshot()
    }

    pub fn stats(&self) -> BridgeStats {
        let c = &self.shared.counters;
        let bus = self.shared.bus.stats();
        let auth = self.shared.config.auth.as_deref();
        BridgeStats {
            agents: self.shared.registry.len(),
            registered: c.registered.load(Ordering::Relaxed),
            deregistered: c.deregistered.load(Ordering::Relaxed),
            expired: c.expired.load(Ordering::Relaxed),
            published: c.published.load(Ordering::Relaxed),
            publish_rejected: c.publish_rejected.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            dropped: bus.dropped,
            actions_forwarded: c.actions_forwarded.load(Ordering::Relaxed),
            unauthenticated: auth.map_or(0, Auth::unauthenticated_count),
            permission_denied: auth.map_or(0, Auth::denied_count),
            limit_refused: c.limit_refused.load(Ordering::Relaxed),
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
        for entry in self.shared.registry.remove_all() {
            self.shared
                .teardown(entry, Status::unavailable("loom-bridge is shutting down"));
        }
        self.shared.shutdown.cancel();
    }

    /// Deregisters agents whose last heartbeat (or stream message) is older than the timeout.
    /// Returns the ids removed.
    pub fn expire_stale(&self) -> Vec<String> {
        let timeout = self.shared.config.heartbeat_timeout;
        let mut removed = Vec::new();
        for entry in self.shared.registry.expire_stale(timeout) {
            let id = entry.agent_id.clone();
            let reason = Status::failed_precondition(format!(
                "agent {id} missed heartbeats for {} ms and was deregistered; register again",
                timeout.as_millis()
            ));
            self.shared.teardown(entry, reason);
            self.shared.counters.expired.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(agent.id = %id, "agent missed heartbeats: deregistered");
            removed.push(id);
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
    /// Counts and logs a limit refusal; the status goes back to the agent as it is.
    pub fn limit_refused(&self, agent_id: &str, status: Status) -> Status {
        self.counters.limit_refused.fetch_add(1, Ordering::Relaxed);
        if let Some(skipped) = self.log_limits.admit() {
            tracing::warn!(agent.id = %agent_id, unlogged_before = skipped, "refused: {}", status.message());
        }
        status
    }

    /// Removes an agent (if `session` matches, when given) and tears it down with `reason` as
    /// its stream's final status. Returns whether anything was removed.
    pub fn deregister(&self, agent_id: &str, session: Option<&str>, reason: Status) -> bool {
        match self.registry.remove(agent_id, session) {
            Some(entry) => {
                self.teardown(entry, reason);
                true
            }
            None => false,
        }
    }

    /// Releases what a removed agent held: its capabilities, its stream (which gets `reason` as
    /// its final status) and the callers waiting on its answers.
    pub fn teardown(&self, entry: AgentEntry, reason: Status) {
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
        tracing::info!(agent.id = %entry.agent_id, "agent deregistered");
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use loom_core::event_bus::QoS;
    use loom_core::proto::bridge_server::Bridge as _;
    use loom_core::proto::{Event, HeartbeatRequest, RegisterAgentRequest};
    use tonic::{Code, Request};

    use super::*;

    async fn register(svc: &BridgeService, id: &str) -> Result<String, Status> {
        let req = RegisterAgentRequest {
            agent_id: id.into(),
            capabilities: vec![format!("{id}.cap")],
            ..RegisterAgentRequest::default()
        };
        Ok(svc
            .register_agent(Request::new(req))
            .await?
            .into_inner()
            .session_id)
    }

    fn event(id: &str) -> Event {
        Event {
            id: id.into(),
            ..Event::default()
        }
    }

    #[tokio::test]
    async fn stats_add_up_registry_counters_and_the_bus() {
        let bridge = Bridge::new(BridgeConfig {
            heartbeat_timeout: Duration::from_millis(30),
            ..BridgeConfig::default()
        });
        let svc = BridgeService::new(bridge.shared.clone());
        register(&svc, "a").await.unwrap();
        let b_session = register(&svc, "b").await.unwrap();
        let dup = register(&svc, "a").await.unwrap_err();
        assert_eq!(dup.code(), Code::AlreadyExists);

        let s = bridge.stats();
        assert_eq!((s.agents, s.registered, s.deregistered), (2, 2, 0));
        assert_eq!(bridge.broker().capabilities(), ["a.cap", "b.cap"]);

        // One subscriber that keeps up, one realtime queue of 1 that never reads.
        let mut fast = bridge.bus().subscribe("sensor.*", QoS::Realtime).unwrap();
        let _slow = bridge
            .bus()
            .subscribe_with_capacity("slow.*", QoS::Realtime, 1)
            .unwrap();
        for (topic, payload) in [
            ("sensor.data", "s0"),
            ("sensor.data", "s1"),
            ("slow.data", "w0"),
            ("slow.data", "w1"),
            ("slow.data", "w2"),
        ] {
            bridge.bus().publish(topic, event(payload)).await.unwrap();
        }
        for _ in 0..2 {
            assert!(fast.recv().await.is_some());
        }
        let s = bridge.stats();
        assert_eq!((s.bus_published, s.bus_delivered, s.dropped), (5, 5, 2));
        let t = &s.topics["sensor.data"];
        assert_eq!((t.published, t.delivered, t.dropped), (2, 2, 0));
        let t = &s.topics["slow.data"];
        assert_eq!((t.published, t.delivered, t.dropped), (3, 3, 2));

        // "a" goes quiet, "b" heartbeats: only "a" expires, and its capability goes with it.
        tokio::time::sleep(Duration::from_millis(60)).await;
        svc.heartbeat(Request::new(HeartbeatRequest {
            agent_id: "b".into(),
            session_id: b_session,
        }))
        .await
        .unwrap();
        assert_eq!(bridge.expire_stale(), vec!["a".to_owned()]);
        assert_eq!(bridge.broker().capabilities(), ["b.cap"]);
        let s = bridge.stats();
        assert_eq!((s.agents, s.expired, s.deregistered), (1, 1, 1));
        assert_eq!(bridge.agents()[0].agent_id, "b");

        bridge.shutdown();
        let s = bridge.stats();
        assert_eq!(
            (s.agents, s.registered, s.expired, s.deregistered),
            (0, 2, 1, 2)
        );
    }
}
