//! Native spans: Loom's per-event spans recorded in Rust, and the one bounded queue that batches
//! them with the SDK's spans into OTLP requests off the GIL.
//!
//! `span` is the `opentelemetry.trace.Span` implementation, `pipeline` the queue and its
//! encoder, `export` its OTLP/gRPC sender thread, `values` the SDK's attribute rules, `sampling` ids and sampler decisions.

mod export;
mod pipeline;
mod sampling;
mod span;
mod values;

use pyo3::prelude::*;

/// Registers the classes on `loom._native`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<span::NativeSpan>()?;
    m.add_class::<pipeline::SpanPipeline>()?;
    Ok(())
}
