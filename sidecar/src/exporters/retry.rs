//! Sending one batch with retry: exponential backoff with jitter, the backend's own hint,
//! `max_elapsed_time`, the hard stop at the end of the shutdown grace, and throttled drop logs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio_util::sync::CancellationToken;

use super::{Exporter, RetryConfig};
use crate::metrics::{Metric, Metrics};
use crate::model::Batch;

fn jitter(d: Duration) -> Duration {
    // ±50 %: spreads retries of many sidecars after a shared backend outage.
    let f: f64 = rand::random::<f64>() + 0.5;
    d.mul_f64(f)
}

/// How one batch ended, for the queue that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The backend took it (possibly rejecting part of it: counted).
    Delivered,
    /// Given up (permanent error or retries exhausted): counted by reason, logged.
    Dropped,
    /// The shutdown grace ran out mid-retry: a persistent queue keeps it for the next start.
    Interrupted,
}

/// Logs a dropped batch once per reason and exporter at warn level, then at most every 30 s,
/// so a backend that rejects everything cannot flood the log (the metric counts every span).
fn log_drop(id: &str, reason: &str, spans: u64, message: &str) {
    static LAST: Mutex<Option<std::collections::HashMap<(String, String), Instant>>> =
        Mutex::new(None);
    let mut guard = LAST.lock();
    let last = guard.get_or_insert_with(Default::default);
    let key = (id.to_owned(), reason.to_owned());
    let due = last
        .get(&key)
        .is_none_or(|t| t.elapsed() > Duration::from_secs(30));
    if due {
        last.insert(key, Instant::now());
        tracing::warn!(exporter = %id, spans, reason = %reason, "dropping a batch (further drops for this reason are counted in loom_sidecar_exporter_send_failed_spans_total, logged at most every 30 s): {message}");
    } else {
        tracing::debug!(exporter = %id, spans, reason = %reason, "dropping a batch: {message}");
    }
}

/// Sends one batch, retrying retryable failures with exponential backoff (±50 % jitter) or the
/// backend's own hint, until it is delivered, permanently refused, out of retry time, or the
/// shutdown grace is over.
pub async fn send_with_retry(
    id: &str,
    exporter: &dyn Exporter,
    batch: Arc<Batch>,
    retry: &RetryConfig,
    metrics: &Metrics,
    hard_stop: &CancellationToken,
) -> Outcome {
    let spans = batch.span_count as u64;
    // tokio's clock, the one the retry sleeps run on (and tests can pause).
    let started = tokio::time::Instant::now();
    let mut backoff = retry.initial_interval;
    loop {
        let outcome = tokio::select! {
            r = exporter.export(batch.clone()) => r,
            _ = hard_stop.cancelled() => return Outcome::Interrupted,
        };
        match outcome {
            Ok(ok) => {
                metrics.count(Metric::ExporterSentSpans, &[("exporter", id)], spans);
                if ok.rejected_spans > 0 {
                    metrics.count(
                        Metric::ExporterRejectedSpans,
                        &[("exporter", id)],
                        ok.rejected_spans,
                    );
                    tracing::warn!(exporter = %id, rejected = ok.rejected_spans, "backend rejected part of a batch (partial_success)");
                }
                return Outcome::Delivered;
            }
            Err(e) if e.retryable && retry.enabled => {
                // The backend's hint wins over our own schedule: it knows when it will recover.
                let wait = e.retry_after.unwrap_or_else(|| jitter(backoff));
                let elapsed = started.elapsed();
                if !retry.max_elapsed_time.is_zero() && elapsed + wait > retry.max_elapsed_time {
                    metrics.count(
                        Metric::ExporterSendFailedSpans,
                        &[("exporter", id), ("reason", "retries_exhausted")],
                        spans,
                    );
                    log_drop(
                        id,
                        "retries_exhausted",
                        spans,
                        &format!(
                            "gave up after {elapsed:?} of retries; last error ({}): {}",
                            e.reason, e.message
                        ),
                    );
                    return Outcome::Dropped;
                }
                metrics.count(Metric::ExporterRetries, &[("exporter", id)], 1);
                tracing::debug!(exporter = %id, wait_ms = wait.as_millis() as u64, reason = %e.reason, "export failed, retrying: {}", e.message);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = hard_stop.cancelled() => return Outcome::Interrupted,
                }
                backoff = (backoff * 2).min(retry.max_interval);
            }
            Err(e) => {
                metrics.count(
                    Metric::ExporterSendFailedSpans,
                    &[("exporter", id), ("reason", &e.reason)],
                    spans,
                );
                log_drop(id, &e.reason, spans, &e.message);
                return Outcome::Dropped;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use parking_lot::Mutex;

    use super::*;
    use crate::exporters::{encoded, BoxFuture, ExportError, ExportOk};
    use crate::model::test_resource_spans;

    /// A backend double: answers from a script (the last answer repeats) and records when it
    /// was called, on tokio's clock.
    struct Scripted {
        answers: Vec<Result<ExportOk, ExportError>>,
        calls: Mutex<Vec<tokio::time::Instant>>,
        /// Encodes the batch as the OTLP/gRPC exporter does before sending.
        encode: bool,
        /// Never answers (a hung backend).
        hang: bool,
    }

    impl Scripted {
        fn new(answers: Vec<Result<ExportOk, ExportError>>) -> Scripted {
            Scripted {
                answers,
                calls: Mutex::new(Vec::new()),
                encode: false,
                hang: false,
            }
        }

        fn gaps(&self) -> Vec<Duration> {
            let c = self.calls.lock();
            c.windows(2).map(|w| w[1] - w[0]).collect()
        }
    }

    impl Exporter for Scripted {
        fn export(&self, batch: Arc<Batch>) -> BoxFuture<'static, Result<ExportOk, ExportError>> {
            let mut calls = self.calls.lock();
            calls.push(tokio::time::Instant::now());
            let i = (calls.len() - 1).min(self.answers.len() - 1);
            let answer = self.answers[i].clone();
            let (encode, hang) = (self.encode, self.hang);
            Box::pin(async move {
                if encode {
                    assert!(!encoded::proto(&batch).is_empty());
                }
                if hang {
                    std::future::pending::<()>().await;
                }
                answer
            })
        }
    }

    fn batch(spans: usize) -> Arc<Batch> {
        let rs = test_resource_spans(&[spans]);
        Arc::new(Batch::new(vec![rs], Arc::new(Vec::new())))
    }

    fn retry(initial_ms: u64, max_ms: u64, max_elapsed: Duration) -> RetryConfig {
        RetryConfig {
            enabled: true,
            initial_interval: Duration::from_millis(initial_ms),
            max_interval: Duration::from_millis(max_ms),
            max_elapsed_time: max_elapsed,
        }
    }

    fn unavailable(hint: Option<Duration>) -> Result<ExportOk, ExportError> {
        Err(ExportError::retryable(
            "grpc_unavailable",
            "backend down",
            hint,
        ))
    }

    fn failed(m: &Metrics, reason: &str) -> u64 {
        m.counter(
            Metric::ExporterSendFailedSpans,
            &[("exporter", "otlp/t"), ("reason", reason)],
        )
    }

    /// Sends a 3-span batch until `stop` is cancelled.
    async fn send_until(
        exp: &Scripted,
        r: &RetryConfig,
        m: &Metrics,
        stop: &CancellationToken,
    ) -> Outcome {
        send_with_retry("otlp/t", exp, batch(3), r, m, stop).await
    }

    /// Sends a 3-span batch with no hard stop.
    async fn send(exp: &Scripted, r: &RetryConfig, m: &Metrics) -> Outcome {
        send_until(exp, r, m, &CancellationToken::new()).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_drops_at_once_counted_by_reason() {
        let m = Metrics::new();
        let exp = Scripted::new(vec![Err(ExportError::permanent("http_400", "bad request"))]);
        let out = send(&exp, &retry(1000, 2000, Duration::ZERO), &m).await;
        assert_eq!(out, Outcome::Dropped);
        assert_eq!(
            exp.calls.lock().len(),
            1,
            "a permanent error is not retried"
        );
        assert_eq!(failed(&m, "http_400"), 3);
        assert_eq!(
            m.counter(Metric::ExporterRetries, &[("exporter", "otlp/t")]),
            0
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_retryable_error_is_retried_with_growing_jittered_backoff() {
        let m = Metrics::new();
        let mut answers = vec![unavailable(None); 3];
        answers.push(Ok(ExportOk { rejected_spans: 1 }));
        let exp = Scripted::new(answers);
        let out = send(&exp, &retry(1000, 2000, Duration::ZERO), &m).await;
        assert_eq!(out, Outcome::Delivered);
        let gaps = exp.gaps();
        println!("backoff gaps (1 s doubling to 2 s, ±50 %): {gaps:?}");
        assert_eq!(gaps.len(), 3);
        // 1 s, then 2 s, then 2 s (capped), each ±50 %.
        for (gap, base) in gaps.iter().zip([1000u64, 2000, 2000]) {
            let ms = gap.as_millis() as u64;
            assert!(
                ms >= base / 2 && ms <= base * 3 / 2,
                "{ms} ms for {base} ms"
            );
        }
        assert_eq!(
            m.counter(Metric::ExporterRetries, &[("exporter", "otlp/t")]),
            3
        );
        assert_eq!(
            m.counter(Metric::ExporterSentSpans, &[("exporter", "otlp/t")]),
            3
        );
        assert_eq!(
            m.counter(Metric::ExporterRejectedSpans, &[("exporter", "otlp/t")]),
            1
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_backends_retry_after_wins_over_the_backoff() {
        let m = Metrics::new();
        let hint = Duration::from_secs(7);
        let exp = Scripted::new(vec![
            unavailable(Some(hint)),
            unavailable(Some(hint)),
            Ok(ExportOk::default()),
        ]);
        // The own schedule would wait 100–150 ms: only the hint gives 7 s.
        let out = send(&exp, &retry(100, 100, Duration::ZERO), &m).await;
        assert_eq!(out, Outcome::Delivered);
        assert_eq!(exp.gaps(), vec![hint, hint]);
    }

    #[tokio::test(start_paused = true)]
    async fn max_elapsed_time_gives_up_with_retries_exhausted() {
        let m = Metrics::new();
        let exp = Scripted::new(vec![unavailable(None)]);
        let start = tokio::time::Instant::now();
        let out = send(&exp, &retry(1000, 1000, Duration::from_secs(10)), &m).await;
        let took = start.elapsed();
        let calls = exp.calls.lock().len();
        println!("max_elapsed_time 10 s: gave up after {took:?}, {calls} attempts");
        assert_eq!(out, Outcome::Dropped);
        assert!(took <= Duration::from_secs(10), "{took:?}");
        // 1 s ±50 % between attempts: at least 7 retries fit in 10 s.
        assert!(calls >= 7, "{calls} attempts");
        assert_eq!(failed(&m, "retries_exhausted"), 3);
        assert_eq!(failed(&m, "grpc_unavailable"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_hard_stop_interrupts_a_retry_wait_and_a_hung_export() {
        for hang in [false, true] {
            let m = Metrics::new();
            let mut exp = Scripted::new(vec![unavailable(None)]);
            exp.hang = hang;
            let stop = CancellationToken::new();
            let cancel = stop.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(30)).await;
                cancel.cancel();
            });
            let start = tokio::time::Instant::now();
            // Retries for ever (max_elapsed_time 0): only the hard stop ends it.
            let out = send_until(&exp, &retry(1000, 2000, Duration::ZERO), &m, &stop).await;
            assert_eq!(out, Outcome::Interrupted, "hang={hang}");
            assert_eq!(start.elapsed(), Duration::from_secs(30));
            if hang {
                assert_eq!(exp.calls.lock().len(), 1);
            } else {
                assert!(exp.calls.lock().len() > 10);
            }
            // Not counted here: the queue decides (memory counts `shutdown`, disk keeps it).
            assert_eq!(
                failed(&m, "grpc_unavailable") + failed(&m, "retries_exhausted"),
                0
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn two_exporters_and_a_retry_share_one_encoding() {
        let m = Metrics::new();
        let stop = CancellationToken::new();
        let mut flaky = Scripted::new(vec![unavailable(None), Ok(ExportOk::default())]);
        flaky.encode = true;
        let mut steady = Scripted::new(vec![Ok(ExportOk::default())]);
        steady.encode = true;
        let r = retry(1000, 1000, Duration::ZERO);
        let b = batch(5);
        let before = encoded::ENCODES.with(|n| n.get());
        let (x, y) = tokio::join!(
            send_with_retry("otlp/a", &flaky, b.clone(), &r, &m, &stop),
            send_with_retry("otlp/b", &steady, b.clone(), &r, &m, &stop),
        );
        assert_eq!((x, y), (Outcome::Delivered, Outcome::Delivered));
        assert_eq!(flaky.calls.lock().len() + steady.calls.lock().len(), 3);
        // Three sends (one a retry) by two exporters: one encoding, kept in the batch.
        assert_eq!(encoded::ENCODES.with(|n| n.get()) - before, 1);
        assert!(b.bodies.proto.get().is_some());
    }
}
