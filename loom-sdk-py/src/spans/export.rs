//! The span pipeline's own OTLP/gRPC sender: a thread that takes batches from the queue and sends
//! them with tonic, so exporting never takes the GIL.
//!
//! Sending through the OpenTelemetry Python SDK's exporter costs the agent little CPU but a
//! Python thread that competes for the GIL with the agent's event loop on every batch. This
//! sender is used for what an agent's exporter does by default (plaintext gRPC to the node's
//! sidecar); `loom.tracing` reads the endpoint, headers, timeout and retryable codes from the
//! SDK's exporter, so the `OTEL_EXPORTER_OTLP_*` variables mean what they mean there, and keeps
//! the SDK's exporter for anything else (TLS, compression). Retries follow the SDK's: retryable
//! codes only, backoff 2^n s ± 20 %, at most six attempts, never past the export timeout, none
//! once the pipeline is closing.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use rand::Rng as _;
use tonic::metadata::{MetadataKey, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::pipeline::Core;

/// The SDK exporter's `_MAX_RETRYS`.
const MAX_ATTEMPTS: u32 = 6;
/// One failure line per this interval at most: a collector outage must not flood stderr.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// What the sender needs, as the SDK's exporter parsed it from its arguments and environment.
pub(crate) struct ExportConfig {
    /// `http://host:port`.
    pub(crate) endpoint: String,
    pub(crate) headers: Vec<(
        MetadataKey<tonic::metadata::Ascii>,
        MetadataValue<tonic::metadata::Ascii>,
    )>,
    pub(crate) timeout: Duration,
    pub(crate) retryable: Vec<tonic::Code>,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum ExportConfigError {
    #[error("header {0:?} is not a valid gRPC metadata name")]
    HeaderName(String),
    #[error("header {0:?} has a value that is not valid gRPC metadata")]
    HeaderValue(String),
    #[error("endpoint {0:?}: {1}")]
    Endpoint(String, String),
}

impl ExportConfig {
    pub(crate) fn new(
        endpoint: &str,
        headers: Vec<(String, String)>,
        timeout: Duration,
        retryable: Vec<i32>,
    ) -> Result<ExportConfig, ExportConfigError> {
        let endpoint = if endpoint.contains("://") {
            endpoint.to_owned()
        } else {
            format!("http://{endpoint}")
        };
        Endpoint::from_shared(endpoint.clone())
            .map_err(|e| ExportConfigError::Endpoint(endpoint.clone(), e.to_string()))?;
        let headers = headers
            .into_iter()
            .map(|(k, v)| {
                let key = MetadataKey::from_bytes(k.to_ascii_lowercase().as_bytes())
                    .map_err(|_| ExportConfigError::HeaderName(k.clone()))?;
                let value = MetadataValue::try_from(v.as_str())
                    .map_err(|_| ExportConfigError::HeaderValue(k))?;
                Ok((key, value))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ExportConfig {
            endpoint,
            headers,
            timeout,
            retryable: retryable.into_iter().map(tonic::Code::from_i32).collect(),
        })
    }
}

/// Starts the sender thread for `core`'s queue; it ends once the queue is closed and drained.
pub(crate) fn spawn(
    core: Arc<Core>,
    cfg: ExportConfig,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("loom-span-export".into())
        .spawn(move || run(&core, &cfg))
}

fn run(core: &Core, cfg: &ExportConfig) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("loom: span export thread has no runtime ({e}); spans are dropped");
            return;
        }
    };
    let channel = {
        let _in_rt = rt.enter();
        match Endpoint::from_shared(cfg.endpoint.clone()) {
            Ok(ep) => ep
                .tcp_nodelay(true)
                .connect_timeout(cfg.timeout)
                .connect_lazy(),
            Err(e) => {
                eprintln!(
                    "loom: span export endpoint {}: {e}; spans are dropped",
                    cfg.endpoint
                );
                return;
            }
        }
    };
    let mut client = TraceServiceClient::new(channel);
    let mut last_warning: Option<Instant> = None;
    let queue = &core.queue;
    // Set when a batch failed while the pipeline was closing: the collector is not taking spans,
    // and trying each remaining batch for a full timeout would hold the process's exit.
    let mut give_up = false;
    loop {
        let batch = queue.take(Duration::from_secs(1));
        if batch.is_empty() {
            if queue.is_closed() {
                return;
            }
            continue;
        }
        let n = batch.len();
        if give_up {
            queue.done(n, false);
            continue;
        }
        let request = queue.request(batch);
        let outcome = rt.block_on(send(&mut client, request, cfg, core));
        give_up = outcome.is_err() && queue.is_closed();
        if let Err(why) = &outcome {
            if last_warning.is_none_or(|t| t.elapsed() >= WARN_EVERY) {
                last_warning = Some(Instant::now());
                let failed = queue.export_failed.load(Ordering::Relaxed) + n as u64;
                eprintln!(
                    "loom: exporting {n} spans to {} failed: {why} ({failed} spans lost so far; \
                     loom.tracing.span_drops() counts them)",
                    cfg.endpoint
                );
            }
        }
        queue.done(n, outcome.is_ok());
    }
}

/// One batch, retried as the SDK's exporter retries it.
async fn send(
    client: &mut TraceServiceClient<Channel>,
    request: ExportTraceServiceRequest,
    cfg: &ExportConfig,
    core: &Core,
) -> Result<(), String> {
    let deadline = Instant::now() + cfg.timeout;
    let mut attempt = 0;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err("export timeout reached".into());
        }
        let mut req = tonic::Request::new(request.clone());
        req.set_timeout(remaining);
        for (k, v) in &cfg.headers {
            req.metadata_mut().insert(k.clone(), v.clone());
        }
        let status = match client.export(req).await {
            Ok(_) => return Ok(()),
            Err(status) => status,
        };
        attempt += 1;
        let backoff = Duration::from_secs_f64(
            2f64.powi(attempt as i32 - 1) * rand::rng().random_range(0.8..1.2),
        );
        if !cfg.retryable.contains(&status.code())
            || attempt >= MAX_ATTEMPTS
            || backoff > deadline.saturating_duration_since(Instant::now())
            || core.queue.is_closed()
        {
            return Err(format!("{:?}: {}", status.code(), status.message()));
        }
        tokio::time::sleep(backoff).await;
    }
}
