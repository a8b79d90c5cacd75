//! The in-memory sending queue: one bounded queue per exporter, and its consumer tasks (its
//! settings, `QueueConfig`, are in `component::sending_queue`).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::retry::{send_with_retry, Outcome};
use super::Built;
use crate::metrics::{Metric, Metrics};
use crate::model::Batch;

/// An exporter's sending queue: bounded, never blocks the caller.
pub struct ExporterQueue {
    pub id: String,
    tx: Mutex<Option<mpsc::Sender<Arc<Batch>>>>,
    depth: Arc<AtomicUsize>,
    metrics: Arc<Metrics>,
    last_full_warning: Mutex<Option<Instant>>,
}

impl ExporterQueue {
    /// Queues a batch; when the queue is full the batch is dropped for this exporter, counted
    /// and logged (at most every 5 s).
    pub fn offer(&self, batch: Arc<Batch>) {
        let spans = batch.span_count as u64;
        // Counted before the send: a consumer may take the batch (and decrement) before
        // try_send returns, and the depth must never go below zero.
        let d = self.depth.fetch_add(1, Ordering::Relaxed) + 1;
        let sent = match self.tx.lock().as_ref() {
            Some(tx) => tx.try_send(batch).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => "queue_full",
                mpsc::error::TrySendError::Closed(_) => "shutting_down",
            }),
            None => Err("shutting_down"),
        };
        match sent {
            Ok(()) => {
                self.metrics.gauge(
                    Metric::ExporterQueueSize,
                    &[("exporter", &self.id)],
                    d as i64,
                );
            }
            Err(reason) => {
                self.depth.fetch_sub(1, Ordering::Relaxed);
                self.metrics.count(
                    Metric::ExporterSendFailedSpans,
                    &[("exporter", &self.id), ("reason", reason)],
                    spans,
                );
                let mut last = self.last_full_warning.lock();
                if last.is_none_or(|t| t.elapsed() > Duration::from_secs(5)) {
                    *last = Some(Instant::now());
                    tracing::warn!(exporter = %self.id, reason, spans, "exporter queue refused a batch: dropped for this exporter");
                }
            }
        }
    }

    /// Batches queued, not yet taken by a consumer.
    pub fn depth(&self) -> usize {
        self.depth.load(Ordering::Relaxed)
    }

    /// No more batches; consumers finish what is queued and end.
    pub fn close(&self) {
        self.tx.lock().take();
    }
}

/// Starts the queue and its consumers. `hard_stop` aborts retries (end of the shutdown grace).
pub fn start_queue(
    id: String,
    built: Built,
    metrics: Arc<Metrics>,
    hard_stop: CancellationToken,
) -> (Arc<ExporterQueue>, Vec<tokio::task::JoinHandle<()>>) {
    let (tx, rx) = mpsc::channel::<Arc<Batch>>(built.queue.memory_size());
    let rx = Arc::new(tokio::sync::Mutex::new(rx));
    let depth = Arc::new(AtomicUsize::new(0));
    let queue = Arc::new(ExporterQueue {
        id: id.clone(),
        tx: Mutex::new(Some(tx)),
        depth: depth.clone(),
        metrics: metrics.clone(),
        last_full_warning: Mutex::new(None),
    });
    let mut tasks = Vec::new();
    for _ in 0..built.queue.num_consumers {
        let rx = rx.clone();
        let exporter = built.exporter.clone();
        let retry = built.retry.clone();
        let metrics = metrics.clone();
        let id = id.clone();
        let depth = depth.clone();
        let hard_stop = hard_stop.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let next = { rx.lock().await.recv().await };
                let Some(batch) = next else { return };
                let d = depth.fetch_sub(1, Ordering::Relaxed).saturating_sub(1);
                metrics.gauge(Metric::ExporterQueueSize, &[("exporter", &id)], d as i64);
                let spans = batch.span_count as u64;
                if send_with_retry(&id, exporter.as_ref(), batch, &retry, &metrics, &hard_stop)
                    .await
                    == Outcome::Interrupted
                {
                    // Memory holds nothing past the process: count the loss where it happens.
                    metrics.count(
                        Metric::ExporterSendFailedSpans,
                        &[("exporter", &id), ("reason", "shutdown")],
                        spans,
                    );
                }
            }
        }));
    }
    (queue, tasks)
}
