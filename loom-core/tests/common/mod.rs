//! Test harness: a local tracer provider with an in-memory exporter, installed per test.
#![allow(dead_code)]

use loom_core::telemetry::SamplerSpec;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

pub struct Tracing {
    pub exporter: InMemorySpanExporter,
    pub provider: SdkTracerProvider,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Tracing {
    /// The production set-up: a [`loom_core::telemetry::LoomProvider`] (sampler run ahead of
    /// the SDK, hot-path spans recorded into its span sink) over the in-memory exporter.
    pub fn with_spec(spec: SamplerSpec) -> Tracing {
        let exporter = InMemorySpanExporter::default();
        let loom = loom_core::telemetry::LoomProvider::new(
            spec,
            exporter.clone(),
            loom_core::telemetry::SinkConfig::default(),
            None,
        )
        .expect("span sink");
        let layer = loom.layer("test");
        Tracing::install(exporter, loom.provider().clone(), layer)
    }

    /// Any SDK sampler behind the plain `otel_layer`: every span starts on the SDK.
    pub fn with_sampler(sampler: Sampler) -> Tracing {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_sampler(sampler)
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = loom_core::telemetry::otel_layer(provider.tracer("test"));
        Tracing::install(exporter, provider, layer)
    }

    fn install(
        exporter: InMemorySpanExporter,
        provider: SdkTracerProvider,
        layer: impl tracing_subscriber::Layer<tracing_subscriber::Registry> + Send + Sync,
    ) -> Tracing {
        let subscriber = tracing_subscriber::registry().with(layer);
        let guard = tracing::subscriber::set_default(subscriber);
        Tracing {
            exporter,
            provider,
            _guard: guard,
        }
    }

    pub fn new() -> Tracing {
        Tracing::with_spec(SamplerSpec::AlwaysOn)
    }

    pub fn spans(&self) -> Vec<SpanData> {
        let _ = self.provider.force_flush();
        self.exporter
            .get_finished_spans()
            .expect("in-memory exporter")
    }

    pub fn span(&self, name: &str) -> SpanData {
        let spans = self.spans();
        let mut found: Vec<_> = spans.into_iter().filter(|s| s.name == name).collect();
        assert_eq!(found.len(), 1, "expected exactly one {name} span");
        found.remove(0)
    }
}

pub fn attr(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.as_str().into_owned())
}
