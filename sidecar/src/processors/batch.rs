//! batch: groups spans into export requests of `send_batch_size`, never above
//! `send_batch_max_size`, flushing after `timeout` and on shutdown. Its config is checked here
//! and its loop ([`run`]) is the task the pipeline hands spans to.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{BuildCtx, ProcessorSpec, Stage};
use crate::component::{BatchSettings, Factory};
use crate::config::{parse_as, require_positive, ComponentId, ComponentYaml, ConfigError};
use crate::memory::MemoryTicket;
use crate::model::{self, Batch, ResourceSpans};

pub const FACTORY: Factory<dyn ProcessorSpec> = Factory {
    kind: "batch",
    parse,
};

fn parse(y: &ComponentYaml<'_>) -> Result<Box<dyn ProcessorSpec>, ConfigError> {
    let (v, path) = (y.value, y.path);
    let c: BatchSettings = parse_as(v, path)?;
    require_positive(path, "send_batch_size", c.send_batch_size)?;
    if c.send_batch_max_size != 0 && c.send_batch_max_size < c.send_batch_size {
        return Err(ConfigError::at(
            format!("{path}.send_batch_max_size"),
            format!(
                "{} must be 0 (unbounded) or at least send_batch_size ({})",
                c.send_batch_max_size, c.send_batch_size
            ),
        ));
    }
    require_positive(path, "timeout", c.timeout)?;
    require_positive(path, "queue_size", c.queue_size)?;
    Ok(Box::new(c))
}

impl ProcessorSpec for BatchSettings {
    fn build(&self, _id: &ComponentId, _ctx: &BuildCtx) -> Stage {
        Stage::Batch(*self)
    }
}

/// Spans on their way to the batcher, with the memory they were accounted with.
pub struct Pending {
    pub spans: Vec<ResourceSpans>,
    pub ticket: Option<MemoryTicket>,
}

/// Groups what arrives on `rx` into batches of `send_batch_size` spans (split at
/// `send_batch_max_size`) and hands each to `dispatch`; flushes `timeout` after the first
/// pending spans arrived, and once more when `rx` closes (shutdown), then ends.
pub async fn run(
    mut rx: mpsc::Receiver<Pending>,
    s: BatchSettings,
    mut dispatch: impl FnMut(Batch) + Send,
) {
    let mut pending: Vec<ResourceSpans> = Vec::new();
    let mut count = 0usize;
    let mut tickets: Vec<MemoryTicket> = Vec::new();
    let mut deadline: Option<tokio::time::Instant> = None;

    let mut flush =
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
                dispatch(Batch::new(chunk, memory.clone()));
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::memory::MemoryTracker;
    use crate::model::test_resource_spans;

    fn spans(n: usize) -> Vec<ResourceSpans> {
        vec![test_resource_spans(&[n])]
    }

    fn settings(size: usize, max: usize, timeout: Duration) -> BatchSettings {
        BatchSettings {
            send_batch_size: size,
            send_batch_max_size: max,
            timeout,
            queue_size: 16,
        }
    }

    /// Starts a batcher whose batches arrive on the returned channel as span counts.
    fn start(
        s: BatchSettings,
    ) -> (
        mpsc::Sender<Pending>,
        mpsc::UnboundedReceiver<usize>,
        tokio::task::JoinHandle<()>,
    ) {
        let (tx, rx) = mpsc::channel(s.queue_size);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(rx, s, move |b: Batch| {
            let _ = out_tx.send(b.span_count);
        }));
        (tx, out_rx, task)
    }

    async fn send(tx: &mpsc::Sender<Pending>, n: usize) {
        tx.send(Pending {
            spans: spans(n),
            ticket: None,
        })
        .await
        .expect("batcher running");
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_at_send_batch_size_without_waiting() {
        let (tx, mut out, _task) = start(settings(10, 0, Duration::from_secs(3600)));
        send(&tx, 4).await;
        send(&tx, 4).await;
        tokio::task::yield_now().await;
        assert!(out.try_recv().is_err(), "8 < send_batch_size: nothing yet");
        send(&tx, 3).await;
        // The clock is paused and the timeout is an hour: only the size can flush this.
        let got = tokio::time::timeout(Duration::from_secs(1), out.recv()).await;
        assert_eq!(got, Ok(Some(11)));
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_on_timeout() {
        let (tx, mut out, _task) = start(settings(100, 0, Duration::from_millis(200)));
        let t0 = tokio::time::Instant::now();
        send(&tx, 5).await;
        assert_eq!(out.recv().await, Some(5));
        let waited = t0.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_millis(300),
            "flushed after {waited:?}"
        );
        // The next spans start a new timer.
        send(&tx, 2).await;
        let t1 = tokio::time::Instant::now();
        assert_eq!(out.recv().await, Some(2));
        assert!(t1.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test(start_paused = true)]
    async fn send_batch_max_size_splits_a_flush() {
        let (tx, mut out, _task) = start(settings(10, 10, Duration::from_secs(3600)));
        send(&tx, 25).await;
        let mut sizes = Vec::new();
        for _ in 0..3 {
            sizes.push(out.recv().await.expect("a batch"));
        }
        assert_eq!(sizes, [10, 10, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn flushes_what_it_holds_when_closed_and_releases_memory() {
        let memory = MemoryTracker::new();
        let (tx, mut out, task) = start(settings(100, 0, Duration::from_secs(3600)));
        tx.send(Pending {
            spans: spans(7),
            ticket: Some(memory.take(1000)),
        })
        .await
        .expect("batcher running");
        assert_eq!(memory.in_use(), 1000);
        drop(tx);
        task.await.expect("batcher ends");
        assert_eq!(out.recv().await, Some(7));
        assert_eq!(
            out.recv().await,
            None,
            "one flush, then the batcher is gone"
        );
        assert_eq!(memory.in_use(), 0, "the dispatched batch was dropped");
    }
}
