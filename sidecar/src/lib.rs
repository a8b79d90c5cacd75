//! loom-sidecar: an OpenTelemetry-Collector-style trace pipeline.
//!
//! Data path: receivers (OTLP gRPC/HTTP) → processors (memory_limiter, sampler, enrich) →
//! batch → per-exporter bounded queues → exporters (otlp, otlphttp, debug, file). Components are
//! wired by name from the YAML config ([`config`]); [`service::Service`] owns the lifecycle.

pub mod config;
pub mod exporters;
pub mod extensions;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod processors;
pub mod receivers;
pub mod service;

use config::{ComponentId, ConfigError, ParseCtx};

/// Parses and checks one component's YAML (its id, its value, its YAML path).
pub type ParseFn<S> =
    fn(&ComponentId, &serde_yaml::Value, &str, &ParseCtx<'_>) -> Result<Box<S>, ConfigError>;

/// How a component type registers itself: its YAML type name and its config parser.
/// Adding a component = one file with a `FACTORY`, plus one line in its folder's `FACTORIES`.
pub struct Factory<S: ?Sized> {
    pub kind: &'static str,
    pub parse: ParseFn<S>,
}
