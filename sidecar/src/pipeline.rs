//! Pipelines: the receivers' entry point, the inline processor chain, the hand-off to the
//! batcher task (`processors/batch.rs`) and the fan-out to every exporter's bounded queue.
//!
//! Exporters with a persistent queue (`sending_queue.storage`) are fed on the receiving task,
//! before the batcher: the client's request is answered only once every such queue has it in its
//! log, so an acknowledged span survives a crash. Those queues merge records when they export, so
//! they need no batcher. In-memory exporters go through the batcher as before.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::component::{BatchSettings, BoxFuture, Consumer, Processor, Refusal};
use crate::exporters::persistent_queue::{AppendError, PersistentQueue, FULL_RETRY_AFTER};
use crate::exporters::{encoded, ExporterQueue};
use crate::memory::MemoryTracker;
use crate::metrics::Metrics;
use crate::model::{self, Batch, ResourceSpans};
use crate::processors::batch::{self, Pending};

/// Hands batches to every exporter of a pipeline. A full exporter queue drops the batch for
/// that exporter only (counted), so one slow backend never holds up the others.
pub struct Fanout {
    pub exporters: Vec<Arc<ExporterQueue>>,
    metrics: Arc<Metrics>,
}

impl Fanout {
    pub fn new(exporters: Vec<Arc<ExporterQueue>>, metrics: Arc<Metrics>) -> Fanout {
        Fanout { exporters, metrics }
    }

    pub fn dispatch(&self, batch: Batch) {
        if batch.span_count == 0 {
            return;
        }
        self.metrics.observe_batch(batch.span_count);
        let batch = Arc::new(batch);
        for q in &self.exporters {
            q.offer(batch.clone());
        }
    }
}

enum Sink {
    Batcher(mpsc::Sender<Pending>),
    Direct(Arc<Fanout>),
}

impl From<AppendError> for Refusal {
    fn from(e: AppendError) -> Refusal {
        match e {
            AppendError::Full => Refusal::StorageFull {
                retry_after: FULL_RETRY_AFTER,
            },
            AppendError::Io(_) => Refusal::StorageError,
            AppendError::Closed => Refusal::ShuttingDown,
        }
    }
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

impl Consumer for Fanin {
    fn consume(
        &self,
        spans: Vec<ResourceSpans>,
        encoded_len: usize,
    ) -> BoxFuture<'_, Result<usize, Refusal>> {
        Box::pin(Fanin::consume(self, spans, encoded_len))
    }
}

/// One `service.pipelines.traces*` entry, built.
pub struct Pipeline {
    pub name: String,
    stages: Vec<Arc<dyn Processor>>,
    sink: Mutex<Option<Sink>>,
    /// Whether any in-memory exporter waits behind `sink`.
    memory_exporters: bool,
    /// Exporters with a persistent queue, fed before the client is answered.
    persistent: Vec<Arc<PersistentQueue>>,
    memory: Arc<MemoryTracker>,
}

impl Pipeline {
    /// Builds the pipeline; with a batch stage, spawns its batcher task (returned to await on
    /// shutdown, after [`Pipeline::close`]).
    pub fn new(
        name: String,
        stages: Vec<Arc<dyn Processor>>,
        batch: Option<BatchSettings>,
        fanout: Arc<Fanout>,
        persistent: Vec<Arc<PersistentQueue>>,
        memory: Arc<MemoryTracker>,
    ) -> (Arc<Pipeline>, Option<tokio::task::JoinHandle<()>>) {
        let memory_exporters = !fanout.exporters.is_empty();
        let (sink, task) = match batch {
            Some(settings) => {
                let (tx, rx) = mpsc::channel(settings.queue_size);
                let task = tokio::spawn(batch::run(rx, settings, move |b| fanout.dispatch(b)));
                (Sink::Batcher(tx), Some(task))
            }
            None => (Sink::Direct(fanout), None),
        };
        let pipeline = Arc::new(Pipeline {
            name,
            stages,
            sink: Mutex::new(Some(sink)),
            memory_exporters,
            persistent,
            memory,
        });
        for (i, stage) in pipeline.stages.iter().enumerate() {
            stage.attach_downstream(Arc::new(Downstream {
                pipeline: Arc::downgrade(&pipeline),
                from: i + 1,
            }));
        }
        (pipeline, task)
    }

    /// Runs the inline processors and queues what is left. Returns the spans kept. Resolves
    /// once every persistent queue of the pipeline has the data.
    pub async fn consume(
        &self,
        spans: Vec<ResourceSpans>,
        encoded_len: usize,
    ) -> Result<usize, Refusal> {
        self.consume_from(0, spans, encoded_len).await
    }

    /// [`Pipeline::consume`] starting at stage `from` (a holding processor's release).
    async fn consume_from(
        &self,
        from: usize,
        mut spans: Vec<ResourceSpans>,
        encoded_len: usize,
    ) -> Result<usize, Refusal> {
        for stage in self.stages.iter().skip(from) {
            stage.process(&mut spans)?;
            if spans.is_empty() {
                return Ok(0);
            }
        }
        let kept = model::span_count(&spans);
        if kept == 0 {
            return Ok(0);
        }
        if self.sink.lock().is_none() {
            return Err(Refusal::ShuttingDown);
        }
        let ticket = self.memory.take(encoded_len);
        if !self.persistent.is_empty() {
            // Encoded once, shared by every persistent queue (Bytes is reference-counted).
            let payload = encoded::encode_request(&spans);
            let appends = self
                .persistent
                .iter()
                .map(|q| q.append(payload.clone(), kept as u64));
            // Queues that took the data keep it even when another refuses: the client retries
            // the whole request, so those exporters may see it twice (at-least-once).
            futures::future::try_join_all(appends).await?;
        }
        if !self.memory_exporters {
            return Ok(kept);
        }
        let guard = self.sink.lock();
        match guard.as_ref() {
            None => Err(Refusal::ShuttingDown),
            Some(Sink::Direct(f)) => {
                f.dispatch(Batch::new(spans, Arc::new(vec![ticket])));
                Ok(kept)
            }
            Some(Sink::Batcher(tx)) => match tx.try_send(Pending {
                spans,
                ticket: Some(ticket),
            }) {
                Ok(()) => Ok(kept),
                Err(mpsc::error::TrySendError::Full(_)) => Err(Refusal::QueueFull {
                    retry_after: Duration::from_secs(1),
                }),
                Err(mpsc::error::TrySendError::Closed(_)) => Err(Refusal::ShuttingDown),
            },
        }
    }

    /// Lets holding stages (tail_sampling) hand on what they hold while the sink is still open;
    /// in order, so what one releases has passed the later ones before they drain.
    pub async fn drain(&self) {
        for stage in &self.stages {
            stage.drain().await;
        }
    }

    /// Stops accepting; the batcher flushes what it holds and ends.
    pub fn close(&self) {
        self.sink.lock().take();
    }
}

/// The rest of a pipeline after one stage; weak, since the stage lives in the pipeline.
struct Downstream {
    pipeline: std::sync::Weak<Pipeline>,
    from: usize,
}

impl Consumer for Downstream {
    fn consume(
        &self,
        spans: Vec<ResourceSpans>,
        encoded_len: usize,
    ) -> BoxFuture<'_, Result<usize, Refusal>> {
        Box::pin(async move {
            match self.pipeline.upgrade() {
                Some(p) => p.consume_from(self.from, spans, encoded_len).await,
                None => Err(Refusal::ShuttingDown),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use tokio::sync::mpsc::{unbounded_channel, UnboundedSender};
    use tokio_util::sync::CancellationToken;

    use super::*;
    use crate::component::{
        BoxFuture, Built, ExportError, ExportOk, Exporter, QueueConfig, RetryConfig,
    };
    use crate::exporters::start_queue;
    use crate::metrics::Metric;
    use crate::model::test_resource_spans;

    fn spans(n: usize) -> Vec<ResourceSpans> {
        vec![test_resource_spans(&[n])]
    }

    /// Reports the span count of every batch it is given; `stall` ones never finish.
    struct Recorder {
        seen: UnboundedSender<usize>,
        stall: bool,
    }

    impl Exporter for Recorder {
        fn export(&self, batch: Arc<Batch>) -> BoxFuture<'static, Result<ExportOk, ExportError>> {
            let _ = self.seen.send(batch.span_count);
            let stall = self.stall;
            Box::pin(async move {
                if stall {
                    std::future::pending::<()>().await;
                }
                Ok(ExportOk::default())
            })
        }
    }

    fn queue(
        id: &str,
        stall: bool,
        size: usize,
        metrics: &Arc<Metrics>,
    ) -> (Arc<ExporterQueue>, mpsc::UnboundedReceiver<usize>) {
        let (tx, rx) = unbounded_channel();
        let built = Built {
            exporter: Arc::new(Recorder { seen: tx, stall }),
            queue: QueueConfig {
                num_consumers: 1,
                queue_size: Some(size),
                ..QueueConfig::default()
            },
            retry: RetryConfig::default(),
        };
        let (q, _tasks) = start_queue(id.into(), built, metrics.clone(), CancellationToken::new());
        (q, rx)
    }

    #[tokio::test]
    async fn every_exporter_gets_each_batch_and_a_full_queue_drops_only_its_own() {
        let metrics = Metrics::new();
        let (fast, mut fast_seen) = queue("debug", false, 10, &metrics);
        let (slow, mut slow_seen) = queue("otlp/slow", true, 1, &metrics);
        let fanout = Arc::new(Fanout::new(vec![fast, slow], metrics.clone()));
        let (pipeline, batcher) = Pipeline::new(
            "traces".into(),
            Vec::new(),
            None,
            fanout,
            Vec::new(),
            MemoryTracker::new(),
        );
        assert!(
            batcher.is_none(),
            "no batch processor: handed straight to the queues"
        );

        // The slow exporter's one consumer takes the first batch and never finishes it...
        assert_eq!(pipeline.consume(spans(1), 0).await, Ok(1));
        assert_eq!(slow_seen.recv().await, Some(1));
        // ...its queue (size 1) holds the second, and has no room for the third.
        assert_eq!(pipeline.consume(spans(2), 0).await, Ok(2));
        assert_eq!(pipeline.consume(spans(3), 0).await, Ok(3));

        let mut fast_got = Vec::new();
        for _ in 0..3 {
            fast_got.push(fast_seen.recv().await.expect("fast exporter batch"));
        }
        assert_eq!(fast_got, [1, 2, 3], "the other exporter is not held up");
        let dropped = |id| {
            metrics.counter(
                Metric::ExporterSendFailedSpans,
                &[("exporter", id), ("reason", "queue_full")],
            )
        };
        assert_eq!(
            dropped("otlp/slow"),
            3,
            "the third batch, for the slow exporter only"
        );
        assert_eq!(dropped("debug"), 0);
        assert!(
            slow_seen.try_recv().is_err(),
            "still stuck on the first batch"
        );
    }

    #[tokio::test]
    async fn a_closed_pipeline_refuses() {
        let metrics = Metrics::new();
        let (q, _seen) = queue("debug", false, 10, &metrics);
        let fanout = Arc::new(Fanout::new(vec![q], metrics.clone()));
        let (pipeline, _) = Pipeline::new(
            "traces".into(),
            Vec::new(),
            Some(BatchSettings::default()),
            fanout,
            Vec::new(),
            MemoryTracker::new(),
        );
        pipeline.close();
        assert_eq!(
            pipeline.consume(spans(1), 0).await,
            Err(Refusal::ShuttingDown)
        );
    }
}
