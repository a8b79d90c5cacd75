//! loom-sidecar: an OpenTelemetry-Collector-style trace pipeline.
//!
//! Data path: receivers (OTLP gRPC/HTTP) → processors (memory_limiter, sampler, enrich) →
//! batch → per-exporter bounded queues → exporters (otlp, otlphttp, debug, file). Components are
//! wired by name from the YAML config ([`load`]); [`service::start`] owns the lifecycle.
//!
//! Layers, bottom up (each imports only from the layers below it; `tests/layers.rs` checks):
//! 1. [`config`], [`model`], [`memory`], [`metrics`]: no component in sight.
//! 2. [`component`]: the traits, contexts and values components share.
//! 3. [`receivers`], [`processors`], [`exporters`], [`extensions`]: each only its own folder.
//! 4. [`pipeline`], [`service`], [`load`]: the wiring.

pub mod component;
pub mod config;
pub mod exporters;
pub mod extensions;
pub mod load;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod processors;
pub mod receivers;
pub mod service;

pub use component::{Config, Factory, ParseFn};
pub use load::{from_yaml, load_file};
