//! ActionBroker: routes a call to the provider of a named capability, with timeout and idempotency.
//!
//! Each invocation runs in an `action_broker.invoke` CLIENT span whose context is written into the
//! call's headers, so the provider (a Rust function or a remote agent behind the bridge) continues
//! the caller's trace.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use tokio::sync::OnceCell;
use tracing::field::Empty;
use tracing::Instrument;

use crate::envelope;
use crate::proto::{ActionCall, ActionResult, ActionStatus};
use crate::trace_util::inject_span;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Why a provider produced no output. Its text is what the caller reads in `ActionResult.error`,
/// after "capability X failed: ".
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// A failure message meant for the caller as it stands (e.g. a remote agent's own
    /// `ActionResult.error`).
    #[error("{0}")]
    Message(String),
    /// A typed error from the provider's implementation.
    #[error(transparent)]
    Source(Box<dyn std::error::Error + Send + Sync + 'static>),
}

impl ProviderError {
    pub fn source(e: impl std::error::Error + Send + Sync + 'static) -> ProviderError {
        ProviderError::Source(Box::new(e))
    }
}

impl From<String> for ProviderError {
    fn from(message: String) -> Self {
        ProviderError::Message(message)
    }
}

impl From<&str> for ProviderError {
    fn from(message: &str) -> Self {
        ProviderError::Message(message.to_owned())
    }
}

/// Serves one capability. Returns the output bytes, or why there are none.
pub trait ActionProvider: Send + Sync + 'static {
    fn invoke(&self, call: ActionCall) -> BoxFuture<Result<Vec<u8>, ProviderError>>;
}

/// Any `Fn(ActionCall) -> Future<Output = Result<Vec<u8>, ProviderError>>` is a provider.
impl<F, Fut> ActionProvider for F
where
    F: Fn(ActionCall) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<u8>, ProviderError>> + Send + 'static,
{
    fn invoke(&self, call: ActionCall) -> BoxFuture<Result<Vec<u8>, ProviderError>> {
        Box::pin(self(call))
    }
}

#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Used when a call has `timeout_ms == 0`.
    pub default_timeout: Duration,
    /// How many completed call ids are remembered for idempotency (oldest forgotten first).
    pub idempotency_capacity: usize,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            default_timeout: Duration::from_secs(30),
            idempotency_capacity: 4096,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    #[error("unknown capability {0:?}")]
    UnknownCapability(String),
    #[error("capability {capability:?} timed out after {timeout_ms} ms")]
    Timeout { capability: String, timeout_ms: u64 },
    #[error("capability {capability:?} failed: {message}")]
    ProviderFailed { capability: String, message: String },
    #[error("invalid action call: {0}")]
    Invalid(String),
    #[error("capability {0:?} is already registered")]
    AlreadyRegistered(String),
}

impl BrokerError {
    /// The wire form of this error as the result of call `call_id`.
    pub fn to_result(&self, call_id: &str) -> ActionResult {
        let status = match self {
            BrokerError::UnknownCapability(_) => ActionStatus::UnknownCapability,
            BrokerError::Timeout { .. } => ActionStatus::Timeout,
            BrokerError::ProviderFailed { .. } => ActionStatus::Failed,
            BrokerError::Invalid(_) | BrokerError::AlreadyRegistered(_) => ActionStatus::Invalid,
        };
        ActionResult {
            call_id: call_id.to_owned(),
            status: status as i32,
            output: Vec::new(),
            error: self.to_string(),
            headers: HashMap::new(),
        }
    }
}

type Outcome = Result<ActionResult, BrokerError>;

/// Idempotency memory: one cell per call id. Concurrent duplicates await the first call's cell;
/// later duplicates read its stored outcome.
struct Dedup {
    cells: HashMap<String, Arc<OnceCell<Outcome>>>,
    order: VecDeque<String>,
    capacity: usize,
}

impl Dedup {
    fn cell(&mut self, id: &str) -> (Arc<OnceCell<Outcome>>, bool) {
        if let Some(c) = self.cells.get(id) {
            return (c.clone(), false);
        }
        let c = Arc::new(OnceCell::new());
        if self.capacity > 0 {
            while self.order.len() >= self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.cells.remove(&old);
                }
            }
            self.cells.insert(id.to_owned(), c.clone());
            self.order.push_back(id.to_owned());
        }
        (c, true)
    }

    fn forget(&mut self, id: &str) {
        if self.cells.remove(id).is_some() {
            self.order.retain(|k| k != id);
        }
    }
}

struct Inner {
    config: BrokerConfig,
    providers: RwLock<HashMap<String, Arc<dyn ActionProvider>>>,
    dedup: Mutex<Dedup>,
}

/// Cheap to clone: all clones are one broker.
#[derive(Clone)]
pub struct ActionBroker {
    inner: Arc<Inner>,
}

impl Default for ActionBroker {
    fn default() -> Self {
        ActionBroker::new(BrokerConfig::default())
    }
}

impl std::fmt::Debug for ActionBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ActionBroker")
            .field("capabilities", &self.capabilities())
            .finish()
    }
}

impl ActionBroker {
    pub fn new(config: BrokerConfig) -> ActionBroker {
        let capacity = config.idempotency_capacity;
        ActionBroker {
            inner: Arc::new(Inner {
                config,
                providers: RwLock::new(HashMap::new()),
                dedup: Mutex::new(Dedup {
                    cells: HashMap::new(),
                    order: VecDeque::new(),
                    capacity,
                }),
            }),
        }
    }

    pub fn register(
        &self,
        capability: &str,
        provider: Arc<dyn ActionProvider>,
    ) -> Result<(), BrokerError> {
        if capability.is_empty() || capability.chars().any(char::is_whitespace) {
            return Err(BrokerError::Invalid(format!(
                "capability name {capability:?} must be non-empty without whitespace"
            )));
        }
        let mut providers = self.inner.providers.write();
        if providers.contains_key(capability) {
            return Err(BrokerError::AlreadyRegistered(capability.to_owned()));
        }
        providers.insert(capability.to_owned(), provider);
        Ok(())
    }

    pub fn unregister(&self, capability: &str) -> bool {
        self.inner.providers.write().remove(capability).is_some()
    }

    pub fn capabilities(&self) -> Vec<String> {
        let mut caps: Vec<_> = self.inner.providers.read().keys().cloned().collect();
        caps.sort();
        caps
    }

    pub fn has_capability(&self, capability: &str) -> bool {
        self.inner.providers.read().contains_key(capability)
    }

    /// Invokes `call.capability` in an `action_broker.invoke` CLIENT span.
    ///
    /// The call id (a UUID when empty) makes the call idempotent: a repeated id gets the first
    /// call's result without running the provider again. Only outcomes the provider produced
    /// (success or failure) are remembered; an unknown capability or a timeout is not, so the
    /// caller may retry with the same id.
    pub fn invoke(
        &self,
        mut call: ActionCall,
    ) -> impl Future<Output = Result<ActionResult, BrokerError>> + Send + 'static {
        if call.id.is_empty() {
            call.id = uuid::Uuid::new_v4().to_string();
        }
        let span = tracing::info_span!(
            "action_broker.invoke",
            otel.kind = "client",
            loom.capability = call.capability.as_str(),
            loom.call.id = call.id.as_str(),
            loom.agent.id = Empty,
            loom.thread_id = Empty,
            loom.correlation_id = Empty,
            otel.status_code = Empty,
            otel.status_description = Empty,
        );
        if !span.is_disabled() {
            crate::telemetry::record_envelope_fields(&span, &call.headers, true);
            if !call.caller.is_empty() && !call.headers.contains_key(envelope::SENDER) {
                span.record("loom.agent.id", call.caller.as_str());
            }
        }
        let inner = self.inner.clone();
        async move {
            let outcome = invoke_inner(&inner, call).await;
            if let Err(e) = &outcome {
                let span = tracing::Span::current();
                span.record("otel.status_code", "ERROR");
                span.record("otel.status_description", e.to_string().as_str());
            }
            outcome
        }
        .instrument(span)
    }
}

async fn invoke_inner(inner: &Arc<Inner>, mut call: ActionCall) -> Outcome {
    if call.capability.is_empty() {
        return Err(BrokerError::Invalid("capability is empty".into()));
    }
    let provider = inner.providers.read().get(&call.capability).cloned();
    let Some(provider) = provider else {
        return Err(BrokerError::UnknownCapability(call.capability));
    };
    inject_span(&mut call.headers, &tracing::Span::current());
    let timeout = if call.timeout_ms == 0 {
        inner.config.default_timeout
    } else {
        Duration::from_millis(call.timeout_ms)
    };
    let id = call.id.clone();
    let capability = call.capability.clone();
    let (cell, first) = inner.dedup.lock().cell(&id);
    if !first {
        tracing::debug!(call_id = %id, "repeated action call id: answering with the first result");
    }
    let outcome = cell
        .get_or_init(|| async {
            let timeout_ms = timeout.as_millis().min(u64::MAX as u128) as u64;
            match tokio::time::timeout(timeout, provider.invoke(call)).await {
                Ok(Ok(output)) => Ok(ActionResult {
                    call_id: id.clone(),
                    status: ActionStatus::Ok as i32,
                    output,
                    error: String::new(),
                    headers: HashMap::new(),
                }),
                Ok(Err(e)) => Err(BrokerError::ProviderFailed {
                    capability: capability.clone(),
                    message: e.to_string(),
                }),
                Err(_) => Err(BrokerError::Timeout {
                    capability: capability.clone(),
                    timeout_ms,
                }),
            }
        })
        .await
        .clone();
    if matches!(outcome, Err(BrokerError::Timeout { .. })) {
        inner.dedup.lock().forget(&id);
    }
    outcome
}
