//! `loom-bridge`: the gRPC Bridge binary (telemetry from the env, clean shutdown on SIGTERM/SIGINT).

use std::time::Duration;

use anyhow::Context as _;
use clap::Parser;
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
    let dashboard_settings = loom_bridge::config::DashboardSettings {
        jaeger_ui_url: base_url("--jaeger-ui-url", cli.jaeger_ui_url)?,
        trace_query_url: base_url("--trace-query-url", cli.trace_query_url)?,
        token,
        ..Default::default()
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
        ..BridgeConfig::default()
    };
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
    tracing::info!(%addr, "loom-bridge serving");
    let bridge = Bridge::new(config);
    serve(bridge, listener, dashboard, shutdown_signal()).await?;
    drop(telemetry);
    tracing::info!("loom-bridge stopped");
    Ok(())
}
