//! Test harness: a local tracer provider with an in-memory exporter, installed per test.
#![allow(dead_code)]

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, Sampler, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

pub struct Tracing {
    pub exporter: InMemorySpanExporter,
    pub provider: SdkTracerProvider,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Tracing {
    pub fn with_sampler(sampler: Sampler) -> Tracing {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_sampler(sampler)
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(loom_core::telemetry::otel_layer(provider.tracer("test")));
        let guard = tracing::subscriber::set_default(subscriber);
        Tracing {
            exporter,
            provider,
            _guard: guard,
        }
    }

    pub fn new() -> Tracing {
        Tracing::with_sampler(Sampler::AlwaysOn)
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
