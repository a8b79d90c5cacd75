//! loadbalancing's YAML, the Collector's shape: `routing_key`, `protocol.otlp` (the otlp
//! exporter's settings without `endpoint`, which each backend fills in) and `resolver.static` or
//! `resolver.dns`; plus `virtual_nodes`.

use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;

use super::ring::DEFAULT_VIRTUAL_NODES;
use crate::config::{one_of, parse_as, ConfigError, OneOf};
use crate::exporters::{otlp, QueueConfig};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    routing_key: RoutingKey,
    protocol: Protocol,
    resolver: Resolver,
    #[serde(default = "default_vnodes")]
    virtual_nodes: usize,
    /// The queue in front of the router (each backend has its own, from `protocol.otlp`).
    #[serde(default)]
    sending_queue: QueueConfig,
}

fn default_vnodes() -> usize {
    DEFAULT_VIRTUAL_NODES
}

/// What decides a span's backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum RoutingKey {
    /// All spans of a trace reach one backend (what tail sampling needs).
    #[default]
    #[serde(rename = "traceID")]
    TraceId,
    /// All spans of a service (resource `service.name`) reach one backend.
    #[serde(rename = "service")]
    Service,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Protocol {
    otlp: Value,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Resolver {
    #[serde(default, rename = "static")]
    fixed: Option<StaticResolver>,
    #[serde(default)]
    dns: Option<DnsResolver>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StaticResolver {
    hostnames: Vec<String>,
}

/// `resolver.dns`: every address `hostname` resolves to is a backend (a Kubernetes headless
/// Service gives one per ready pod), looked up again every `interval`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsResolver {
    pub hostname: String,
    #[serde(default = "default_port")]
    pub port: u16,
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_dns_timeout", with = "humantime_serde")]
    pub timeout: Duration,
}

fn default_port() -> u16 {
    4317
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_dns_timeout() -> Duration {
    Duration::from_secs(1)
}

/// Where the backend set comes from.
#[derive(Debug, Clone)]
pub enum Members {
    Static(Vec<String>),
    Dns(DnsResolver),
}

/// A checked `loadbalancing` config.
#[derive(Debug)]
pub struct Settings {
    pub routing_key: RoutingKey,
    pub members: Members,
    pub virtual_nodes: usize,
    pub queue: QueueConfig,
    /// `protocol.otlp` as written; [`Settings::backend`] adds the endpoint.
    otlp: serde_yaml::Mapping,
    otlp_path: String,
}

impl Settings {
    /// The otlp exporter settings for one backend.
    pub fn backend(
        &self,
        endpoint: &str,
    ) -> Result<Box<dyn crate::exporters::ExporterSpec>, ConfigError> {
        let mut m = self.otlp.clone();
        m.insert(Value::from("endpoint"), Value::from(endpoint));
        otlp::spec_from(&Value::Mapping(m), &self.otlp_path)
    }
}

pub fn parse_settings(v: &Value, path: &str) -> Result<Settings, ConfigError> {
    let r: Raw = parse_as(v, path)?;
    let otlp_path = format!("{path}.protocol.otlp");
    let otlp = match r.protocol.otlp {
        Value::Null => serde_yaml::Mapping::new(),
        Value::Mapping(m) => m,
        _ => return Err(ConfigError::at(otlp_path, "expected a mapping")),
    };
    if otlp.contains_key("endpoint") {
        return Err(ConfigError::at(
            format!("{otlp_path}.endpoint"),
            "set by the resolver for each backend; remove it",
        ));
    }
    if r.virtual_nodes == 0 || r.virtual_nodes > 10_000 {
        return Err(ConfigError::at(
            format!("{path}.virtual_nodes"),
            format!("{} is not within 1..=10000", r.virtual_nodes),
        ));
    }
    r.sending_queue.validate(path)?;
    if r.sending_queue.storage.is_some() {
        return Err(ConfigError::at(
            format!("{path}.sending_queue.storage"),
            "not supported in front of the router; each backend's queue is protocol.otlp.sending_queue",
        ));
    }
    let given = one_of(
        &format!("{path}.resolver"),
        ("static.hostnames", r.resolver.fixed),
        ("dns.hostname", r.resolver.dns),
    )?;
    let members = match given {
        OneOf::First(s) => {
            if s.hostnames.is_empty() {
                return Err(ConfigError::at(
                    format!("{path}.resolver.static.hostnames"),
                    "list at least one backend (host:port)",
                ));
            }
            Members::Static(s.hostnames)
        }
        OneOf::Second(d) => {
            if d.hostname.trim().is_empty() || d.hostname.contains(':') {
                return Err(ConfigError::at(
                    format!("{path}.resolver.dns.hostname"),
                    format!(
                        "{:?}: expected a host name (the port is resolver.dns.port)",
                        d.hostname
                    ),
                ));
            }
            if d.interval.is_zero() || d.timeout.is_zero() {
                return Err(ConfigError::at(
                    format!("{path}.resolver.dns"),
                    "interval and timeout must be greater than 0",
                ));
            }
            Members::Dns(d)
        }
    };
    let s = Settings {
        routing_key: r.routing_key,
        members,
        virtual_nodes: r.virtual_nodes,
        queue: r.sending_queue,
        otlp,
        otlp_path,
    };
    // Every backend's exporter settings are checked now, not when it appears; an endpoint
    // problem is the host list's, anything else stays at its protocol.otlp path.
    let endpoint_path = format!("{}.endpoint", s.otlp_path);
    match &s.members {
        Members::Static(hosts) => {
            for (i, h) in hosts.iter().enumerate() {
                s.backend(h).map_err(|e| {
                    if e.path == endpoint_path {
                        ConfigError::at(format!("{path}.resolver.static.hostnames[{i}]"), e.message)
                    } else {
                        e
                    }
                })?;
            }
        }
        Members::Dns(d) => {
            s.backend(&format!("{}:{}", d.hostname, d.port))?;
        }
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Settings, ConfigError> {
        crate::config::parse_yaml(yaml, "exporters.loadbalancing", parse_settings)
    }

    #[test]
    fn takes_the_collector_shape_and_names_the_path_of_each_mistake() {
        let s = parse(
            "routing_key: traceID\nprotocol:\n  otlp:\n    timeout: 1s\n    tls: {insecure: true}\n\
             resolver:\n  dns: {hostname: gateway-headless, port: 4317, interval: 2s}\n",
        )
        .expect("valid");
        assert!(matches!(s.members, Members::Dns(ref d) if d.interval == Duration::from_secs(2)));
        let s = parse(
            "routing_key: service\nprotocol: {otlp: {tls: {insecure: true}}}\n\
             resolver: {static: {hostnames: ['127.0.0.1:4317', 'gw-2:4317']}}\n",
        )
        .expect("valid");
        assert_eq!(s.routing_key, RoutingKey::Service);
        let cases = [
            (
                "protocol: {otlp: {endpoint: 'x:1'}}\nresolver: {static: {hostnames: ['a:1']}}",
                "exporters.loadbalancing.protocol.otlp.endpoint",
            ),
            (
                "protocol: {otlp: {}}\nresolver: {static: {hostnames: []}}",
                "exporters.loadbalancing.resolver.static.hostnames",
            ),
            (
                "protocol: {otlp: {tls: {insecure: true}}}\nresolver: {static: {hostnames: ['a:1', 'ftp://b']}}",
                "exporters.loadbalancing.resolver.static.hostnames[1]",
            ),
            (
                "protocol: {otlp: {}}\nresolver: {}",
                "exporters.loadbalancing.resolver",
            ),
            (
                "routing_key: spanID\nprotocol: {otlp: {}}\nresolver: {static: {hostnames: ['a:1']}}",
                "exporters.loadbalancing",
            ),
            (
                "protocol: {otlp: {compression: zstd}}\nresolver: {static: {hostnames: ['a:1']}}",
                "exporters.loadbalancing.protocol.otlp.compression",
            ),
            (
                "protocol: {otlp: {}}\nresolver: {dns: {hostname: 'gw:4317'}}",
                "exporters.loadbalancing.resolver.dns.hostname",
            ),
        ];
        crate::config::assert_errors_at(parse_settings, "exporters.loadbalancing", &cases);
    }
}
