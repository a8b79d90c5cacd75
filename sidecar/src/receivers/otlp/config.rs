//! The otlp receiver's YAML: `protocols.grpc` / `protocols.http` (each a listener with a size
//! limit and optional TLS) and `auth`.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Deserialize;

use super::DEFAULT_MAX_BYTES;
use crate::component::ReceiverSpec;
use crate::config::{endpoint_at, parse_as, require_positive, ComponentYaml, ConfigError};
use crate::receivers::auth::{AuthConfig, BearerAuth};
use crate::receivers::tls::{ServerTls, ServerTlsConfig};

/// `protocols.grpc`; a missing field takes its value from `Default`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct GrpcConfig {
    endpoint: String,
    max_recv_msg_size_mib: usize,
    /// TLS (and mTLS with `client_ca_file`); plaintext without it.
    tls: Option<ServerTlsConfig>,
}

impl Default for GrpcConfig {
    fn default() -> Self {
        GrpcConfig {
            endpoint: "127.0.0.1:4317".into(),
            max_recv_msg_size_mib: DEFAULT_MAX_BYTES >> 20,
            tls: None,
        }
    }
}

/// `protocols.http`; a missing field takes its value from `Default`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
struct HttpConfig {
    endpoint: String,
    /// Bytes, after decompression.
    max_request_body_size: usize,
    /// TLS (and mTLS with `client_ca_file`); plaintext without it.
    tls: Option<ServerTlsConfig>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            endpoint: "127.0.0.1:4318".into(),
            max_request_body_size: DEFAULT_MAX_BYTES,
            tls: None,
        }
    }
}

/// One protocol's settings, checked into a [`Listener`] at YAML path `at`.
trait Protocol: Default {
    fn listener(&self, at: &str) -> Result<Listener, ConfigError>;
}

impl Protocol for GrpcConfig {
    fn listener(&self, at: &str) -> Result<Listener, ConfigError> {
        let mib = self.max_recv_msg_size_mib;
        let limit = ("max_recv_msg_size_mib", mib);
        listener(
            at,
            &self.endpoint,
            limit,
            mib.saturating_mul(1024 * 1024),
            &self.tls,
        )
    }
}

impl Protocol for HttpConfig {
    fn listener(&self, at: &str) -> Result<Listener, ConfigError> {
        let bytes = self.max_request_body_size;
        listener(
            at,
            &self.endpoint,
            ("max_request_body_size", bytes),
            bytes,
            &self.tls,
        )
    }
}

/// The listener of `protocols.{name}` when the YAML names it (`grpc:` alone: defaults).
fn enabled<P: Protocol>(
    p: Option<Option<P>>,
    path: &str,
    name: &str,
) -> Result<Option<Listener>, ConfigError> {
    p.map(|p| {
        p.unwrap_or_default()
            .listener(&format!("{path}.protocols.{name}"))
    })
    .transpose()
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

/// Checks one protocol's settings, both protocols alike: `at` is its YAML path, `limit` the
/// name and value of its size setting, `max` that limit in bytes.
fn listener(
    at: &str,
    endpoint: &str,
    limit: (&str, usize),
    max: usize,
    tls: &Option<ServerTlsConfig>,
) -> Result<Listener, ConfigError> {
    let addr = endpoint_at(at, endpoint)?;
    require_positive(at, limit.0, limit.1)?;
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
    let grpc = enabled(c.protocols.grpc, path, "grpc")?;
    let http = enabled(c.protocols.http, path, "http")?;
    if grpc.is_none() && http.is_none() {
        return Err(ConfigError::at(
            format!("{path}.protocols"),
            "enable grpc, http or both",
        ));
    }
    Ok(Box::new(Spec { grpc, http, auth }))
}
