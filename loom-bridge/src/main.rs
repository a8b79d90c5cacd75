//! `loom-bridge`: the gRPC Bridge binary (telemetry from the env, clean shutdown on SIGTERM/SIGINT).

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
use loom_bridge::auth::Auth;
use loom_bridge::config::Limits;
use loom_bridge::tls::TlsFiles;
use loom_bridge::{config, serve, Bridge, BridgeConfig};

/// Lets Python (and other out-of-process) agents join the Loom EventBus and ActionBroker.
#[derive(Debug, Parser)]
#[command(name = "loom-bridge", version)]
struct Cli {
    /// gRPC listen address (loom.v1.Bridge) [env: LOOM_BRIDGE_LISTEN, else LOOM_BRIDGE_ADDR]
    /// [default: 127.0.0.1:50051].
    #[arg(long)]
    listen: Option<String>,
    /// Dashboard listen address (JSON API + page), or "off" [env: LOOM_BRIDGE_DASHBOARD, else
    /// LOOM_DASHBOARD + LOOM_DASHBOARD_HOST + LOOM_DASHBOARD_PORT] [default: 127.0.0.1:3030].
    #[arg(long)]
    dashboard_listen: Option<String>,
    /// Deregister agents silent for this long (e.g. 15s, 500ms).
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration)]
    heartbeat_timeout: Duration,
    /// Largest event payload accepted, in bytes.
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    max_payload_bytes: usize,
    /// Per-subscription queue bound (drop-oldest or backpressure per QoS).
    #[arg(long, default_value_t = 1024)]
    subscription_queue: usize,
    /// Per-agent outbound stream queue bound.
    #[arg(long, default_value_t = 256)]
    outbound_queue: usize,
    /// Timeout of action calls that carry none.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    action_timeout: Duration,
    /// Jaeger UI base URL: dashboard events link to `{url}/trace/{trace_id}`.
    #[arg(long, env = "LOOM_JAEGER_UI_URL")]
    jaeger_ui_url: Option<String>,
    /// Trace query service (Jaeger api_v3) the dashboard's timeline reads traces from.
    #[arg(long, env = "LOOM_TRACE_QUERY_URL")]
    trace_query_url: Option<String>,
    /// PEM certificate chain: serve gRPC over TLS (with --tls-key-file).
    #[arg(long, env = config::ENV_TLS_CERT_FILE)]
    tls_cert_file: Option<String>,
    /// PEM private key of --tls-cert-file.
    #[arg(long, env = config::ENV_TLS_KEY_FILE)]
    tls_key_file: Option<String>,
    /// PEM CA bundle: agents must present a client certificate it signed (mutual TLS).
    #[arg(long, env = config::ENV_TLS_CLIENT_CA_FILE)]
    tls_client_ca_file: Option<String>,
    /// Bearer tokens agents must send (one per line, or YAML `tokens:` with per-token rules;
    /// docs/bridge-security.md). Without it any client that reaches the port is trusted.
    #[arg(long, env = config::ENV_TOKENS_FILE)]
    tokens_file: Option<String>,
    /// Most agents registered at once [default: 1024].
    #[arg(long, env = "LOOM_BRIDGE_MAX_AGENTS")]
    max_agents: Option<usize>,
    /// Most subscriptions per agent [default: 256].
    #[arg(long, env = "LOOM_BRIDGE_MAX_SUBSCRIPTIONS_PER_AGENT")]
    max_subscriptions_per_agent: Option<usize>,
    /// Most capabilities per agent [default: 256].
    #[arg(long, env = "LOOM_BRIDGE_MAX_CAPABILITIES_PER_AGENT")]
    max_capabilities_per_agent: Option<usize>,
    /// Most action calls in flight per agent, served or made [default: 1024].
    #[arg(long, env = "LOOM_BRIDGE_MAX_INFLIGHT_ACTIONS_PER_AGENT")]
    max_inflight_actions_per_agent: Option<usize>,
    /// Publishes per second per agent, 0 = no limit [default: 0].
    #[arg(long, env = "LOOM_BRIDGE_PUBLISH_RATE")]
    publish_rate: Option<f64>,
    /// Publishes an agent may send at once above --publish-rate [default: 1000].
    #[arg(long, env = "LOOM_BRIDGE_PUBLISH_BURST")]
    publish_burst: Option<u32>,
}

impl Cli {
    /// The limits, each flag (or variable) over `Limits::default()`.
    fn limits(&self) -> anyhow::Result<Limits> {
        let d = Limits::default();
        let limits = Limits {
            max_agents: self.max_agents.unwrap_or(d.max_agents),
            max_subscriptions_per_agent: self
                .max_subscriptions_per_agent
                .unwrap_or(d.max_subscriptions_per_agent),
            max_capabilities_per_agent: self
                .max_capabilities_per_agent
                .unwrap_or(d.max_capabilities_per_agent),
            max_inflight_actions_per_agent: self
                .max_inflight_actions_per_agent
                .unwrap_or(d.max_inflight_actions_per_agent),
            publish_rate: self.publish_rate.unwrap_or(d.publish_rate),
            publish_burst: self.publish_burst.unwrap_or(d.publish_burst),
        };
        for (name, v) in [
            ("--max-agents", limits.max_agents),
            (
                "--max-inflight-actions-per-agent",
                limits.max_inflight_actions_per_agent,
            ),
        ] {
            if v == 0 {
                anyhow::bail!("{name} must be at least 1");
            }
        }
        if !limits.publish_rate.is_finite() || limits.publish_rate < 0.0 {
            anyhow::bail!(
                "--publish-rate {}: expected events per second, 0 or more (0 = no limit)",
                limits.publish_rate
            );
        }
        if limits.publish_burst == 0 {
            anyhow::bail!("--publish-burst must be at least 1");
        }
        Ok(limits)
    }
}

/// An http(s) base URL without a trailing slash; `flag` names it in the error.
fn base_url(flag: &str, url: Option<String>) -> anyhow::Result<Option<String>> {
    let Some(u) = url.filter(|u| !u.is_empty()) else {
        return Ok(None);
    };
    let rest = u
        .strip_prefix("http://")
        .or_else(|| u.strip_prefix("https://"))
        .with_context(|| format!("{flag} {u:?}: expected an http:// or https:// URL"))?;
    if rest.is_empty()
        || rest.starts_with('/')
        || u.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        anyhow::bail!("{flag} {u:?}: expected an http:// or https:// URL with a host");
    }
    Ok(Some(u.trim_end_matches('/').to_owned()))
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutdown signal received: closing agent streams");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Flag > our variable > upstream Loom's variables > default (config::resolve_*).
    let env = |k: &str| std::env::var(k).ok();
    let listen = config::resolve_listen(cli.listen.as_deref(), &env)?;
    let dashboard_listen = config::resolve_dashboard(cli.dashboard_listen.as_deref(), &env)?;
    if cli.heartbeat_timeout.is_zero() {
        anyhow::bail!("--heartbeat-timeout must be greater than zero");
    }
    // Read from the environment only: a token on the command line would show in `ps`.
    let token = std::env::var("LOOM_DASHBOARD_TOKEN")
        .ok()
        .filter(|t| !t.is_empty());
    if let (Some(addr), None) = (dashboard_listen, &token) {
        if !addr.ip().is_loopback() {
            anyhow::bail!(
                "--dashboard-listen {addr} is not a loopback address: set LOOM_DASHBOARD_TOKEN so the dashboard asks for it"
            );
        }
    }
    let limits = cli.limits()?;
    let dashboard_settings = loom_bridge::config::DashboardSettings {
        jaeger_ui_url: base_url("--jaeger-ui-url", cli.jaeger_ui_url)?,
        trace_query_url: base_url("--trace-query-url", cli.trace_query_url)?,
        token,
        ..Default::default()
    };
    let tls = TlsFiles {
        cert_file: cli.tls_cert_file.clone().filter(|s| !s.is_empty()),
        key_file: cli.tls_key_file.clone().filter(|s| !s.is_empty()),
        client_ca_file: cli.tls_client_ca_file.clone().filter(|s| !s.is_empty()),
    }
    .load(("--tls-cert-file", "--tls-key-file", "--tls-client-ca-file"))?;
    let auth = match cli.tokens_file.as_deref().filter(|s| !s.is_empty()) {
        Some(path) => Some(std::sync::Arc::new(
            Auth::from_file(path).context("--tokens-file")?,
        )),
        None => None,
    };
    let telemetry = loom_core::telemetry::init_telemetry("loom-bridge")
        .context("telemetry set-up (OTEL_* environment)")?;

    let config = BridgeConfig {
        listen,
        dashboard_listen,
        heartbeat_timeout: cli.heartbeat_timeout,
        heartbeat_interval: (cli.heartbeat_timeout / 3).max(Duration::from_millis(10)),
        max_payload_bytes: cli.max_payload_bytes,
        subscription_queue: cli.subscription_queue.max(1),
        outbound_queue: cli.outbound_queue.max(1),
        default_action_timeout: cli.action_timeout,
        dashboard: dashboard_settings,
        tls,
        auth,
        limits,
        ..BridgeConfig::default()
    };
    if config.auth.is_none() && !config.listen.ip().is_loopback() {
        tracing::warn!(listen = %config.listen, "no --tokens-file: any client that reaches this address can register as any agent");
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("binding gRPC listener {}", config.listen))?;
    let dashboard = match config.dashboard_listen {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding dashboard listener {addr}"))?,
        ),
        None => None,
    };
    let addr = listener.local_addr()?;
    // Tests and the runner wait for this exact line.
    println!("loom-bridge listening on {addr}");
    if let Some(d) = &dashboard {
        println!("loom-bridge dashboard on http://{}", d.local_addr()?);
    }
    tracing::info!(
        %addr,
        tls = config.tls.is_some(),
        mtls = config.tls.as_ref().is_some_and(|t| t.mutual()),
        tokens = config.auth.is_some(),
        "loom-bridge serving"
    );
    let bridge = Bridge::new(config);
    serve(bridge, listener, dashboard, shutdown_signal()).await?;
    drop(telemetry);
    tracing::info!("loom-bridge stopped");
    Ok(())
}
