//! The receiver contract: a checked config that starts listeners and hands each request to a
//! [`Consumer`] (the pipelines' fan-in), never to a pipeline directly.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::{BoxFuture, Refusal};
use crate::config::ComponentId;
use crate::metrics::Metrics;
use crate::model::ResourceSpans;

/// One bound listener, reported on stdout as `listening <component> <kind> <addr>`.
#[derive(Debug, Clone)]
pub struct Listening {
    pub component: String,
    pub kind: &'static str,
    pub addr: SocketAddr,
}

/// Why a receiver or extension could not start: its listener, named by YAML path.
#[derive(Debug, thiserror::Error)]
pub enum ListenError {
    /// Binding the socket (or reading its address back) failed.
    #[error("{at}: cannot listen on {addr}: {source}")]
    Bind {
        at: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The listener's TLS could not be set up.
    #[error("{at}.tls: {message}")]
    Tls { at: String, message: String },
}

impl ListenError {
    /// Binds a TCP listener at `addr`; errors name `at`.
    pub async fn bind(
        at: impl Into<String>,
        addr: SocketAddr,
    ) -> Result<(tokio::net::TcpListener, SocketAddr), ListenError> {
        let at = at.into();
        let bound = tokio::net::TcpListener::bind(addr)
            .await
            .and_then(|l| l.local_addr().map(|local| (l, local)));
        bound.map_err(|source| ListenError::Bind { at, addr, source })
    }
}

/// What a started receiver or extension leaves running.
pub struct Started {
    pub listening: Vec<Listening>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Where a receiver hands what it decoded: the pipelines it feeds.
pub trait Consumer: Send + Sync {
    /// Resolves to the spans kept, or the refusal the client should see. `encoded_len` is the
    /// request's size on the wire, for memory accounting.
    fn consume(
        &self,
        spans: Vec<ResourceSpans>,
        encoded_len: usize,
    ) -> BoxFuture<'_, Result<usize, Refusal>>;
}

pub struct ReceiverCtx {
    pub consumer: Arc<dyn Consumer>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the sidecar starts draining: stop accepting, finish in-flight requests.
    pub shutdown: CancellationToken,
}

/// A checked receiver config, ready to start.
pub trait ReceiverSpec: Send + Sync {
    fn start(
        &self,
        id: &ComponentId,
        ctx: ReceiverCtx,
    ) -> BoxFuture<'static, Result<Started, ListenError>>;
}
