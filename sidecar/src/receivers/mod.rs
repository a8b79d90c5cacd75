//! Receivers: where spans enter. They decode, hand the request to their pipelines, and map
//! refusals to retryable protocol answers with retry hints.

pub mod auth;
pub mod otlp;
pub mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::model::ResourceSpans;
use tokio_util::sync::CancellationToken;

use crate::config::ComponentId;
use crate::exporters::BoxFuture;
use crate::metrics::Metrics;
use crate::pipeline::{Pipeline, Refusal};
use crate::Factory;

/// Every receiver type, by YAML name.
pub const FACTORIES: &[Factory<dyn ReceiverSpec>] = &[otlp::FACTORY];

/// One bound listener, reported on stdout as `listening <component> <kind> <addr>`.
#[derive(Debug, Clone)]
pub struct Listening {
    pub component: String,
    pub kind: &'static str,
    pub addr: SocketAddr,
}

pub struct ReceiverCtx {
    pub consumer: Arc<Fanin>,
    pub metrics: Arc<Metrics>,
    /// Cancelled when the sidecar starts draining: stop accepting, finish in-flight requests.
    pub shutdown: CancellationToken,
}

pub struct Started {
    pub listening: Vec<Listening>,
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// A checked receiver config, ready to start.
pub trait ReceiverSpec: Send + Sync {
    fn start(&self, id: &ComponentId, ctx: ReceiverCtx) -> BoxFuture<Result<Started, String>>;
}

/// The pipelines one receiver feeds; each gets every span.
pub struct Fanin {
    pub pipelines: Vec<Arc<Pipeline>>,
}

impl Fanin {
    /// Returns the spans kept by the last pipeline, or the first refusal.
    pub async fn consume(
        &self,
        rs: Vec<ResourceSpans>,
        encoded_len: usize,
    ) -> Result<usize, Refusal> {
        let Some((last, rest)) = self.pipelines.split_last() else {
            return Ok(0);
        };
        for p in rest {
            p.consume(rs.clone(), encoded_len).await?;
        }
        last.consume(rs, encoded_len).await
    }
}
