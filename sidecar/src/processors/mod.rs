//! Processors: what happens to spans between receive and export.
//!
//! Inline processors (memory_limiter, sampler, enrich) run on the receiving task, so a refusal
//! reaches the client as a retryable status. `batch` is the pipeline's hand-off to the
//! exporters and must come last.

pub mod batch;
pub mod enrich;
pub mod memory_limiter;
pub mod sampler;

use std::sync::Arc;

use crate::model::ResourceSpans;

use crate::config::ComponentId;
use crate::memory::MemoryTracker;
use crate::metrics::Metrics;
use crate::pipeline::Refusal;
use crate::Factory;

/// Every processor type, by YAML name.
pub const FACTORIES: &[Factory<dyn ProcessorSpec>] = &[
    memory_limiter::FACTORY,
    sampler::FACTORY,
    enrich::FACTORY,
    batch::FACTORY,
];

/// What a processor may use when it is built.
pub struct BuildCtx {
    pub metrics: Arc<Metrics>,
    pub memory: Arc<MemoryTracker>,
}

/// A checked processor config, ready to build.
pub trait ProcessorSpec: Send + Sync {
    fn build(&self, id: &ComponentId, ctx: &BuildCtx) -> Stage;
}

/// How a processor takes part in a pipeline.
pub enum Stage {
    Inline(Arc<dyn Processor>),
    Batch(batch::BatchSettings),
}

/// Runs on the receiving task; may drop spans or refuse the whole request.
pub trait Processor: Send + Sync {
    fn process(&self, spans: &mut Vec<ResourceSpans>) -> Result<(), Refusal>;
}
