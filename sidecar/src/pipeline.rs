//! Pipelines: the receivers' entry point, the inline processor chain, the batcher task and the
//! fan-out to every exporter's bounded queue.
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
use crate::exporters::disk_queue::{AppendError, DiskQueue, FULL_RETRY_AFTER};
use crate::exporters::{encoded, ExporterQueue};
use crate::memory::{MemoryTicket, MemoryTracker};
use crate::metrics::Metrics;
use crate::model::{self, Batch, ResourceSpans};

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

struct Pending {
    spans: Vec<ResourceSpans>,
    ticket: Option<MemoryTicket>,
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
    durable: Vec<Arc<DiskQueue>>,
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
        durable: Vec<Arc<DiskQueue>>,
        memory: Arc<MemoryTracker>,
    ) -> (Arc<Pipeline>, Option<tokio::task::JoinHandle<()>>) {
        let memory_exporters = !fanout.exporters.is_empty();
        let (sink, task) = match batch {
            Some(settings) => {
                let (tx, rx) = mpsc::channel(settings.queue_size);
                let task = tokio::spawn(run_batcher(rx, settings, fanout));
                (Sink::Batcher(tx), Some(task))
            }
            None => (Sink::Direct(fanout), None),
        };
        (
            Arc::new(Pipeline {
                name,
                stages,
                sink: Mutex::new(Some(sink)),
                memory_exporters,
                durable,
                memory,
            }),
            task,
        )
    }

    /// Runs the inline processors and queues what is left. Returns the spans kept. Resolves
    /// once every persistent queue of the pipeline has the data.
    pub async fn consume(
        &self,
        mut spans: Vec<ResourceSpans>,
        encoded_len: usize,
    ) -> Result<usize, Refusal> {
        for stage in &self.stages {
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
        if !self.durable.is_empty() {
            // Encoded once, shared by every persistent queue (Bytes is reference-counted).
            let payload = encoded::encode_request(&spans);
            let appends = self
                .durable
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

    /// Stops accepting; the batcher flushes what it holds and ends.
    pub fn close(&self) {
        self.sink.lock().take();
    }
}

async fn run_batcher(mut rx: mpsc::Receiver<Pending>, s: BatchSettings, fanout: Arc<Fanout>) {
    let mut pending: Vec<ResourceSpans> = Vec::new();
    let mut count = 0usize;
    let mut tickets: Vec<MemoryTicket> = Vec::new();
    let mut deadline: Option<tokio::time::Instant> = None;

    let flush =
        |pending: &mut Vec<ResourceSpans>, count: &mut usize, tickets: &mut Vec<MemoryTicket>| {
            if *count == 0 {
                return;
            }
            let memory = Arc::new(std::mem::take(tickets));
            let max = if s.send_batch_max_size == 0 {
                usize::MAX
            } else {
                s.send_batch_max_size
            };
            for chunk in model::split(std::mem::take(pending), max) {
                fanout.dispatch(Batch::new(chunk, memory.clone()));
            }
            *count = 0;
        };

    loop {
        let next = match deadline {
            Some(d) => tokio::select! {
                m = rx.recv() => Some(m),
                _ = tokio::time::sleep_until(d) => None,
            },
            None => Some(rx.recv().await),
        };
        match next {
            // Timer: flush whatever is pending.
            None => {
                flush(&mut pending, &mut count, &mut tickets);
                deadline = None;
            }
            // Channel closed: the pipeline shut down; flush and end.
            Some(None) => {
                flush(&mut pending, &mut count, &mut tickets);
                return;
            }
            Some(Some(p)) => {
                count += model::span_count(&p.spans);
                pending.extend(p.spans);
                tickets.extend(p.ticket);
                if deadline.is_none() {
                    deadline = Some(tokio::time::Instant::now() + s.timeout);
                }
                if count >= s.send_batch_size {
                    flush(&mut pending, &mut count, &mut tickets);
                    deadline = None;
                }
            }
        }
    }
}
