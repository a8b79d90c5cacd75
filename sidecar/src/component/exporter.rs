//! The exporter contract: a checked config builds an [`Exporter`] plus the settings of the
//! sending queue that feeds it.

use std::sync::Arc;
use std::time::Duration;

use super::sending_queue::{QueueConfig, RetryConfig};
use super::BoxFuture;
use crate::config::ComponentId;
use crate::metrics::Metrics;
use crate::model::Batch;

/// What a backend said about a delivered batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportOk {
    /// `partial_success.rejected_spans`.
    pub rejected_spans: u64,
}

/// A failed export, classified per the OTLP spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportError {
    pub retryable: bool,
    /// The backend's hint (gRPC RetryInfo / HTTP Retry-After).
    pub retry_after: Option<Duration>,
    /// Metric label, e.g. `grpc_unavailable`, `http_400`, `connect`.
    pub reason: String,
    pub message: String,
}

impl ExportError {
    pub fn permanent(reason: impl Into<String>, message: impl Into<String>) -> ExportError {
        ExportError {
            retryable: false,
            retry_after: None,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn retryable(
        reason: impl Into<String>,
        message: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> ExportError {
        ExportError {
            retryable: true,
            retry_after,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

pub trait Exporter: Send + Sync {
    fn export(&self, batch: Arc<Batch>) -> BoxFuture<'static, Result<ExportOk, ExportError>>;

    /// Called at shutdown once this exporter's own queue is drained: close what it holds (an
    /// exporter that queues further, like loadbalancing's per-backend queues) and resolve when
    /// that is delivered or given up. The caller bounds it by the grace period and drops the
    /// future when that runs out; the exporter then stops retrying and counts what is left.
    fn shutdown(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// What an exporter may use when it is built.
pub struct BuildCtx {
    pub metrics: Arc<Metrics>,
}

/// A checked exporter config, ready to build.
pub trait ExporterSpec: Send + Sync {
    fn build(&self, id: &ComponentId, ctx: &BuildCtx) -> Result<Built, BuildError>;
}

/// Why an exporter could not be built from its checked config.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A file the config names cannot be read, created or opened.
    #[error("{what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// A setting the client library refused (endpoint, header, TLS material).
    #[error("{what}: {message}")]
    Refused { what: String, message: String },
}

impl BuildError {
    pub fn file(what: &'static str, path: impl std::fmt::Display, source: std::io::Error) -> Self {
        BuildError::File {
            what,
            path: path.to_string(),
            source,
        }
    }

    pub fn refused(what: impl Into<String>, error: impl std::fmt::Display) -> Self {
        BuildError::Refused {
            what: what.into(),
            message: error.to_string(),
        }
    }
}

pub struct Built {
    pub exporter: Arc<dyn Exporter>,
    pub queue: QueueConfig,
    pub retry: RetryConfig,
}
