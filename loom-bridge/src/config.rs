//! Bridge settings, with the defaults in one place.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::Auth;
use crate::tls::ServerTls;

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
    /// TLS (and mutual TLS) on the gRPC listener; `None` is plaintext.
    pub tls: Option<ServerTls>,
    /// Bearer tokens (and their rules) every RPC must carry; `None` lets anyone in.
    pub auth: Option<Arc<Auth>>,
    /// Bounds on what agents may hold or send.
    pub limits: Limits,
}

/// Bounds on agents: each breach is refused with RESOURCE_EXHAUSTED and a message naming it.
#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    /// Agents registered at once (live or waiting to expire).
    pub max_agents: usize,
    /// Subscriptions one agent may register.
    pub max_subscriptions_per_agent: usize,
    /// Capabilities one agent may provide.
    pub max_capabilities_per_agent: usize,
    /// Action calls in flight at once per agent: calls it serves, and ForwardAction calls it
    /// makes (counted by the call's `caller`).
    pub max_inflight_actions_per_agent: usize,
    /// Sustained publishes per second per agent (token bucket); 0 turns the limit off.
    pub publish_rate: f64,
    /// Publishes an agent may send at once above the rate (the bucket's size).
    pub publish_burst: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_agents: 1024,
            max_subscriptions_per_agent: 256,
            max_capabilities_per_agent: 256,
            max_inflight_actions_per_agent: 1024,
            // Off: every publish is acknowledged and every queue is bounded, so a fast agent
            // cannot grow memory; the rate is a fairness knob for shared bridges.
            publish_rate: 0.0,
            publish_burst: 1000,
        }
    }
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
            tls: None,
            auth: None,
            limits: Limits::default(),
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

// ---- Listen addresses from flags and the environment (issue #17) ----
//
// Precedence, per setting: command-line flag > the bridge's own variable > upstream Loom's
// variables > default. Only the source that wins is parsed, so a stale lower-priority variable
// cannot stop the bridge; a bad value in the winning one is an error naming it.

/// The bridge's own variable for [`BridgeConfig::listen`] (same as `--listen`).
pub const ENV_LISTEN: &str = "LOOM_BRIDGE_LISTEN";
/// Upstream Loom's name for the listen address; `host:port`, optionally as `http://host:port`
/// (the form agents read from the same variable).
pub const ENV_UPSTREAM_ADDR: &str = "LOOM_BRIDGE_ADDR";
/// The bridge's own variable for [`BridgeConfig::dashboard_listen`] (same as `--dashboard-listen`).
pub const ENV_DASHBOARD: &str = "LOOM_BRIDGE_DASHBOARD";
/// Upstream Loom's dashboard switch: true/false/1/0 (also on/off).
pub const ENV_UPSTREAM_DASHBOARD: &str = "LOOM_DASHBOARD";
/// Upstream Loom's dashboard host (an IP address or `localhost`); default 127.0.0.1.
pub const ENV_UPSTREAM_DASHBOARD_HOST: &str = "LOOM_DASHBOARD_HOST";
/// Upstream Loom's dashboard port; default 3030.
pub const ENV_UPSTREAM_DASHBOARD_PORT: &str = "LOOM_DASHBOARD_PORT";

/// TLS certificate chain of the gRPC listener (same as `--tls-cert-file`).
pub const ENV_TLS_CERT_FILE: &str = "LOOM_BRIDGE_TLS_CERT_FILE";
/// TLS private key of the gRPC listener (same as `--tls-key-file`).
pub const ENV_TLS_KEY_FILE: &str = "LOOM_BRIDGE_TLS_KEY_FILE";
/// CA bundle agents' client certificates must chain to (same as `--tls-client-ca-file`).
pub const ENV_TLS_CLIENT_CA_FILE: &str = "LOOM_BRIDGE_TLS_CLIENT_CA_FILE";
/// Bearer-token file (same as `--tokens-file`).
pub const ENV_TOKENS_FILE: &str = "LOOM_BRIDGE_TOKENS_FILE";

/// A listen setting whose value cannot be used; `name` is the flag or variable it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name} {value:?}: expected {expected}")]
pub struct SettingError {
    pub name: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// The first of `flag` (named `flag_name`) and the variables in `vars` that is set and not
/// empty, with the name it came from.
fn first_set(
    flag: Option<&str>,
    flag_name: &'static str,
    vars: &[&'static str],
    env: &dyn Fn(&str) -> Option<String>,
) -> Option<(&'static str, String)> {
    if let Some(v) = flag {
        return Some((flag_name, v.to_owned()));
    }
    vars.iter()
        .find_map(|&k| env(k).filter(|v| !v.trim().is_empty()).map(|v| (k, v)))
}

fn invalid(name: &'static str, value: &str, expected: &'static str) -> SettingError {
    SettingError {
        name,
        value: value.to_owned(),
        expected,
    }
}

/// An IP address, bracketed or not, or `localhost` (loopback v4).
fn parse_host(s: &str) -> Option<std::net::IpAddr> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("localhost") {
        return Some(std::net::Ipv4Addr::LOCALHOST.into());
    }
    s.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(s)
        .parse()
        .ok()
}

/// The gRPC listen address: `--listen` (`flag`), else `LOOM_BRIDGE_LISTEN`, else
/// `LOOM_BRIDGE_ADDR`, else the default. `env` looks a variable up (`std::env::var` in the binary).
pub fn resolve_listen(
    flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<SocketAddr, SettingError> {
    let Some((name, value)) = first_set(flag, "--listen", &[ENV_LISTEN, ENV_UPSTREAM_ADDR], env)
    else {
        return Ok(BridgeConfig::default().listen);
    };
    let v = value.trim();
    if name == ENV_UPSTREAM_ADDR {
        let hostport = v.strip_prefix("http://").unwrap_or(v).trim_end_matches('/');
        let parsed = hostport
            .rsplit_once(':')
            .and_then(|(h, p)| Some(SocketAddr::new(parse_host(h)?, p.parse().ok()?)));
        return parsed.ok_or_else(|| {
            invalid(
                name,
                &value,
                "host:port or http://host:port, host an IP address or localhost",
            )
        });
    }
    v.parse()
        .map_err(|_| invalid(name, &value, "host:port with an IP address host"))
}

/// The dashboard listen address, `None` when off: `--dashboard-listen` (`flag`), else
/// `LOOM_BRIDGE_DASHBOARD` (both an address or "off"), else upstream's `LOOM_DASHBOARD` switch
/// with `LOOM_DASHBOARD_HOST`/`LOOM_DASHBOARD_PORT` (each defaulting to the default address's
/// part), else the default.
pub fn resolve_dashboard(
    flag: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<SocketAddr>, SettingError> {
    if let Some(v) = flag {
        return parse_dashboard("--dashboard-listen", v);
    }
    // Before upstream's names, and "" is "off" here as it always was.
    if let Some(v) = env(ENV_DASHBOARD) {
        return parse_dashboard(ENV_DASHBOARD, &v);
    }
    let default = BridgeConfig::default().dashboard_listen;
    let set = |k: &'static str| env(k).filter(|v| !v.trim().is_empty());
    if let Some(v) = set(ENV_UPSTREAM_DASHBOARD) {
        let on = match v.trim().to_ascii_lowercase().as_str() {
            "true" | "1" | "on" => true,
            "false" | "0" | "off" => false,
            _ => return Err(invalid(ENV_UPSTREAM_DASHBOARD, &v, "true, false, 1 or 0")),
        };
        if !on {
            return Ok(None);
        }
    }
    let host = set(ENV_UPSTREAM_DASHBOARD_HOST);
    let port = set(ENV_UPSTREAM_DASHBOARD_PORT);
    let base = default.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 3030)));
    let ip = match host {
        Some(h) => parse_host(&h).ok_or_else(|| {
            invalid(
                ENV_UPSTREAM_DASHBOARD_HOST,
                &h,
                "an IP address or localhost",
            )
        })?,
        None => base.ip(),
    };
    let port = match port {
        Some(p) => p.trim().parse::<u16>().map_err(|_| {
            invalid(
                ENV_UPSTREAM_DASHBOARD_PORT,
                &p,
                "a port number from 0 to 65535",
            )
        })?,
        None => base.port(),
    };
    Ok(Some(SocketAddr::new(ip, port)))
}

fn parse_dashboard(name: &'static str, v: &str) -> Result<Option<SocketAddr>, SettingError> {
    match v.trim() {
        "off" | "" => Ok(None),
        s => s
            .parse()
            .map(Some)
            .map_err(|_| invalid(name, v, "host:port or \"off\"")),
    }
}

#[cfg(test)]
mod env_tests {
    use std::collections::HashMap;

    use super::*;

    fn env<'a>(vars: &'a [(&str, &str)]) -> impl Fn(&str) -> Option<String> + 'a {
        let map: HashMap<&str, &str> = vars.iter().copied().collect();
        move |k| map.get(k).map(|v| (*v).to_owned())
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn listen_precedence_is_flag_then_own_env_then_upstream_then_default() {
        let all = [
            ("LOOM_BRIDGE_LISTEN", "127.0.0.1:2002"),
            ("LOOM_BRIDGE_ADDR", "127.0.0.1:3003"),
        ];
        assert_eq!(
            resolve_listen(Some("127.0.0.1:1001"), &env(&all)),
            Ok(addr("127.0.0.1:1001"))
        );
        let empty: &[(&str, &str)] = &[];
        for (vars, want) in [
            (&all[..], "127.0.0.1:2002"),
            (&all[1..], "127.0.0.1:3003"),
            (empty, "127.0.0.1:50051"),
            // Empty counts as unset.
            (
                &[
                    ("LOOM_BRIDGE_LISTEN", ""),
                    ("LOOM_BRIDGE_ADDR", "[::1]:4004"),
                ],
                "[::1]:4004",
            ),
            // A bad value that loses to a higher-priority one is never read.
            (
                &[
                    ("LOOM_BRIDGE_LISTEN", "127.0.0.1:2002"),
                    ("LOOM_BRIDGE_ADDR", "garbage"),
                ],
                "127.0.0.1:2002",
            ),
        ] {
            assert_eq!(resolve_listen(None, &env(vars)), Ok(addr(want)), "{vars:?}");
        }
    }

    #[test]
    fn upstream_addr_takes_the_agents_url_form_and_localhost() {
        for (v, want) in [
            ("http://127.0.0.1:50052", "127.0.0.1:50052"),
            ("http://localhost:50053/", "127.0.0.1:50053"),
            ("0.0.0.0:50054", "0.0.0.0:50054"),
            ("http://[::1]:50055", "[::1]:50055"),
        ] {
            let vars = [("LOOM_BRIDGE_ADDR", v)];
            assert_eq!(resolve_listen(None, &env(&vars)), Ok(addr(want)), "{v}");
        }
    }

    #[test]
    fn a_bad_listen_value_names_its_source() {
        let e = resolve_listen(Some("nope"), &env(&[])).unwrap_err();
        assert_eq!(e.name, "--listen");
        let e = resolve_listen(None, &env(&[("LOOM_BRIDGE_LISTEN", "localhost")])).unwrap_err();
        assert_eq!(e.name, "LOOM_BRIDGE_LISTEN");
        for bad in [
            "https://127.0.0.1:1",
            "example.com:80",
            "127.0.0.1",
            "127.0.0.1:99999",
        ] {
            let e = resolve_listen(None, &env(&[("LOOM_BRIDGE_ADDR", bad)])).unwrap_err();
            assert_eq!(e.name, "LOOM_BRIDGE_ADDR");
            assert!(e
                .to_string()
                .starts_with(&format!("LOOM_BRIDGE_ADDR {bad:?}: expected")));
        }
    }

    #[test]
    fn dashboard_precedence_is_flag_then_own_env_then_upstream_then_default() {
        let all = [
            ("LOOM_BRIDGE_DASHBOARD", "127.0.0.1:2002"),
            ("LOOM_DASHBOARD", "true"),
            ("LOOM_DASHBOARD_HOST", "0.0.0.0"),
            ("LOOM_DASHBOARD_PORT", "3003"),
        ];
        assert_eq!(
            resolve_dashboard(Some("127.0.0.1:1001"), &env(&all)),
            Ok(Some(addr("127.0.0.1:1001")))
        );
        assert_eq!(resolve_dashboard(Some("off"), &env(&all)), Ok(None));
        assert_eq!(
            resolve_dashboard(None, &env(&all)),
            Ok(Some(addr("127.0.0.1:2002")))
        );
        let own_off = [("LOOM_BRIDGE_DASHBOARD", "off"), ("LOOM_DASHBOARD", "1")];
        assert_eq!(resolve_dashboard(None, &env(&own_off)), Ok(None));
        assert_eq!(
            resolve_dashboard(None, &env(&all[1..])),
            Ok(Some(addr("0.0.0.0:3003")))
        );
        assert_eq!(
            resolve_dashboard(None, &env(&[])),
            Ok(Some(addr("127.0.0.1:3030")))
        );
    }

    #[test]
    fn upstream_dashboard_switch_host_and_port_combine() {
        for (vars, want) in [
            (&[("LOOM_DASHBOARD", "false")][..], None),
            (
                &[("LOOM_DASHBOARD", "0"), ("LOOM_DASHBOARD_PORT", "9")][..],
                None,
            ),
            (&[("LOOM_DASHBOARD", "TRUE")][..], Some("127.0.0.1:3030")),
            (
                &[("LOOM_DASHBOARD_PORT", "8080")][..],
                Some("127.0.0.1:8080"),
            ),
            (&[("LOOM_DASHBOARD_HOST", "::1")][..], Some("[::1]:3030")),
            (
                &[
                    ("LOOM_DASHBOARD_HOST", "localhost"),
                    ("LOOM_DASHBOARD_PORT", "0"),
                ][..],
                Some("127.0.0.1:0"),
            ),
        ] {
            assert_eq!(
                resolve_dashboard(None, &env(vars)),
                Ok(want.map(addr)),
                "{vars:?}"
            );
        }
    }

    #[test]
    fn a_bad_dashboard_value_names_its_variable() {
        for (vars, name) in [
            (
                &[("LOOM_BRIDGE_DASHBOARD", "yes please")][..],
                "LOOM_BRIDGE_DASHBOARD",
            ),
            (&[("LOOM_DASHBOARD", "maybe")][..], "LOOM_DASHBOARD"),
            (
                &[("LOOM_DASHBOARD_HOST", "dash.example")][..],
                "LOOM_DASHBOARD_HOST",
            ),
            (
                &[("LOOM_DASHBOARD_PORT", "70000")][..],
                "LOOM_DASHBOARD_PORT",
            ),
            (&[("LOOM_DASHBOARD_PORT", "-1")][..], "LOOM_DASHBOARD_PORT"),
        ] {
            let e = resolve_dashboard(None, &env(vars)).unwrap_err();
            assert_eq!(e.name, name, "{vars:?}");
        }
        let e = resolve_dashboard(Some("nope"), &env(&[])).unwrap_err();
        assert_eq!(e.name, "--dashboard-listen");
        assert_eq!(
            e.to_string(),
            "--dashboard-listen \"nope\": expected host:port or \"off\""
        );
    }
}
