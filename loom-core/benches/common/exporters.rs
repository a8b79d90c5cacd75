//! Span exporters for the benches' rows (included by path from `loom-core/benches/event_bus.rs`
//! and `loom-bridge/benches/bridge.rs`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};

/// Discards spans: a row measures span creation and context propagation, not an exporter.
#[derive(Debug)]
pub struct NullExporter;

impl SpanExporter for NullExporter {
    async fn export(&self, _batch: Vec<SpanData>) -> OTelSdkResult {
        Ok(())
    }
}

/// Counts the spans `inner` exported successfully: for the rows before the sink, whose batch
/// processor keeps its drop count to itself, the spans dropped are those never exported.
#[derive(Debug)]
pub struct Counting<E> {
    pub inner: E,
    pub exported: Arc<AtomicU64>,
}

impl<E: SpanExporter> SpanExporter for Counting<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let out = self.inner.export(batch).await;
        if out.is_ok() {
            self.exported.fetch_add(n, Ordering::Relaxed);
        }
        out
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The provider as it was before the span sink (SDK spans, the SDK's batch processor), with
/// the exported spans counted in `exported`: to `otlp` when given (its connection made inside
/// `rt`), else discarded.
pub fn provider_before(
    spec: loom_core::telemetry::SamplerSpec,
    otlp: Option<&str>,
    exported: &Arc<AtomicU64>,
    rt: &tokio::runtime::Runtime,
) -> opentelemetry_sdk::trace::SdkTracerProvider {
    let builder = loom_core::telemetry::provider_builder(spec)
        .with_resource(loom_core::telemetry::service_resource("bench"));
    match otlp {
        Some(endpoint) => {
            let _enter = rt.enter();
            builder.with_batch_exporter(Counting {
                inner: loom_core::telemetry::otlp_exporter(endpoint).expect("exporter"),
                exported: exported.clone(),
            })
        }
        None => builder.with_batch_exporter(Counting {
            inner: NullExporter,
            exported: exported.clone(),
        }),
    }
    .build()
}

/// The runtime the OTLP exporters' gRPC connections run on: one worker of its own, off the
/// bench's one-core runtime (which only runs while a batch is measured), as the exporter runs on
/// any of a binary's worker threads.
pub fn export_runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("export runtime")
    })
}
