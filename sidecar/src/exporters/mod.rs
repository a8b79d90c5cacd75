//! Exporters: where batches go. Each exporter sits behind its own bounded sending queue
//! ([`queue`] in memory, [`persistent_queue`] on disk) whose consumers send with [`retry`].
//! [`settings`] holds what the network exporters share, [`encoded`] the batch's request bodies.

pub mod debug;
pub mod encoded;
pub mod file;
pub mod loadbalancing;
pub mod otlp;
pub mod otlphttp;
pub mod persistent_queue;
pub mod queue;
pub mod retry;
pub mod settings;
pub mod trace_store;

pub use crate::component::exporter::{
    BuildCtx, BuildError, Built, ExportError, ExportOk, Exporter, ExporterSpec,
};
pub use crate::component::sending_queue::{QueueConfig, RetryConfig};
pub use crate::component::BoxFuture;
use crate::component::Factory;
pub use queue::{start_queue, ExporterQueue};
pub use retry::{send_with_retry, Outcome};
pub use settings::{gzip_setting, validate_headers, TlsConfig};

/// Every exporter type, by YAML name.
pub const FACTORIES: &[Factory<dyn ExporterSpec>] = &[
    otlp::FACTORY,
    otlphttp::FACTORY,
    debug::FACTORY,
    file::FACTORY,
    trace_store::FACTORY,
    loadbalancing::FACTORY,
];
