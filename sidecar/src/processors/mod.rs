//! Processors: what happens to spans between receive and export.
//!
//! Inline processors (memory_limiter, sampler, enrich) run on the receiving task, so a refusal
//! reaches the client as a retryable status. tail_sampling takes spans inline and releases the
//! sampled ones later to the rest of its pipeline. `batch` is the pipeline's hand-off to the
//! exporters and must come last.

pub mod batch;
pub mod enrich;
pub mod memory_limiter;
pub mod sampler;
pub mod tail_sampling;

pub use crate::component::processor::{BuildCtx, Processor, ProcessorSpec, Stage};
use crate::component::Factory;

/// Every processor type, by YAML name.
pub const FACTORIES: &[Factory<dyn ProcessorSpec>] = &[
    memory_limiter::FACTORY,
    sampler::FACTORY,
    enrich::FACTORY,
    tail_sampling::FACTORY,
    batch::FACTORY,
];
