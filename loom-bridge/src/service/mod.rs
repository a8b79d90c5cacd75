//! The `loom.v1.Bridge` gRPC service: a thin tonic impl handing each RPC to the module that does it.
//!
//! Layout, one job per module: [`register`] (RegisterAgent: validation, capabilities claimed for
//! the agent), [`stream`] (EventStream: Hello, the inbound loop and its publishes, one forward
//! loop per subscription), [`action`] (ForwardAction, and the remote provider that sends calls
//! down an agent's stream). Heartbeat is a registry touch, here. The state they share is
//! [`crate::bridge::Shared`]; the agent map and its operations are [`crate::registry`].
//!
//! Trace context crosses the process boundary here. An inbound publish runs in `bridge.publish`
//! (SERVER, parent = the agent's span from `traceparent`), the EventBus nests
//! `event_bus.publish` under it, and each delivery to an agent runs in `bridge.forward` (CLIENT,
//! parent = the delivery's context) whose own context goes into the outgoing event's metadata.
//! Both are started straight on the tracer (`telemetry::start_span`), sampled before anything
//! else is built.

mod action;
mod register;
mod stream;

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use loom_core::proto::bridge_server::Bridge as BridgeRpc;
use loom_core::proto::{
    ActionCall, ActionResult, ClientMessage, HeartbeatRequest, HeartbeatResponse,
    RegisterAgentRequest, RegisterAgentResponse,
};
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Action, Grant};
use crate::bridge::Shared;
// Kept at their old paths (`loom_bridge::service::Bridge`, …) for existing users.
pub use crate::bridge::{Bridge, BridgeCounters, BridgeStats, TopicCount};
pub use register::MAX_AGENT_ID_LEN;

/// The tonic service implementation.
pub struct BridgeService {
    shared: Arc<Shared>,
}

impl BridgeService {
    pub(crate) fn new(shared: Arc<Shared>) -> BridgeService {
        BridgeService { shared }
    }

    /// Who the request is: its bearer token's grant (open when the bridge has no token file).
    fn grant<T>(&self, request: &Request<T>, rpc: &str) -> Result<Grant<'_>, Status> {
        Grant::of(self.shared.config.auth.as_deref(), request.metadata(), rpc)
    }
}

#[tonic::async_trait]
impl BridgeRpc for BridgeService {
    async fn register_agent(
        &self,
        request: Request<RegisterAgentRequest>,
    ) -> Result<Response<RegisterAgentResponse>, Status> {
        let grant = self.grant(&request, "RegisterAgent")?;
        register::register_agent(&self.shared, grant, request.into_inner()).map(Response::new)
    }

    type EventStreamStream = stream::EventStreamOut;

    async fn event_stream(
        &self,
        request: Request<Streaming<ClientMessage>>,
    ) -> Result<Response<Self::EventStreamStream>, Status> {
        // The token is checked here and its rules travel with the stream (agent id at Hello,
        // topic on every publish).
        let token = self.grant(&request, "EventStream")?.key();
        stream::open(self.shared.clone(), token, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn forward_action(
        &self,
        request: Request<ActionCall>,
    ) -> Result<Response<ActionResult>, Status> {
        let grant = self.grant(&request, "ForwardAction")?;
        action::forward_action(&self.shared, grant, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let grant = self.grant(&request, "Heartbeat")?;
        let req = request.into_inner();
        grant.check(Action::Agent, &req.agent_id)?;
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

fn now_unix_nanos() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos().min(i64::MAX as u128) as i64)
        .unwrap_or(0)
}
