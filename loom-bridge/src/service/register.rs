//! RegisterAgent: checks an agent's id, subscriptions and capabilities, then enters it in the
//! registry with its capabilities claimed in the broker.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use loom_core::event_bus;
use loom_core::proto::{RegisterAgentRequest, RegisterAgentResponse};
use tonic::Status;

use super::action::RemoteProvider;
use crate::auth::{Action, Grant};
use crate::bridge::Shared;
use crate::registry::AgentEntry;

/// Longest agent id accepted.
pub const MAX_AGENT_ID_LEN: usize = 128;

/// An agent id or capability: 1..=`max` bytes, no whitespace or control characters (they end
/// up in logs, span attributes and the dashboard).
pub(super) fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.chars().all(|c| !c.is_whitespace() && !c.is_control())
}

/// The reply topics the Python SDK subscribes every agent to (its own and upstream loom-py's):
/// a token allowed to be `agent_id` may always subscribe to these, whatever its `subscribe` rule.
fn own_reply_topic(agent_id: &str, pattern: &str) -> bool {
    // An id holding `*` would make its reply "topic" a wildcard over other agents' replies.
    !agent_id.contains('*') && pattern.strip_prefix("_loom.reply.") == Some(agent_id)
        || pattern
            .strip_prefix("agent.")
            .and_then(|p| p.strip_suffix(".replies"))
            == Some(agent_id)
}

/// Checks in order: malformed (INVALID_ARGUMENT), outside the token's rules (PERMISSION_DENIED),
/// past a limit (RESOURCE_EXHAUSTED); only then is anything entered or claimed.
pub(super) fn register_agent(
    shared: &Arc<Shared>,
    grant: Grant<'_>,
    req: RegisterAgentRequest,
) -> Result<RegisterAgentResponse, Status> {
    if !valid_name(&req.agent_id, MAX_AGENT_ID_LEN) {
        return Err(Status::invalid_argument(format!(
            "agent_id {:?} must be 1..={MAX_AGENT_ID_LEN} printable characters without whitespace",
            req.agent_id
        )));
    }
    let id = req.agent_id.as_str();
    grant.check(Action::Agent, id)?;
    let limits = &shared.config.limits;
    let refuse = |s: Status| shared.limit_refused(id, s);
    if req.subscriptions.len() > limits.max_subscriptions_per_agent {
        return Err(refuse(Status::resource_exhausted(format!(
            "max_subscriptions_per_agent: {} subscriptions requested, at most {} allowed",
            req.subscriptions.len(),
            limits.max_subscriptions_per_agent
        ))));
    }
    for s in &req.subscriptions {
        event_bus::validate_pattern(&s.pattern)
            .map_err(|e| Status::invalid_argument(format!("subscriptions: {e}")))?;
    }
    for s in &req.subscriptions {
        if !own_reply_topic(id, &s.pattern) {
            grant.check(Action::Subscribe, &s.pattern)?;
        }
    }
    if req.capabilities.len() > limits.max_capabilities_per_agent.saturating_mul(2) {
        // Refused before the copy and sort below, which a huge list would make costly.
        return Err(refuse(too_many_capabilities(
            req.capabilities.len(),
            limits.max_capabilities_per_agent,
        )));
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
    if caps.len() > limits.max_capabilities_per_agent {
        return Err(refuse(too_many_capabilities(
            caps.len(),
            limits.max_capabilities_per_agent,
        )));
    }
    for cap in &caps {
        grant.check(Action::Provide, cap)?;
    }

    let session_id = uuid::Uuid::new_v4().to_string();
    let entry = AgentEntry::new(
        req.agent_id.clone(),
        session_id.clone(),
        req.subscriptions,
        caps.clone(),
    );
    shared
        .registry
        .register(entry, shared.config.heartbeat_timeout, |stale| {
            if let Some(stale) = stale {
                for cap in &stale.capabilities {
                    shared.broker.unregister(cap);
                }
            }
            claim_capabilities(shared, &req.agent_id, &caps)
        })
        .map_err(|s: Status| {
            if s.code() == tonic::Code::ResourceExhausted {
                refuse(s)
            } else {
                s
            }
        })?;
    shared.counters.registered.fetch_add(1, Ordering::Relaxed);
    tracing::info!(agent.id = %req.agent_id, "agent registered");
    Ok(RegisterAgentResponse {
        session_id,
        heartbeat_interval_ms: shared.config.heartbeat_interval.as_millis() as u64,
    })
}

fn too_many_capabilities(n: usize, max: usize) -> Status {
    Status::resource_exhausted(format!(
        "max_capabilities_per_agent: {n} capabilities requested, at most {max} allowed"
    ))
}

/// Registers each capability as served by `agent_id`: all of them, or none.
fn claim_capabilities(shared: &Arc<Shared>, agent_id: &str, caps: &[String]) -> Result<(), Status> {
    for (i, cap) in caps.iter().enumerate() {
        let provider = Arc::new(RemoteProvider::new(shared, agent_id));
        if let Err(e) = shared.broker.register(cap, provider) {
            for done in &caps[..i] {
                shared.broker.unregister(done);
            }
            return Err(Status::already_exists(format!(
                "capabilities: {e} (served by another agent or a Rust provider)"
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_name_takes_printable_names_up_to_the_limit() {
        assert!(valid_name("sensor-1", 128));
        assert!(valid_name("агент.ü/x:y", 128));
        assert!(valid_name(&"a".repeat(128), 128));
    }

    #[test]
    fn own_reply_topics_are_exactly_the_agents_two() {
        assert!(own_reply_topic("a-1", "_loom.reply.a-1"));
        assert!(own_reply_topic("a-1", "agent.a-1.replies"));
        assert!(!own_reply_topic("a-1", "_loom.reply.a-2"));
        assert!(!own_reply_topic("a-1", "_loom.reply.*"));
        assert!(!own_reply_topic("a", "agent.a.b.replies"));
        assert!(!own_reply_topic("a*", "_loom.reply.a*"));
    }

    #[test]
    fn valid_name_refuses_empty_long_whitespace_and_control() {
        assert!(!valid_name("", 128));
        assert!(!valid_name(&"a".repeat(129), 128));
        // The limit is in bytes: 65 two-byte characters are 130 bytes.
        assert!(!valid_name(&"é".repeat(65), 128));
        for bad in [
            "a b",
            "a\tb",
            "a\nb",
            "\u{a0}a",
            "a\u{7}",
            "a\u{1b}[31m",
            "a\0",
        ] {
            assert!(!valid_name(bad, 128), "{bad:?} accepted");
        }
    }
}
