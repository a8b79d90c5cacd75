//! Agent registry: who is registered, their session, liveness, open stream and pending calls.
//!
//! Every operation on the agent map is a method here, each taking the lock for one synchronous
//! step (never across an `.await`). What follows a removal (releasing capabilities, closing the
//! stream) is the caller's: the registry hands back the removed [`AgentEntry`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

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

impl StreamHandle {
    pub fn new(
        outbound: mpsc::Sender<Result<ServerMessage, tonic::Status>>,
        cancel: CancellationToken,
    ) -> StreamHandle {
        StreamHandle {
            outbound,
            cancel,
            pending: Mutex::new(HashMap::new()),
            monitors: Mutex::new(Vec::new()),
        }
    }
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

impl AgentEntry {
    /// A freshly registered agent: seen now, no stream yet, counters at zero.
    pub fn new(
        agent_id: String,
        session_id: String,
        subscriptions: Vec<Subscription>,
        capabilities: Vec<String>,
    ) -> AgentEntry {
        AgentEntry {
            agent_id,
            session_id,
            subscriptions,
            capabilities,
            registered_at: SystemTime::now(),
            last_seen: Instant::now(),
            stream: None,
            counters: Arc::new(AgentCounters::default()),
        }
    }

    fn info(&self) -> AgentInfo {
        let c = &self.counters;
        let (dropped, queued) = self
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
            agent_id: self.agent_id.clone(),
            session_id: self.session_id.clone(),
            subscriptions: self
                .subscriptions
                .iter()
                .map(|s| s.pattern.clone())
                .collect(),
            capabilities: self.capabilities.clone(),
            connected: self.stream.is_some(),
            registered_unix_ms: self
                .registered_at
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis())
                .unwrap_or(0),
            idle_ms: self.last_seen.elapsed().as_millis(),
            published: c.published.load(Ordering::Relaxed),
            publish_rejected: c.publish_rejected.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            dropped,
            queued,
            acked: c.acked.load(Ordering::Relaxed),
            actions_served: c.actions_served.load(Ordering::Relaxed),
        }
    }
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

/// Why the registry refused an operation; the messages go to the agent as they are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RegistryError {
    #[error("agent {0} is already registered and live; pick another agent_id or stop the other instance")]
    AlreadyLive(String),
    #[error("agent {0:?} with this session is not registered (never, or expired): call RegisterAgent first")]
    UnknownSession(String),
    #[error("agent {0} already has an open EventStream")]
    StreamOpen(String),
    #[error(
        "max_agents: the bridge already holds its limit of {0} agents; try again when one leaves"
    )]
    TooManyAgents(usize),
}

impl From<RegistryError> for tonic::Status {
    fn from(e: RegistryError) -> tonic::Status {
        match e {
            RegistryError::AlreadyLive(_) | RegistryError::StreamOpen(_) => {
                tonic::Status::already_exists(e.to_string())
            }
            RegistryError::UnknownSession(_) => tonic::Status::failed_precondition(e.to_string()),
            RegistryError::TooManyAgents(_) => tonic::Status::resource_exhausted(e.to_string()),
        }
    }
}

pub(crate) struct Registry {
    agents: Mutex<HashMap<String, AgentEntry>>,
    /// Most agents held at once (`limits.max_agents`).
    max_agents: usize,
}

impl Default for Registry {
    fn default() -> Self {
        Registry::new(usize::MAX)
    }
}

impl Registry {
    pub fn new(max_agents: usize) -> Registry {
        Registry {
            agents: Mutex::new(HashMap::new()),
            max_agents,
        }
    }

    /// Enters `entry`, unless an agent with its id is live: it has a stream open or was seen
    /// within `live_for`. A stale entry with that id is removed first and handed to `claim`,
    /// which runs under the lock (so two registrations of one id cannot interleave) and claims
    /// whatever the agent needs elsewhere; if `claim` fails, nothing is entered. A new id past
    /// `max_agents` is refused before anything is claimed, so the map never outgrows it.
    pub fn register<E: From<RegistryError>>(
        &self,
        entry: AgentEntry,
        live_for: Duration,
        claim: impl FnOnce(Option<AgentEntry>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut agents = self.agents.lock();
        if let Some(existing) = agents.get(&entry.agent_id) {
            if existing.stream.is_some() || existing.last_seen.elapsed() <= live_for {
                return Err(RegistryError::AlreadyLive(entry.agent_id).into());
            }
        } else if agents.len() >= self.max_agents {
            return Err(RegistryError::TooManyAgents(self.max_agents).into());
        }
        claim(agents.remove(&entry.agent_id))?;
        agents.insert(entry.agent_id.clone(), entry);
        Ok(())
    }

    /// Attaches an open stream to a registered agent/session and marks it seen; returns what the
    /// stream needs: the agent's subscriptions and counters.
    pub fn attach_stream(
        &self,
        agent_id: &str,
        session_id: &str,
        stream: Arc<StreamHandle>,
    ) -> Result<(Vec<Subscription>, Arc<AgentCounters>), RegistryError> {
        let mut agents = self.agents.lock();
        let entry = match agents.get_mut(agent_id) {
            Some(e) if e.session_id == session_id => e,
            _ => return Err(RegistryError::UnknownSession(agent_id.to_owned())),
        };
        if entry.stream.is_some() {
            return Err(RegistryError::StreamOpen(agent_id.to_owned()));
        }
        entry.stream = Some(stream);
        entry.last_seen = Instant::now();
        Ok((entry.subscriptions.clone(), entry.counters.clone()))
    }

    /// Removes an agent, if `session` matches when given (a late close of an old session must
    /// not remove its successor).
    pub fn remove(&self, agent_id: &str, session: Option<&str>) -> Option<AgentEntry> {
        let mut agents = self.agents.lock();
        match agents.get(agent_id) {
            Some(a) if session.is_none_or(|s| s == a.session_id) => agents.remove(agent_id),
            _ => None,
        }
    }

    /// Removes every agent (shutdown).
    pub fn remove_all(&self) -> Vec<AgentEntry> {
        self.agents.lock().drain().map(|(_, a)| a).collect()
    }

    /// Removes the agents not seen (heartbeat or stream message) for longer than `timeout`.
    pub fn expire_stale(&self, timeout: Duration) -> Vec<AgentEntry> {
        let mut agents = self.agents.lock();
        let stale: Vec<String> = agents
            .values()
            .filter(|a| a.last_seen.elapsed() > timeout)
            .map(|a| a.agent_id.clone())
            .collect();
        stale.iter().filter_map(|id| agents.remove(id)).collect()
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

    /// The agent's open stream, if it has one.
    pub fn stream(&self, agent_id: &str) -> Option<Arc<StreamHandle>> {
        self.agents
            .lock()
            .get(agent_id)
            .and_then(|a| a.stream.clone())
    }

    pub fn len(&self) -> usize {
        self.agents.lock().len()
    }

    /// Every agent with its counters, sorted by id: what the dashboard shows.
    pub fn snapshot(&self) -> Vec<AgentInfo> {
        let mut out: Vec<_> = self.agents.lock().values().map(AgentEntry::info).collect();
        out.sort_by(|a, b| a.agent_id.cmp(&b.agent_id));
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIVE: Duration = Duration::from_secs(60);

    fn entry(id: &str, session: &str) -> AgentEntry {
        let subs = vec![Subscription {
            pattern: "sensor.*".into(),
            qos: 0,
        }];
        AgentEntry::new(id.into(), session.into(), subs, vec!["cap.a".into()])
    }

    fn register(r: &Registry, e: AgentEntry, live_for: Duration) -> Result<(), RegistryError> {
        r.register(e, live_for, |_| Ok::<_, RegistryError>(()))
    }

    fn stream() -> (
        Arc<StreamHandle>,
        mpsc::Receiver<Result<ServerMessage, tonic::Status>>,
    ) {
        let (tx, rx) = mpsc::channel(4);
        (
            Arc::new(StreamHandle::new(tx, CancellationToken::new())),
            rx,
        )
    }

    #[test]
    fn a_live_duplicate_id_is_refused_with_already_exists() {
        let r = Registry::default();
        register(&r, entry("a", "s1"), LIVE).unwrap();
        let err = register(&r, entry("a", "s2"), LIVE).unwrap_err();
        assert_eq!(err, RegistryError::AlreadyLive("a".into()));
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::AlreadyExists);
        assert!(status.message().contains("already registered and live"));
        // The first registration is untouched.
        assert_eq!(r.snapshot()[0].session_id, "s1");
    }

    #[test]
    fn an_open_stream_keeps_an_agent_live_whatever_its_last_heartbeat() {
        let r = Registry::default();
        register(&r, entry("a", "s1"), LIVE).unwrap();
        let (h, _rx) = stream();
        r.attach_stream("a", "s1", h).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let err = register(&r, entry("a", "s2"), Duration::from_millis(1)).unwrap_err();
        assert_eq!(err, RegistryError::AlreadyLive("a".into()));
    }

    #[test]
    fn a_stale_entry_is_replaced_and_handed_to_claim() {
        let r = Registry::default();
        register(&r, entry("a", "s1"), LIVE).unwrap();
        std::thread::sleep(Duration::from_millis(5));
        let mut replaced = None;
        r.register(entry("a", "s2"), Duration::from_millis(1), |old| {
            replaced = old.map(|o| o.session_id);
            Ok::<_, RegistryError>(())
        })
        .unwrap();
        assert_eq!(replaced.as_deref(), Some("s1"));
        assert_eq!(r.snapshot()[0].session_id, "s2");
    }

    #[test]
    fn past_max_agents_a_new_id_is_refused_but_a_stale_one_is_replaced() {
        let r = Registry::new(2);
        register(&r, entry("a", "s1"), LIVE).unwrap();
        register(&r, entry("b", "s2"), LIVE).unwrap();
        let err = register(&r, entry("c", "s3"), LIVE).unwrap_err();
        assert_eq!(err, RegistryError::TooManyAgents(2));
        let status = tonic::Status::from(err);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(status.message().starts_with("max_agents:"));
        std::thread::sleep(Duration::from_millis(5));
        register(&r, entry("b", "s4"), Duration::from_millis(1)).unwrap();
        assert_eq!(r.len(), 2);
    }

    #[test]
    fn a_failed_claim_enters_nothing() {
        let r = Registry::default();
        let err = r
            .register(entry("a", "s1"), LIVE, |_| Err("capability taken"))
            .unwrap_err();
        assert_eq!(err, "capability taken");
        assert_eq!(r.len(), 0);
    }

    impl From<RegistryError> for &'static str {
        fn from(_: RegistryError) -> &'static str {
            "registry"
        }
    }

    #[test]
    fn re_register_after_deregister_succeeds_at_once() {
        let r = Registry::default();
        register(&r, entry("a", "s1"), LIVE).unwrap();
        let removed = r.remove("a", Some("s1")).expect("removed");
        assert_eq!(removed.capabilities, vec!["cap.a".to_owned()]);
        register(&r, entry("a", "s2"), LIVE).unwrap();
        assert_eq!(r.snapshot()[0].session_id, "s2");
    }

    #[test]
    fn a_session_mismatch_is_ignored() {
        let r = Registry::default();
        register(&r, entry("a", "s1"), LIVE).unwrap();
        assert!(r.remove("a", Some("old")).is_none());
        assert!(!r.touch("a", "old"));
        let (h, _rx) = stream();
        assert_eq!(
            r.attach_stream("a", "old", h).err(),
            Some(RegistryError::UnknownSession("a".into()))
        );
        assert!(!r.snapshot()[0].connected);
        assert!(r.touch("a", "s1"));
        assert!(!r.touch("nobody", "s1"));
        assert!(r.remove("a", None).is_some());
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn a_second_stream_for_one_agent_is_refused() {
        let r = Registry::default();
        register(&r, entry("a", "s1"), LIVE).unwrap();
        let (h1, _rx1) = stream();
        let (h2, _rx2) = stream();
        r.attach_stream("a", "s1", h1).unwrap();
        let err = r.attach_stream("a", "s1", h2).err().unwrap();
        assert_eq!(tonic::Status::from(err).code(), tonic::Code::AlreadyExists);
        assert!(r.stream("a").is_some());
        assert!(r.stream("b").is_none());
    }

    #[test]
    fn stale_agents_expire_by_heartbeat_timeout_and_a_heartbeat_keeps_one() {
        let r = Registry::default();
        register(&r, entry("quiet", "s1"), LIVE).unwrap();
        register(&r, entry("chatty", "s2"), LIVE).unwrap();
        std::thread::sleep(Duration::from_millis(40));
        assert!(r.touch("chatty", "s2"));
        let expired: Vec<String> = r
            .expire_stale(Duration::from_millis(20))
            .into_iter()
            .map(|a| a.agent_id)
            .collect();
        assert_eq!(expired, vec!["quiet".to_owned()]);
        assert_eq!(r.snapshot().len(), 1);
        assert_eq!(r.snapshot()[0].agent_id, "chatty");
        assert!(r.expire_stale(Duration::from_secs(60)).is_empty());
    }

    #[test]
    fn counters_and_stream_state_show_in_the_snapshot() {
        let r = Registry::default();
        register(&r, entry("b", "s2"), LIVE).unwrap();
        register(&r, entry("a", "s1"), LIVE).unwrap();
        let (h, _rx) = stream();
        let (subs, counters) = r.attach_stream("a", "s1", h).unwrap();
        assert_eq!(subs[0].pattern, "sensor.*");
        counters.published.fetch_add(3, Ordering::Relaxed);
        counters.publish_rejected.fetch_add(1, Ordering::Relaxed);
        counters.delivered.fetch_add(5, Ordering::Relaxed);
        counters.acked.fetch_add(4, Ordering::Relaxed);
        counters.actions_served.fetch_add(2, Ordering::Relaxed);
        let snap = r.snapshot();
        let ids: Vec<&str> = snap.iter().map(|a| a.agent_id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        let a = &snap[0];
        assert!(a.connected);
        assert_eq!(a.subscriptions, ["sensor.*"]);
        assert_eq!(a.capabilities, ["cap.a"]);
        assert_eq!(
            (
                a.published,
                a.publish_rejected,
                a.delivered,
                a.acked,
                a.actions_served
            ),
            (3, 1, 5, 4, 2)
        );
        assert_eq!((a.dropped, a.queued), (0, 0));
        assert!(!snap[1].connected);
        assert_eq!(snap[1].published, 0);
        assert_eq!(r.remove_all().len(), 2);
        assert!(r.snapshot().is_empty());
    }
}
