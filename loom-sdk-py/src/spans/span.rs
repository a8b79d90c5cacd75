//! `loom._native.Span`: a recorded span that implements the OpenTelemetry Python `Span` API.
//!
//! Loom's per-event spans (`agent.emit`, `agent.on_event`) are started as these when Loom's own
//! provider is installed: no SDK span object, attribute map or `ReadableSpan` copy is built, and
//! ending one moves its record into the pipeline's queue without encoding anything on the agent's
//! thread. The object is registered as an `opentelemetry.trace.Span`, so user code and
//! instrumentation libraries see a normal span: their own spans started under it (through the
//! SDK's tracer) take it as parent through `get_span_context()`, built only when asked for.

use std::sync::{Arc, Mutex, OnceLock};

use opentelemetry_proto::tonic::trace::v1::{span, Span, SpanFlags, Status};
use pyo3::exceptions::PyRuntimeError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use loom_core::envelope::TraceParent;

use super::pipeline::Core;
use super::values::{Attrs, Rules};
use crate::PyEnvelope;

/// OTLP status codes (the Python `StatusCode` values are the same).
const STATUS_UNSET: i32 = 0;
const STATUS_OK: i32 = 1;

/// What a recording span holds until it ends.
struct State {
    name: String,
    start: u64,
    attrs: Attrs,
    events: Vec<span::Event>,
    dropped_events: u32,
    links: Vec<span::Link>,
    dropped_links: u32,
    status: (i32, String),
}

/// An ended span as the pipeline queues it; turned into OTLP on the export thread.
pub(crate) struct Finished {
    trace_id: u128,
    span_id: u64,
    trace_state: String,
    parent: Option<(u64, bool)>,
    kind: i32,
    end: u64,
    state: State,
}

impl Finished {
    /// The OTLP span, as the SDK's encoder writes one (see `span_export::encode_span`).
    pub(crate) fn into_otlp(self) -> Span {
        let s = self.state;
        let mut flags = SpanFlags::ContextHasIsRemoteMask as u32;
        if matches!(self.parent, Some((_, true))) {
            flags |= SpanFlags::ContextIsRemoteMask as u32;
        }
        Span {
            trace_id: self.trace_id.to_be_bytes().to_vec(),
            span_id: self.span_id.to_be_bytes().to_vec(),
            trace_state: self.trace_state,
            parent_span_id: self
                .parent
                .map(|(id, _)| id.to_be_bytes().to_vec())
                .unwrap_or_default(),
            flags,
            name: s.name,
            kind: self.kind,
            start_time_unix_nano: s.start,
            end_time_unix_nano: self.end,
            dropped_attributes_count: s.attrs.dropped,
            attributes: s.attrs.into_otlp(),
            events: s.events,
            dropped_events_count: s.dropped_events,
            links: s.links,
            dropped_links_count: s.dropped_links,
            status: Some(Status {
                code: s.status.0,
                message: s.status.1,
            }),
        }
    }
}

pub(crate) fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Everything a span is started with.
pub(crate) struct Start {
    pub(crate) trace_id: u128,
    pub(crate) span_id: u64,
    pub(crate) sampled: bool,
    pub(crate) trace_state: String,
    pub(crate) parent: Option<(u64, bool)>,
    pub(crate) name: String,
    /// OTLP kind (Python's `SpanKind.value` + 1).
    pub(crate) kind: i32,
    pub(crate) attrs: Attrs,
}

/// A span recorded in Rust (or, unsampled, only a context to propagate).
#[pyclass(module = "loom._native", name = "Span", frozen, weakref)]
pub(crate) struct NativeSpan {
    trace_id: u128,
    span_id: u64,
    /// W3C trace flags: the sampled bit, as the SDK sets it.
    flags: u8,
    trace_state: String,
    parent: Option<(u64, bool)>,
    kind: i32,
    core: Arc<Core>,
    /// `Some` while recording; taken at `end()`. Never `Some` for an unsampled span.
    state: Mutex<Option<State>>,
    /// The `opentelemetry.trace.SpanContext`, built the first time someone asks.
    context: OnceLock<Py<PyAny>>,
}

impl NativeSpan {
    pub(crate) fn start(core: Arc<Core>, start: Start) -> NativeSpan {
        let state = start.sampled.then(|| State {
            name: start.name,
            start: now_ns(),
            attrs: start.attrs,
            events: Vec::new(),
            dropped_events: 0,
            links: Vec::new(),
            dropped_links: 0,
            status: (STATUS_UNSET, String::new()),
        });
        NativeSpan {
            trace_id: start.trace_id,
            span_id: start.span_id,
            flags: u8::from(start.sampled),
            trace_state: start.trace_state,
            parent: start.parent,
            kind: start.kind,
            core,
            state: Mutex::new(state),
            context: OnceLock::new(),
        }
    }

    /// (trace id, span id, sampled, trace state) for a child started under this span.
    pub(crate) fn ids(&self) -> (u128, u64, bool, &str) {
        (
            self.trace_id,
            self.span_id,
            self.flags & 1 == 1,
            &self.trace_state,
        )
    }

    /// Runs `f` on the state while recording; does nothing once ended (as the SDK, which only
    /// logs a warning).
    fn with_state(&self, f: impl FnOnce(&mut State)) {
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(state) = guard.as_mut() {
            f(state);
        }
    }

    fn recording(&self) -> bool {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    fn rules<'a, 'py>(&self, clean: &'a Bound<'py, PyAny>) -> Rules<'a, 'py> {
        Rules {
            max_len: self.core.limits.max_attribute_length,
            clean,
        }
    }
}

#[pymethods]
impl NativeSpan {
    /// The span's `opentelemetry.trace.SpanContext` (never remote: it is this process's span).
    fn get_span_context(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if let Some(ctx) = self.context.get() {
            return Ok(ctx.clone_ref(py));
        }
        let h = &self.core.helpers;
        let state = if self.trace_state.is_empty() {
            h.default_trace_state.clone_ref(py)
        } else {
            h.trace_state_cls
                .bind(py)
                .call_method1(
                    intern!(py, "from_header"),
                    (vec![self.trace_state.as_str()],),
                )?
                .unbind()
        };
        let flags = h.trace_flags_cls.bind(py).call1((self.flags,))?;
        let ctx = h
            .span_context_cls
            .bind(py)
            .call1((self.trace_id, self.span_id, false, flags, state))?
            .unbind();
        Ok(self.context.get_or_init(|| ctx).clone_ref(py))
    }

    fn is_recording(&self) -> bool {
        self.recording()
    }

    fn set_attribute(
        &self,
        py: Python<'_>,
        key: &Bound<'_, PyAny>,
        value: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        if !self.recording() {
            return Ok(());
        }
        let clean = self.core.helpers.clean.bind(py);
        let prepared = self.rules(clean).one(key, value)?;
        let max = self.core.limits.max_span_attributes;
        self.with_state(|s| s.attrs.apply(max, prepared));
        Ok(())
    }

    fn set_attributes(&self, py: Python<'_>, attributes: &Bound<'_, PyAny>) -> PyResult<()> {
        if !self.recording() {
            return Ok(());
        }
        let clean = self.core.helpers.clean.bind(py);
        let prepared = self.rules(clean).items(attributes)?;
        let max = self.core.limits.max_span_attributes;
        self.with_state(|s| s.attrs.apply(max, prepared));
        Ok(())
    }

    #[pyo3(signature = (name, attributes=None, timestamp=None))]
    fn add_event(
        &self,
        py: Python<'_>,
        name: String,
        attributes: Option<&Bound<'_, PyAny>>,
        timestamp: Option<u64>,
    ) -> PyResult<()> {
        if !self.recording() {
            return Ok(());
        }
        let clean = self.core.helpers.clean.bind(py);
        let mut attrs = Attrs::default();
        if let Some(a) = attributes {
            attrs.apply(
                self.core.limits.max_event_attributes,
                self.rules(clean).items(a)?,
            );
        }
        let event = span::Event {
            time_unix_nano: timestamp.unwrap_or_else(now_ns),
            name,
            dropped_attributes_count: attrs.dropped,
            attributes: attrs.into_otlp(),
        };
        let max = self.core.limits.max_events;
        self.with_state(|s| bounded_push(&mut s.events, &mut s.dropped_events, max, event));
        Ok(())
    }

    #[pyo3(signature = (context, attributes=None))]
    fn add_link(
        &self,
        py: Python<'_>,
        context: &Bound<'_, PyAny>,
        attributes: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if !self.recording() || context.is_none() || !context.is_truthy()? {
            return Ok(());
        }
        // `_is_valid_link`: a valid context, or attributes / a trace state to carry.
        let has_attrs = match attributes {
            Some(a) => a.is_truthy()?,
            None => false,
        };
        if !context.getattr(intern!(py, "is_valid"))?.is_truthy()?
            && !has_attrs
            && !context.getattr(intern!(py, "trace_state"))?.is_truthy()?
        {
            return Ok(());
        }
        let clean = self.core.helpers.clean.bind(py);
        let mut attrs = Attrs::default();
        if let Some(a) = attributes {
            attrs.apply(
                self.core.limits.max_link_attributes,
                self.rules(clean).items(a)?,
            );
        }
        let trace_id: u128 = context.getattr(intern!(py, "trace_id"))?.extract()?;
        let span_id: u64 = context.getattr(intern!(py, "span_id"))?.extract()?;
        let mut flags = SpanFlags::ContextHasIsRemoteMask as u32;
        if context.getattr(intern!(py, "is_remote"))?.is_truthy()? {
            flags |= SpanFlags::ContextIsRemoteMask as u32;
        }
        let link = span::Link {
            trace_id: trace_id.to_be_bytes().to_vec(),
            span_id: span_id.to_be_bytes().to_vec(),
            // The SDK's encoder leaves a link's trace state out; so does this one.
            trace_state: String::new(),
            dropped_attributes_count: attrs.dropped,
            attributes: attrs.into_otlp(),
            flags,
        };
        let max = self.core.limits.max_links;
        self.with_state(|s| bounded_push(&mut s.links, &mut s.dropped_links, max, link));
        Ok(())
    }

    fn update_name(&self, name: String) {
        self.with_state(|s| s.name = name);
    }

    /// The SDK's rules: OK is final, UNSET is ignored, a description only with
    /// `(StatusCode, description)` (the `Status` constructor drops it unless ERROR).
    #[pyo3(signature = (status, description=None))]
    fn set_status(
        &self,
        py: Python<'_>,
        status: &Bound<'_, PyAny>,
        description: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        if !self.recording() {
            return Ok(());
        }
        let h = &self.core.helpers;
        let status = if status.is_instance(h.status_cls.bind(py))? {
            status.clone()
        } else {
            h.status_cls.bind(py).call1((status, description))?
        };
        let code: i32 = status
            .getattr(intern!(py, "status_code"))?
            .getattr(intern!(py, "value"))?
            .extract()?;
        let message = status.getattr(intern!(py, "description"))?;
        let message = if message.is_none() {
            String::new()
        } else {
            message.extract()?
        };
        self.with_state(|s| {
            if s.status.0 != STATUS_OK && code != STATUS_UNSET {
                s.status = (code, message);
            }
        });
        Ok(())
    }

    /// The SDK's `record_exception`: an `exception` event with type, message, stack trace and
    /// `exception.escaped`, then the given attributes over them.
    #[pyo3(signature = (exception, attributes=None, timestamp=None, escaped=false))]
    fn record_exception(
        &self,
        py: Python<'_>,
        exception: &Bound<'_, PyAny>,
        attributes: Option<&Bound<'_, PyAny>>,
        timestamp: Option<u64>,
        escaped: bool,
    ) -> PyResult<()> {
        if !self.recording() {
            return Ok(());
        }
        let ty = exception.get_type();
        let lines = self.core.helpers.format_exception.bind(py).call1((
            &ty,
            exception,
            exception.getattr(intern!(py, "__traceback__"))?,
        ))?;
        let stacktrace = PyString::new(py, "").call_method1(intern!(py, "join"), (lines,))?;
        let module = ty.getattr(intern!(py, "__module__"))?;
        let qualname: String = ty.getattr(intern!(py, "__qualname__"))?.extract()?;
        let module: Option<String> = if module.is_none() {
            None
        } else {
            Some(module.str()?.to_cow()?.into_owned())
        };
        let exception_type = match module {
            Some(m) if !m.is_empty() && m != "builtins" => format!("{m}.{qualname}"),
            _ => qualname,
        };
        let attrs = PyDict::new(py);
        attrs.set_item("exception.type", exception_type)?;
        attrs.set_item("exception.message", exception.str()?)?;
        attrs.set_item("exception.stacktrace", stacktrace)?;
        attrs.set_item("exception.escaped", if escaped { "True" } else { "False" })?;
        if let Some(a) = attributes {
            if a.is_truthy()? {
                attrs.call_method1(intern!(py, "update"), (a,))?;
            }
        }
        self.add_event(py, "exception".to_owned(), Some(attrs.as_any()), timestamp)
    }

    /// Ends the span and queues it for export (a second `end()` does nothing).
    #[pyo3(signature = (end_time=None))]
    fn end(&self, end_time: Option<u64>) {
        let taken = self.state.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(state) = taken {
            self.core.queue.push_native(Finished {
                trace_id: self.trace_id,
                span_id: self.span_id,
                trace_state: self.trace_state.clone(),
                parent: self.parent,
                kind: self.kind,
                end: end_time.unwrap_or_else(now_ns),
                state,
            });
        }
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    /// As the SDK's span used as a context manager: an exception escaping the block is recorded
    /// and sets ERROR; the span ends either way.
    fn __exit__(
        &self,
        py: Python<'_>,
        exc_type: &Bound<'_, PyAny>,
        exc_val: &Bound<'_, PyAny>,
        exc_tb: &Bound<'_, PyAny>,
    ) -> PyResult<bool> {
        let _ = (exc_type, exc_tb);
        let outcome = if !exc_val.is_none() && self.recording() {
            self.record_exception(py, exc_val, None, None, true)
                .and_then(|()| {
                    let name = exc_val.get_type().name()?;
                    let status = self.core.helpers.status_cls.bind(py).call1((
                        self.core
                            .helpers
                            .status_code_cls
                            .bind(py)
                            .getattr(intern!(py, "ERROR"))?,
                        format!("{name}: {}", exc_val.str()?),
                    ))?;
                    self.set_status(py, &status, None)
                })
        } else {
            Ok(())
        };
        self.end(None);
        outcome.map(|()| false)
    }

    /// Writes this span's context into a Loom `Envelope` (what `Envelope.inject_trace_context`
    /// does for any span, without building a `SpanContext`).
    fn write_trace_context(&self, envelope: &Bound<'_, PyEnvelope>) -> PyResult<()> {
        let mut env = envelope
            .try_borrow_mut()
            .map_err(|e| PyRuntimeError::new_err(e.to_string()))?;
        env.inner.set_traceparent(&TraceParent {
            trace_id: self.trace_id.to_be_bytes(),
            span_id: self.span_id.to_be_bytes(),
            flags: self.flags,
        });
        env.inner.tracestate = (!self.trace_state.is_empty()).then(|| self.trace_state.clone());
        Ok(())
    }

    fn __repr__(&self) -> String {
        format!(
            "loom._native.Span(trace_id=0x{:032x}, span_id=0x{:016x}, recording={})",
            self.trace_id,
            self.span_id,
            self.recording()
        )
    }
}

/// `BoundedList.append`: when full, the oldest item goes and counts as dropped.
fn bounded_push<T>(list: &mut Vec<T>, dropped: &mut u32, max: Option<usize>, item: T) {
    if let Some(max) = max {
        if max == 0 {
            *dropped = dropped.saturating_add(1);
            return;
        }
        if list.len() >= max {
            list.remove(0);
            *dropped = dropped.saturating_add(1);
        }
    }
    list.push(item);
}
