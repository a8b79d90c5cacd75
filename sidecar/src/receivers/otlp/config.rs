//! The otlp receiver's YAML: `protocols.grpc` / `protocols.http` (each a listener with a size
//! limit and optional TLS) and `auth`.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Deserialize;

use super::DEFAULT_MAX_BYTES;
use crate::component::ReceiverSpec;
use crate::config::{parse_as, parse_endpoint, ComponentYaml, ConfigError};
use crate::receivers::auth::{AuthConfig, BearerAuth};
use crate::receivers::tls::{ServerTls, ServerTlsConfig};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct GrpcConfig {
    #[serde(default = "default_grpc")]
    endpoint: String,
    #[serde(default = "default_max_mib")]
    max_recv_msg_size_mib: usize,
    /// TLS (and mTLS with `client_ca_file`); plaintext without it.
    #[serde(default)]
    tls: Option<ServerTlsConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpConfig {
    #[serde(default = "default_http")]
    endpoint: String,
    /// Bytes, after decompression.
    #[serde(default = "default_max_bytes")]
    max_request_body_size: usize,
    /// TLS (and mTLS with `client_ca_file`); plaintext without it.
    #[serde(default)]
    tls: Option<ServerTlsConfig>,
}

fn default_grpc() -> String {
    "127.0.0.1:4317".into()
}
fn default_http() -> String {
    "127.0.0.1:4318".into()
}
fn default_max_mib() -> usize {
    DEFAULT_MAX_BYTES >> 20
}
fn default_max_bytes() -> usize {
    DEFAULT_MAX_BYTES
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Protocols {
    #[serde(default, deserialize_with = "present")]
    grpc: Option<Option<GrpcConfig>>,
    #[serde(default, deserialize_with = "present")]
    http: Option<Option<HttpConfig>>,
}

/// `grpc:` with no body means "on, with defaults", as in the Collector.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct OtlpConfig {
    protocols: Protocols,
    /// Bearer-token authentication on both protocols.
    #[serde(default)]
    auth: Option<AuthConfig>,
}

/// One protocol's listener, checked.
#[derive(Clone)]
pub struct Listener {
    pub addr: SocketAddr,
    /// Bytes of one request after decompression.
    pub max: usize,
    pub tls: Option<ServerTls>,
}

/// The checked config, ready to start.
pub struct Spec {
    pub grpc: Option<Listener>,
    pub http: Option<Listener>,
    pub auth: Option<Arc<BearerAuth>>,
}

fn default_grpc_config() -> GrpcConfig {
    GrpcConfig {
        endpoint: default_grpc(),
        max_recv_msg_size_mib: default_max_mib(),
        tls: None,
    }
}

fn default_http_config() -> HttpConfig {
    HttpConfig {
        endpoint: default_http(),
        max_request_body_size: default_max_bytes(),
        tls: None,
    }
}

/// Checks one protocol's settings, both protocols alike: `at` is its YAML path, `limit` the
/// name and value of its size setting, `max` that limit in bytes.
fn listener(
    at: &str,
    endpoint: &str,
    limit: (&str, usize),
    max: usize,
    tls: &Option<ServerTlsConfig>,
) -> Result<Listener, ConfigError> {
    let addr = parse_endpoint(endpoint)
        .map_err(|m| ConfigError::at(format!("{at}.endpoint"), m.to_string()))?;
    if limit.1 == 0 {
        return Err(ConfigError::at(
            format!("{at}.{}", limit.0),
            "must be greater than 0",
        ));
    }
    let tls = match tls {
        Some(t) => Some(t.load(&format!("{at}.tls"))?),
        None => None,
    };
    Ok(Listener { addr, max, tls })
}

pub fn parse(y: &ComponentYaml<'_>) -> Result<Box<dyn ReceiverSpec>, ConfigError> {
    let (v, path, ctx) = (y.value, y.path, y.ctx);
    let c: OtlpConfig = parse_as(v, path)?;
    let auth = match &c.auth {
        Some(a) => Some(Arc::new(a.resolve(path, ctx)?)),
        None => None,
    };
    let grpc = match c.protocols.grpc {
        None => None,
        Some(g) => {
            let g = g.unwrap_or_else(default_grpc_config);
            Some(listener(
                &format!("{path}.protocols.grpc"),
                &g.endpoint,
                ("max_recv_msg_size_mib", g.max_recv_msg_size_mib),
                g.max_recv_msg_size_mib.saturating_mul(1024 * 1024),
                &g.tls,
            )?)
        }
    };
    let http = match c.protocols.http {
        None => None,
        Some(h) => {
            let h = h.unwrap_or_else(default_http_config);
            Some(listener(
                &format!("{path}.protocols.http"),
                &h.endpoint,
                ("max_request_body_size", h.max_request_body_size),
                h.max_request_body_size,
                &h.tls,
            )?)
        }
    };
    if grpc.is_none() && http.is_none() {
        return Err(ConfigError::at(
            format!("{path}.protocols"),
            "enable grpc, http or both",
        ));
    }
    Ok(Box::new(Spec { grpc, http, auth }))
}
