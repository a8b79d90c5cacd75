//! Bridge settings, with the defaults in one place.

use std::net::SocketAddr;
use std::time::Duration;

/// Everything the bridge needs to run; `BridgeConfig::default()` is the documented default.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// gRPC `loom.v1.Bridge` listen address.
    pub listen: SocketAddr,
    /// Dashboard (JSON API + page); `None` turns it off.
    pub dashboard_listen: Option<SocketAddr>,
    /// An agent that sends no heartbeat (or stream message) for this long is deregistered.
    pub heartbeat_timeout: Duration,
    /// The interval agents are told to heartbeat at (a third of the timeout by default).
    pub heartbeat_interval: Duration,
    /// Largest event payload accepted on publish; larger ones get RESOURCE_EXHAUSTED.
    pub max_payload_bytes: usize,
    /// Per-subscription queue bound (the EventBus queue that applies the subscription's QoS).
    pub subscription_queue: usize,
    /// Per-stream outbound queue bound (deliveries + action calls waiting for the network).
    pub outbound_queue: usize,
    /// Timeout for action calls that carry none.
    pub default_action_timeout: Duration,
    /// How long a new stream may take to send its Hello.
    pub hello_timeout: Duration,
    /// On shutdown, how long agents get to read what is queued for them before the server
    /// stops regardless (an agent that never reads must not keep the bridge up).
    pub shutdown_grace: Duration,
    /// Dashboard links, trace source, token and bounds.
    pub dashboard: DashboardSettings,
}

/// What the dashboard links to, reads traces from, and how much it holds.
#[derive(Debug, Clone)]
pub struct DashboardSettings {
    /// Jaeger UI base URL; each event links to `{url}/trace/{trace_id}` when set.
    pub jaeger_ui_url: Option<String>,
    /// Base URL of a Jaeger `api_v3` trace query service (`{url}/api/v3/traces/{id}`).
    pub trace_query_url: Option<String>,
    /// Bearer token every request must carry (required when bound off loopback).
    pub token: Option<String>,
    /// Most event-stream (SSE) clients served at once; more get 503.
    pub max_sse_clients: usize,
    /// How long one trace query may take.
    pub query_timeout: Duration,
    /// Largest trace query response read, in bytes; larger ones get 502.
    pub query_max_bytes: usize,
    /// Interval of the event stream's `ping` events.
    pub ping_interval: Duration,
}

impl Default for DashboardSettings {
    fn default() -> Self {
        DashboardSettings {
            jaeger_ui_url: None,
            trace_query_url: None,
            token: None,
            max_sse_clients: 32,
            query_timeout: Duration::from_secs(5),
            query_max_bytes: 16 * 1024 * 1024,
            ping_interval: Duration::from_secs(10),
        }
    }
}

impl Default for BridgeConfig {
    fn default() -> Self {
        BridgeConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            dashboard_listen: Some(SocketAddr::from(([127, 0, 0, 1], 3030))),
            heartbeat_timeout: Duration::from_secs(15),
            heartbeat_interval: Duration::from_secs(5),
            max_payload_bytes: 4 * 1024 * 1024,
            subscription_queue: 1024,
            outbound_queue: 256,
            default_action_timeout: Duration::from_secs(30),
            hello_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(5),
            dashboard: DashboardSettings::default(),
        }
    }
}

impl BridgeConfig {
    /// Transport-level message limit: room for the largest payload plus metadata, so an
    /// oversized payload is refused per publish (the stream survives) rather than by the codec.
    pub fn max_message_bytes(&self) -> usize {
        self.max_payload_bytes
            .saturating_mul(2)
            .saturating_add(1 << 20)
    }
}
