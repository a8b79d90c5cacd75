//! RegisterAgent: checks an agent's id, subscriptions and capabilities, then enters it in the
//! registry with its capabilities claimed in the broker.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use loom_core::event_bus;
use loom_core::proto::{RegisterAgentRequest, RegisterAgentResponse};
use tonic::Status;

use super::action::RemoteProvider;
use crate::bridge::Shared;
use crate::registry::AgentEntry;

/// Longest agent id accepted.
pub const MAX_AGENT_ID_LEN: usize = 128;

/// An agent id or capability: 1..=`max` bytes, no whitespace or control characters (they end
/// up in logs, span attributes and the dashboard).
pub(super) fn valid_name(s: &str, max: usize) -> bool {
    !s.is_empty() && s.len() <= max && s.chars().all(|c| !c.is_whitespace() && !c.is_control())
}

pub(super) fn register_agent(
    shared: &Arc<Shared>,
    req: RegisterAgentRequest,
) -> Result<RegisterAgentResponse, Status> {
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
        })?;
    shared.counters.registered.fetch_add(1, Ordering::Relaxed);
    tracing::info!(agent.id = %req.agent_id, "agent registered");
    Ok(RegisterAgentResponse {
        session_id,
        heartbeat_interval_ms: shared.config.heartbeat_interval.as_millis() as u64,
    })
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
