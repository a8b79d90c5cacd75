//! The bottom layer every component builds on: the component traits and their contexts, the
//! registry type, and the values that cross between layers (refusals, listeners, health).
//!
//! Layers (checked by `tests/layers.rs`): `config`, `model`, `memory`, `metrics` know nothing
//! above them; `component` builds on those; `receivers`, `processors`, `exporters` and
//! `extensions` build on `component` (and their own folder) and never on each other;
//! `pipeline`, `service` and `load` wire them together.

pub mod exporter;
pub mod extension;
pub mod processor;
pub mod receiver;
pub mod refusal;
pub mod registry;
pub mod sending_queue;

pub use futures::future::BoxFuture;

pub use exporter::{
    BuildCtx as ExporterCtx, BuildError, Built, ExportError, ExportOk, Exporter, ExporterSpec,
};
pub use extension::{ExtensionCtx, ExtensionSpec, Health};
pub use processor::{BatchSettings, BuildCtx as ProcessorCtx, Processor, ProcessorSpec, Stage};
pub use receiver::{Consumer, ListenError, Listening, ReceiverCtx, ReceiverSpec, Started};
pub use refusal::Refusal;
pub use registry::{Config, Registry};
pub use sending_queue::{QueueConfig, RetryConfig};

use crate::config::{ComponentYaml, ConfigError};

/// Parses and checks one component's YAML into its spec; errors name YAML paths under `path`.
pub type ParseFn<S> = fn(&ComponentYaml<'_>) -> Result<Box<S>, ConfigError>;

/// How a component type registers itself: its YAML type name and its config parser.
/// Adding a component = one file with a `FACTORY`, plus one line in its folder's `FACTORIES`.
pub struct Factory<S: ?Sized> {
    pub kind: &'static str,
    pub parse: ParseFn<S>,
}

/// rustls needs one process-wide crypto provider for the HTTP exporter's TLS.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}
