//! The processor contract: inline stages that run on the receiving task, and the batch
//! stage's settings the pipeline's batcher runs with.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{BoxFuture, Consumer, Refusal};
use crate::config::ComponentId;
use crate::memory::MemoryTracker;
use crate::metrics::Metrics;
use crate::model::ResourceSpans;

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
    Batch(BatchSettings),
}

/// Runs on the receiving task; may drop spans or refuse the whole request.
pub trait Processor: Send + Sync {
    fn process(&self, spans: &mut Vec<ResourceSpans>) -> Result<(), Refusal>;

    /// A processor that holds spans and releases them later (tail_sampling) is handed, once
    /// its pipeline is built, the rest of that pipeline: the stages after it and the exporters.
    fn attach_downstream(&self, _next: Arc<dyn Consumer>) {}

    /// Called once the receivers have stopped, before the pipeline closes: a holding processor
    /// decides what it still holds now and hands what it keeps downstream, so accepted spans are
    /// not lost at shutdown. Resolves once handed on; the caller bounds it by the grace period.
    fn drain(&self) -> BoxFuture<'static, ()> {
        Box::pin(std::future::ready(()))
    }
}

/// The `batch` processor's settings (checked in `processors/batch.rs`).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchSettings {
    /// Flush once this many spans are pending.
    #[serde(default = "default_size")]
    pub send_batch_size: usize,
    /// Upper bound of one export request (0: no bound beyond send_batch_size's flushes).
    #[serde(default)]
    pub send_batch_max_size: usize,
    /// Flush pending spans at least this often.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Requests queued between the receivers and the batcher before receivers refuse.
    #[serde(default = "default_queue")]
    pub queue_size: usize,
}

fn default_size() -> usize {
    8192
}

fn default_timeout() -> Duration {
    Duration::from_millis(200)
}

fn default_queue() -> usize {
    1024
}

impl Default for BatchSettings {
    fn default() -> Self {
        BatchSettings {
            send_batch_size: default_size(),
            send_batch_max_size: 0,
            timeout: default_timeout(),
            queue_size: default_queue(),
        }
    }
}
