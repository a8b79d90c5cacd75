//! Actions across the bridge: ForwardAction (a remote caller invokes any capability through the
//! broker) and [`RemoteProvider`] (a capability served by a remote agent, over its stream).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use loom_core::action_broker::{ActionProvider, BoxFuture, ProviderError};
use loom_core::envelope::Envelope;
use loom_core::proto::server_message::Msg as ServerMsg;
use loom_core::proto::{ActionCall, ActionResult, ActionStatus, ServerMessage};
use tokio::sync::oneshot;
use tonic::Status;
use tracing::field::Empty;
use tracing::Instrument;

use super::MAX_AGENT_ID_LEN;
use crate::auth::{Action, Grant};
use crate::bridge::Shared;
use crate::registry::StreamHandle;

/// ForwardAction: invokes `call` through the broker in a `bridge.forward_action` span (SERVER,
/// parent = the caller's `traceparent` in the call's headers). Broker failures are answered as
/// an ActionResult, not a gRPC error.
pub(super) async fn forward_action(
    shared: &Shared,
    grant: Grant<'_>,
    mut call: ActionCall,
) -> Result<ActionResult, Status> {
    if call.capability.is_empty() {
        return Err(Status::invalid_argument("capability is empty"));
    }
    if !call.caller.is_empty() && !super::register::valid_name(&call.caller, MAX_AGENT_ID_LEN) {
        // It keys the caller's count of calls in flight, so it is held to an agent id's bounds.
        return Err(Status::invalid_argument(format!(
            "caller must be an agent id: 1..={MAX_AGENT_ID_LEN} printable characters without whitespace"
        )));
    }
    grant.check(Action::Invoke, &call.capability)?;
    if !call.caller.is_empty() {
        // A caller may only speak for an agent id its token may be.
        grant.check(Action::Agent, &call.caller)?;
    }
    if call.args.len() > shared.config.max_payload_bytes {
        return Err(Status::resource_exhausted(format!(
            "action args of {} bytes exceed the bridge limit of {} bytes",
            call.args.len(),
            shared.config.max_payload_bytes
        )));
    }
    let _in_flight = CallerSlot::take(shared, &call.caller)?;
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
    Ok(match outcome {
        Ok(r) => r,
        Err(e) => e.to_result(&call_id),
    })
}

/// One ForwardAction call in flight for its caller (`""` for calls naming none, which share one
/// count); given back when dropped, however the call ends.
struct CallerSlot<'a> {
    shared: &'a Shared,
    caller: String,
}

impl<'a> CallerSlot<'a> {
    fn take(shared: &'a Shared, caller: &str) -> Result<CallerSlot<'a>, Status> {
        let max = shared.config.limits.max_inflight_actions_per_agent;
        {
            let mut map = shared.calls_in_flight.lock();
            let n = map.get(caller).copied().unwrap_or(0);
            if n >= max {
                drop(map);
                return Err(shared.limit_refused(
                    caller,
                    Status::resource_exhausted(format!(
                        "max_inflight_actions_per_agent: caller {caller:?} already has {max} action calls in flight"
                    )),
                ));
            }
            map.insert(caller.to_owned(), n + 1);
        }
        Ok(CallerSlot {
            shared,
            caller: caller.to_owned(),
        })
    }
}

impl Drop for CallerSlot<'_> {
    fn drop(&mut self) {
        let mut map = self.shared.calls_in_flight.lock();
        if let Some(n) = map.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.caller);
            }
        }
    }
}

/// A capability served by a remote agent: the call goes down the agent's stream and the
/// agent's ActionResult comes back up it, matched by call id.
pub(super) struct RemoteProvider {
    // Weak: the broker inside `Shared` holds this provider, so a strong handle would be a cycle.
    shared: Weak<Shared>,
    agent_id: String,
}

impl RemoteProvider {
    pub fn new(shared: &Arc<Shared>, agent_id: &str) -> RemoteProvider {
        RemoteProvider {
            shared: Arc::downgrade(shared),
            agent_id: agent_id.to_owned(),
        }
    }
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

/// Why a remote agent gave no output; the text reaches the caller in `ActionResult.error`.
#[derive(Debug, thiserror::Error)]
enum RemoteError {
    #[error("loom-bridge is shutting down")]
    ShuttingDown,
    #[error("agent {0} serving this capability is not connected")]
    NotConnected(String),
    #[error("max_inflight_actions_per_agent: agent {agent} already serves {max} calls in flight")]
    Busy { agent: String, max: usize },
    #[error("agent {0} stream closed")]
    StreamClosed(String),
    #[error("agent {0} disconnected before answering")]
    Disconnected(String),
    #[error("agent {agent} answered with status {status}")]
    Status { agent: String, status: i32 },
}

impl From<RemoteError> for ProviderError {
    fn from(e: RemoteError) -> Self {
        ProviderError::source(e)
    }
}

impl ActionProvider for RemoteProvider {
    fn invoke(&self, call: ActionCall) -> BoxFuture<Result<Vec<u8>, ProviderError>> {
        let shared = self.shared.clone();
        let agent_id = self.agent_id.clone();
        Box::pin(async move {
            let shared = shared.upgrade().ok_or(RemoteError::ShuttingDown)?;
            let stream = shared
                .registry
                .stream(&agent_id)
                .ok_or_else(|| RemoteError::NotConnected(agent_id.clone()))?;
            let (tx, rx) = oneshot::channel();
            {
                let max = shared.config.limits.max_inflight_actions_per_agent;
                let mut pending = stream.pending.lock();
                if pending.len() >= max && !pending.contains_key(&call.id) {
                    drop(pending);
                    shared
                        .counters
                        .limit_refused
                        .fetch_add(1, Ordering::Relaxed);
                    return Err(RemoteError::Busy {
                        agent: agent_id,
                        max,
                    }
                    .into());
                }
                pending.insert(call.id.clone(), tx);
            }
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
                .map_err(|_| RemoteError::StreamClosed(agent_id.clone()))?;
            let result = rx
                .await
                .map_err(|_| RemoteError::Disconnected(agent_id.clone()))?;
            if result.status == ActionStatus::Ok as i32 {
                Ok(result.output)
            } else if result.error.is_empty() {
                Err(RemoteError::Status {
                    agent: agent_id,
                    status: result.status,
                }
                .into())
            } else {
                // The agent's own message, passed on as it wrote it.
                Err(ProviderError::Message(result.error))
            }
        })
    }
}
