//! Exporters: where batches go. Each exporter sits behind its own bounded sending queue with
//! consumer tasks that retry retryable failures with exponential backoff and jitter.

pub mod debug;
pub mod disk_queue;
pub mod encoded;
pub mod file;
pub mod otlp;
pub mod otlphttp;
pub mod trace_store;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use serde::Deserialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{ComponentId, ConfigError};
use crate::metrics::Metrics;
use crate::model::Batch;
use crate::Factory;

/// Every exporter type, by YAML name.
pub const FACTORIES: &[Factory<dyn ExporterSpec>] = &[
    otlp::FACTORY,
    otlphttp::FACTORY,
    debug::FACTORY,
    file::FACTORY,
    trace_store::FACTORY,
];

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a backend said about a delivered batch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExportOk {
    /// `partial_success.rejected_spans`.
    pub rejected_spans: u64,
}

/// A failed export, classified per the OTLP spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportError {
    pub retryable: bool,
    /// The backend's hint (gRPC RetryInfo / HTTP Retry-After).
    pub retry_after: Option<Duration>,
    /// Metric label, e.g. `grpc_unavailable`, `http_400`, `connect`.
    pub reason: String,
    pub message: String,
}

impl ExportError {
    pub fn permanent(reason: impl Into<String>, message: impl Into<String>) -> ExportError {
        ExportError {
            retryable: false,
            retry_after: None,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn retryable(
        reason: impl Into<String>,
        message: impl Into<String>,
        retry_after: Option<Duration>,
    ) -> ExportError {
        ExportError {
            retryable: true,
            retry_after,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

pub trait Exporter: Send + Sync {
    fn export(&self, batch: Arc<Batch>) -> BoxFuture<Result<ExportOk, ExportError>>;
}

/// What an exporter may use when it is built.
pub struct BuildCtx {
    pub metrics: Arc<Metrics>,
}

/// A checked exporter config, ready to build.
pub trait ExporterSpec: Send + Sync {
    fn build(&self, id: &ComponentId, ctx: &BuildCtx) -> Result<Built, String>;
}

pub struct Built {
    pub exporter: Arc<dyn Exporter>,
    pub queue: QueueConfig,
    pub retry: RetryConfig,
}

/// `sending_queue`: in memory (batches), or on disk with `storage` (a write-ahead log).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_consumers")]
    pub num_consumers: usize,
    /// In memory: batches the queue holds before new ones are dropped for this exporter
    /// (counted). Not used with `storage`, whose bound is `storage.max_bytes`.
    #[serde(default)]
    pub queue_size: Option<usize>,
    /// Persist the queue on disk.
    #[serde(default)]
    pub storage: Option<disk_queue::StorageConfig>,
    /// With `storage`: what to do at `max_bytes` (default `refuse`).
    #[serde(default)]
    pub when_full: Option<disk_queue::WhenFull>,
}

fn yes() -> bool {
    true
}
fn default_consumers() -> usize {
    2
}
fn default_queue_size() -> usize {
    1000
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            enabled: true,
            num_consumers: default_consumers(),
            queue_size: None,
            storage: None,
            when_full: None,
        }
    }
}

impl QueueConfig {
    /// Batches an in-memory queue holds.
    pub fn memory_size(&self) -> usize {
        self.queue_size.unwrap_or_else(default_queue_size)
    }

    pub fn when_full(&self) -> disk_queue::WhenFull {
        self.when_full.unwrap_or(disk_queue::WhenFull::Refuse)
    }

    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        if !self.enabled {
            return Err(ConfigError::at(
                format!("{path}.sending_queue.enabled"),
                "false is not supported: the queue is what keeps a slow backend from blocking the receivers",
            ));
        }
        if self.num_consumers == 0 {
            return Err(ConfigError::at(
                format!("{path}.sending_queue.num_consumers"),
                "must be greater than 0",
            ));
        }
        if self.queue_size == Some(0) {
            return Err(ConfigError::at(
                format!("{path}.sending_queue.queue_size"),
                "must be greater than 0",
            ));
        }
        match &self.storage {
            Some(storage) => {
                if self.queue_size.is_some() {
                    return Err(ConfigError::at(
                        format!("{path}.sending_queue.queue_size"),
                        "not used with storage: the disk queue is bounded by storage.max_bytes",
                    ));
                }
                storage.validate(path)?;
            }
            None => {
                if self.when_full.is_some() {
                    return Err(ConfigError::at(
                        format!("{path}.sending_queue.when_full"),
                        "only with storage; a full in-memory queue drops the new batch for this exporter (counted)",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_initial", with = "humantime_serde")]
    pub initial_interval: Duration,
    #[serde(default = "default_max_interval", with = "humantime_serde")]
    pub max_interval: Duration,
    /// Give up on a batch after retrying this long (0: never give up).
    #[serde(default = "default_max_elapsed", with = "humantime_serde")]
    pub max_elapsed_time: Duration,
}

fn default_initial() -> Duration {
    Duration::from_secs(5)
}
fn default_max_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_max_elapsed() -> Duration {
    Duration::from_secs(300)
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            enabled: true,
            initial_interval: default_initial(),
            max_interval: default_max_interval(),
            max_elapsed_time: default_max_elapsed(),
        }
    }
}

impl RetryConfig {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        if self.enabled
            && (self.initial_interval.is_zero() || self.max_interval < self.initial_interval)
        {
            return Err(ConfigError::at(
                format!("{path}.retry_on_failure"),
                "initial_interval must be > 0 and max_interval at least initial_interval",
            ));
        }
        Ok(())
    }
}

/// TLS settings of a network exporter (Collector names).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Plaintext; the default only for `http://` endpoints.
    #[serde(default)]
    pub insecure: Option<bool>,
    /// Accept any server certificate (otlphttp only). Testing only.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    #[serde(default)]
    pub ca_file: Option<String>,
    #[serde(default)]
    pub cert_file: Option<String>,
    #[serde(default)]
    pub key_file: Option<String>,
    #[serde(default)]
    pub server_name_override: Option<String>,
}

impl TlsConfig {
    pub fn validate(&self, path: &str) -> Result<(), ConfigError> {
        if self.cert_file.is_some() != self.key_file.is_some() {
            return Err(ConfigError::at(
                format!("{path}.tls"),
                "cert_file and key_file go together (client certificate for mTLS)",
            ));
        }
        for (k, f) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ] {
            if let Some(f) = f {
                if !std::path::Path::new(f).is_file() {
                    return Err(ConfigError::at(
                        format!("{path}.tls.{k}"),
                        format!("{f:?} is not a readable file"),
                    ));
                }
            }
        }
        Ok(())
    }
}

/// Checks header names/values so a typo fails at load, not at the first export.
pub fn validate_headers(
    headers: &std::collections::BTreeMap<String, String>,
    path: &str,
) -> Result<(), ConfigError> {
    for (k, v) in headers {
        if http::HeaderName::from_bytes(k.as_bytes()).is_err() {
            return Err(ConfigError::at(
                format!("{path}.headers.{k}"),
                "not a valid HTTP header name",
            ));
        }
        if http::HeaderValue::from_str(v).is_err() {
            return Err(ConfigError::at(
                format!("{path}.headers.{k}"),
                "value is not a valid HTTP header value",
            ));
        }
    }
    Ok(())
}

/// Parses the `compression` setting: gzip (default) or none.
pub fn gzip_setting(v: &Option<String>, path: &str) -> Result<bool, ConfigError> {
    match v.as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("gzip") => Ok(true),
        Some("none") | Some("") => Ok(false),
        Some(other) => Err(ConfigError::at(
            format!("{path}.compression"),
            format!("{other:?} is not supported; use gzip or none"),
        )),
    }
}

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
        let sent = match self.tx.lock().as_ref() {
            Some(tx) => tx.try_send(batch).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => "queue_full",
                mpsc::error::TrySendError::Closed(_) => "shutting_down",
            }),
            None => Err("shutting_down"),
        };
        match sent {
            Ok(()) => {
                let d = self.depth.fetch_add(1, Ordering::Relaxed) + 1;
                self.metrics.set(
                    "loom_sidecar_exporter_queue_size",
                    &[("exporter", &self.id)],
                    d as i64,
                );
            }
            Err(reason) => {
                self.metrics.add(
                    "loom_sidecar_exporter_send_failed_spans_total",
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
                metrics.set(
                    "loom_sidecar_exporter_queue_size",
                    &[("exporter", &id)],
                    d as i64,
                );
                let spans = batch.span_count as u64;
                if send_with_retry(&id, exporter.as_ref(), batch, &retry, &metrics, &hard_stop)
                    .await
                    == Outcome::Interrupted
                {
                    // Memory holds nothing past the process: count the loss where it happens.
                    metrics.add(
                        "loom_sidecar_exporter_send_failed_spans_total",
                        &[("exporter", &id), ("reason", "shutdown")],
                        spans,
                    );
                }
            }
        }));
    }
    (queue, tasks)
}

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
    let outcome = send_batch(id, exporter, batch, retry, metrics, hard_stop).await;
    // Our hold on the batch is gone: if it was the last, its shared encoding goes too.
    encoded::forget_dead();
    outcome
}

async fn send_batch(
    id: &str,
    exporter: &dyn Exporter,
    batch: Arc<Batch>,
    retry: &RetryConfig,
    metrics: &Metrics,
    hard_stop: &CancellationToken,
) -> Outcome {
    let spans = batch.span_count as u64;
    let started = Instant::now();
    let mut backoff = retry.initial_interval;
    loop {
        let outcome = tokio::select! {
            r = exporter.export(batch.clone()) => r,
            _ = hard_stop.cancelled() => return Outcome::Interrupted,
        };
        match outcome {
            Ok(ok) => {
                metrics.add(
                    "loom_sidecar_exporter_sent_spans_total",
                    &[("exporter", id)],
                    spans,
                );
                if ok.rejected_spans > 0 {
                    metrics.add(
                        "loom_sidecar_exporter_rejected_spans_total",
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
                    metrics.add(
                        "loom_sidecar_exporter_send_failed_spans_total",
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
                metrics.add(
                    "loom_sidecar_exporter_retries_total",
                    &[("exporter", id)],
                    1,
                );
                tracing::debug!(exporter = %id, wait_ms = wait.as_millis() as u64, reason = %e.reason, "export failed, retrying: {}", e.message);
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = hard_stop.cancelled() => return Outcome::Interrupted,
                }
                backoff = (backoff * 2).min(retry.max_interval);
            }
            Err(e) => {
                metrics.add(
                    "loom_sidecar_exporter_send_failed_spans_total",
                    &[("exporter", id), ("reason", &e.reason)],
                    spans,
                );
                log_drop(id, &e.reason, spans, &e.message);
                return Outcome::Dropped;
            }
        }
    }
}
