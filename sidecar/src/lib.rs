//! loom-sidecar: receives OTLP, samples, enriches, batches and exports spans.
