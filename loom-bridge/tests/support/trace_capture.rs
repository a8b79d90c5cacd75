//! Loom's tracing layer over an in-memory span exporter, for the bridge's unit and integration
//! tests (the unit tests include this file by path, so it names only public APIs).

use loom_core::telemetry::SamplerSpec;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::Layer as _;

/// Installs the layer for the current thread until the guard drops; every span the bridge's
/// tasks make on this thread (a current-thread runtime) lands in the exporter.
pub fn capture(
    spec: SamplerSpec,
) -> (
    InMemorySpanExporter,
    SdkTracerProvider,
    tracing::subscriber::DefaultGuard,
) {
    let exporter = InMemorySpanExporter::default();
    let provider = loom_core::telemetry::provider_builder(spec)
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry().with(
        loom_core::telemetry::otel_layer_for(provider.tracer("bridge"), spec)
            .with_filter(loom_core::telemetry::otel_filter()),
    );
    let guard = tracing::subscriber::set_default(subscriber);
    (exporter, provider, guard)
}
