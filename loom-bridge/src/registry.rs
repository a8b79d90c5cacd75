//! Agent registry: who is registered, their session, liveness, open stream and pending calls.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use loom_core::event_bus::SubscriptionMonitor;
use loom_core::proto::{ActionResult, ServerMessage, Subscription};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// The live half of an agent: its open EventStream.
pub(crate) struct StreamHandle {
    pub outbound: mpsc::Sender<Result<ServerMessage, tonic::Status>>,
    /// Cancelled when the agent is deregistered: the stream's tasks end and the stream closes.
    pub cancel: CancellationToken,
    /// Action calls sent to this agent, waiting for its ActionResult, by call id.
    pub pending: Mutex<HashMap<String, oneshot::Sender<ActionResult>>>,
    /// This stream's bus subscriptions, for live drop/queue counts.
    pub monitors: Mutex<Vec<SubscriptionMonitor>>,
}

pub(crate) struct AgentEntry {
    pub agent_id: String,
    pub session_id: String,
    pub subscriptions: Vec<Subscription>,
    pub capabilities: Vec<String>,
    pub registered_at: SystemTime,
    pub last_seen: Instant,
    pub stream: Option<Arc<StreamHandle>>,
    pub counters: Arc<AgentCounters>,
}

/// Per-agent counters, shared with the stream's tasks.
#[derive(Debug, Default)]
pub struct AgentCounters {
    pub published: AtomicU64,
    pub publish_rejected: AtomicU64,
    pub delivered: AtomicU64,
    pub acked: AtomicU64,
    pub actions_served: AtomicU64,
}

/// What the dashboard and logs show about an agent.
#[derive(Debug, Clone, Serialize)]
pub struct AgentInfo {
    pub agent_id: String,
    pub session_id: String,
    pub subscriptions: Vec<String>,
    pub capabilities: Vec<String>,
    pub connected: bool,
    pub registered_unix_ms: u128,
    pub idle_ms: u128,
    pub published: u64,
    pub publish_rejected: u64,
    pub delivered: u64,
    /// Deliveries lost to drop-oldest in this agent's realtime subscription queues.
    pub dropped: u64,
    /// Deliveries waiting in this agent's subscription queues.
    pub queued: u64,
    pub acked: u64,
    pub actions_served: u64,
}

#[derive(Default)]
pub(crate) struct Registry {
    pub agents: Mutex<HashMap<String, AgentEntry>>,
}

impl Registry {
    pub fn info(&self) -> Vec<AgentInfo> {
        let agents = self.agents.lock();
        let mut out: Vec<_> = agents
            .values()
            .map(|a| {
                let c = &a.counters;
                let (dropped, queued) = a
                    .stream
                    .as_ref()
                    .map(|s| {
                        s.monitors
                            .lock()
                            .iter()
                            .fold((0, 0), |(d, q), m| (d + m.dropped(), q + m.queued() as u64))
                    })
                    .unwrap_or((0, 0));
                AgentInfo {
                    agent_id: a.agent_id.clone(),
                    session_id: a.session_id.clone(),
                    subscriptions: a.subscriptions.iter().map(|s| s.pattern.clone()).collect(),
                    capabilities: a.capabilities.clone(),
                    connected: a.stream.is_some(),
                    registered_unix_ms: a
                        .registered_at
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_millis())
                        .unwrap_or(0),
                    idle_ms: a.last_seen.elapsed().as_millis(),
                    published: c.published.load(Ordering::Relaxed),
                    publish_rejected: c.publish_rejected.load(Ordering::Relaxed),
                    delivered: c.delivered.load(Ordering::Relaxed),
                    dropped,
                    queued,
                    acked: c.acked.load(Ordering::Relaxed),
                    actions_served: c.actions_served.load(Ordering::Relaxed),
                }
            })
            .collect();
        out.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        out
    }

    /// Refreshes liveness; false when the agent/session pair is unknown.
    pub fn touch(&self, agent_id: &str, session_id: &str) -> bool {
        match self.agents.lock().get_mut(agent_id) {
            Some(a) if a.session_id == session_id => {
                a.last_seen = Instant::now();
                true
            }
            _ => false,
        }
    }
}
