//! Python extension `loom._native`: loom-core's Envelope and W3C trace-context codec, and its
//! sampler-variable parser.
//!
//! The Python SDK calls this instead of re-implementing the codec or the parser, so Python and
//! Rust write byte-identical metadata and read the sampler variables alike. Only conversions
//! live here; the rules are loom-core's.

use std::collections::HashMap;

mod span_export;
mod spans;

use loom_core::envelope::{self, Envelope as CoreEnvelope, TraceParent};
use loom_core::sampler_spec;
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

/// The parsed view of an event's metadata (W3C trace context + `loom.*` keys).
#[pyclass(
    name = "Envelope",
    module = "loom._native",
    subclass,
    eq,
    from_py_object
)]
#[derive(Clone, Default, PartialEq)]
pub(crate) struct PyEnvelope {
    pub(crate) inner: CoreEnvelope,
}

#[pymethods]
impl PyEnvelope {
    #[new]
    #[pyo3(signature = (*, thread_id=None, correlation_id=None, reply_to=None, sender=None, ttl=None, hop=None, trace_id=None, span_id=None, trace_flags=None, tracestate=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        thread_id: Option<String>,
        correlation_id: Option<String>,
        reply_to: Option<String>,
        sender: Option<String>,
        ttl: Option<u32>,
        hop: Option<u32>,
        trace_id: Option<String>,
        span_id: Option<String>,
        trace_flags: Option<u8>,
        tracestate: Option<String>,
    ) -> Self {
        PyEnvelope {
            inner: CoreEnvelope {
                thread_id,
                correlation_id,
                reply_to,
                sender,
                ttl,
                hop,
                trace_id,
                span_id,
                trace_flags,
                tracestate,
            },
        }
    }

    /// Reads the envelope keys of a metadata dict; invalid values read as absent.
    #[classmethod]
    fn from_metadata(
        cls: &Bound<'_, pyo3::types::PyType>,
        metadata: HashMap<String, String>,
    ) -> PyResult<Py<PyAny>> {
        let env = PyEnvelope {
            inner: CoreEnvelope::from_metadata(&metadata),
        };
        // Build through the (possibly Python-subclassed) type so subclasses round-trip.
        let obj = cls.call((), None)?;
        let mut slot: PyRefMut<'_, PyEnvelope> = obj.extract().map_err(PyErr::from)?;
        *slot = env;
        drop(slot);
        Ok(obj.unbind())
    }

    /// The metadata dict this envelope writes (empty fields omitted).
    fn to_metadata(&self) -> HashMap<String, String> {
        self.inner.to_metadata()
    }

    /// Writes the envelope into `metadata` in place: sets its keys, removes the ones it leaves
    /// empty, keeps every other key.
    fn write_metadata(
        &self,
        py: Python<'_>,
        metadata: &Bound<'_, pyo3::types::PyDict>,
    ) -> PyResult<()> {
        let _ = py;
        for key in envelope::KEYS {
            if metadata.contains(key)? {
                metadata.del_item(key)?;
            }
        }
        for (k, v) in self.inner.to_metadata() {
            metadata.set_item(k, v)?;
        }
        Ok(())
    }

    /// The `traceparent` value, or None when the trace fields are not a valid context.
    #[getter]
    fn traceparent(&self) -> Option<String> {
        self.inner.traceparent()
    }

    /// Sets trace_id/span_id/trace_flags from a traceparent string; False (and no change) if invalid.
    fn set_traceparent(&mut self, value: &str) -> bool {
        match envelope::parse_traceparent(value) {
            Some(tp) => {
                self.inner.set_traceparent(&tp);
                true
            }
            None => false,
        }
    }

    fn clear_trace_context(&mut self) {
        self.inner.clear_trace_context();
    }

    fn copy(&self) -> Self {
        self.clone()
    }

    fn __repr__(&self) -> String {
        format!("Envelope({:?})", self.inner.to_metadata())
    }

    #[getter]
    fn thread_id(&self) -> Option<String> {
        self.inner.thread_id.clone()
    }
    #[setter]
    fn set_thread_id(&mut self, v: Option<String>) {
        self.inner.thread_id = v;
    }
    #[getter]
    fn correlation_id(&self) -> Option<String> {
        self.inner.correlation_id.clone()
    }
    #[setter]
    fn set_correlation_id(&mut self, v: Option<String>) {
        self.inner.correlation_id = v;
    }
    #[getter]
    fn reply_to(&self) -> Option<String> {
        self.inner.reply_to.clone()
    }
    #[setter]
    fn set_reply_to(&mut self, v: Option<String>) {
        self.inner.reply_to = v;
    }
    #[getter]
    fn sender(&self) -> Option<String> {
        self.inner.sender.clone()
    }
    #[setter]
    fn set_sender(&mut self, v: Option<String>) {
        self.inner.sender = v;
    }
    #[getter]
    fn ttl(&self) -> Option<u32> {
        self.inner.ttl
    }
    #[setter]
    fn set_ttl(&mut self, v: Option<u32>) {
        self.inner.ttl = v;
    }
    #[getter]
    fn hop(&self) -> Option<u32> {
        self.inner.hop
    }
    #[setter]
    fn set_hop(&mut self, v: Option<u32>) {
        self.inner.hop = v;
    }
    #[getter]
    fn trace_id(&self) -> Option<String> {
        self.inner.trace_id.clone()
    }
    #[setter]
    fn set_trace_id(&mut self, v: Option<String>) {
        self.inner.trace_id = v;
    }
    #[getter]
    fn span_id(&self) -> Option<String> {
        self.inner.span_id.clone()
    }
    #[setter]
    fn set_span_id(&mut self, v: Option<String>) {
        self.inner.span_id = v;
    }
    #[getter]
    fn trace_flags(&self) -> Option<u8> {
        self.inner.trace_flags
    }
    #[setter]
    fn set_trace_flags(&mut self, v: Option<u8>) {
        self.inner.trace_flags = v;
    }
    #[getter]
    fn tracestate(&self) -> Option<String> {
        self.inner.tracestate.clone()
    }
    #[setter]
    fn set_tracestate(&mut self, v: Option<String>) {
        self.inner.tracestate = v;
    }
}

/// Parses a W3C traceparent: (trace_id_hex, span_id_hex, flags), or None when invalid.
#[pyfunction]
fn parse_traceparent(value: &str) -> Option<(String, String, u8)> {
    envelope::parse_traceparent(value).map(|tp| {
        (
            envelope::to_hex(&tp.trace_id),
            envelope::to_hex(&tp.span_id),
            tp.flags,
        )
    })
}

/// Formats a version-00 traceparent; ValueError when the ids are not valid W3C ids.
#[pyfunction]
fn format_traceparent(trace_id: &str, span_id: &str, flags: u8) -> PyResult<String> {
    let candidate = format!("00-{trace_id}-{span_id}-{flags:02x}");
    envelope::parse_traceparent(&candidate)
        .map(|tp: TraceParent| envelope::format_traceparent(&tp))
        .ok_or_else(|| {
            PyValueError::new_err(format!(
                "not a valid W3C trace context: trace_id={trace_id:?} span_id={span_id:?} (lowercase hex, 32/16 chars, not all zero)"
            ))
        })
}

/// Reads the sampler variables (`OTEL_TRACES_SAMPLER` / `OTEL_TRACE_SAMPLER` and their `_ARG`)
/// of `env`: (canonical sampler name, ratio or None). ValueError naming the variable otherwise.
#[pyfunction]
fn parse_sampler_env(env: HashMap<String, String>) -> PyResult<(&'static str, Option<f64>)> {
    sampler_spec::sampler_spec_from(|k| env.get(k).cloned())
        .map(|spec| (spec.name(), spec.ratio()))
        .map_err(|e| PyValueError::new_err(e.to_string()))
}

#[pymodule]
fn _native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PyEnvelope>()?;
    m.add_function(wrap_pyfunction!(parse_traceparent, m)?)?;
    m.add_function(wrap_pyfunction!(format_traceparent, m)?)?;
    m.add_function(wrap_pyfunction!(parse_sampler_env, m)?)?;
    span_export::register(m)?;
    spans::register(m)?;
    m.add("SAMPLER_NAMES", sampler_spec::SAMPLER_NAMES.to_vec())?;
    m.add("DEFAULT_SAMPLER", sampler_spec::DEFAULT_SAMPLER)?;
    m.add("TRACEPARENT", envelope::TRACEPARENT)?;
    m.add("TRACESTATE", envelope::TRACESTATE)?;
    m.add("THREAD_ID", envelope::THREAD_ID)?;
    m.add("CORRELATION_ID", envelope::CORRELATION_ID)?;
    m.add("REPLY_TO", envelope::REPLY_TO)?;
    m.add("SENDER", envelope::SENDER)?;
    m.add("TTL", envelope::TTL)?;
    m.add("HOP", envelope::HOP)?;
    m.add("ENVELOPE_KEYS", envelope::KEYS.to_vec())?;
    Ok(())
}
