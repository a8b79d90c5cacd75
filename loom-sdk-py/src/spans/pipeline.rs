//! `loom._native.SpanPipeline`: the bounded span queue behind Loom's provider, batched and
//! encoded to OTLP off the GIL.
//!
//! One queue takes both kinds of span of an agent process: Loom's native spans (moved in at
//! `end()`) and every span of the OpenTelemetry SDK's tracer (user code, instrumentation
//! libraries), read once at `on_end` by `loom.tracing`'s span processor. A Python worker thread
//! waits here with the GIL released for a batch, gets it as serialized `ExportTraceServiceRequest`
//! bytes, and sends them with the SDK's own OTLP exporter (channel, retries, headers, TLS and the
//! `OTEL_EXPORTER_OTLP_*` variables stay the SDK's). The queue is bounded: a span that finds it
//! full is dropped and counted, as the SDK's `BatchSpanProcessor` drops it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span};
use prost::Message as _;
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use super::sampling::{self, Sampler};
use super::span::{Finished, NativeSpan, Start};
use super::values::{Attrs, Prepared, Rules};
use crate::span_export::{attributes, encode_span, opt_string, scope_of};
use crate::PyEnvelope;

/// An OTLP resource and its schema URL, shared by every group under it.
type OtlpResource = Arc<(Resource, String)>;
/// A batch's spans of one resource, by scope.
type ByResource = (OtlpResource, Vec<(Arc<Group>, Vec<Span>)>);
/// An SDK span's (resource, scope) objects and the group they make.
type CachedGroup = (Py<PyAny>, Py<PyAny>, Arc<Group>);

/// A resource and scope pair: the two levels an OTLP request groups spans by.
pub(crate) struct Group {
    resource: OtlpResource,
    scope: InstrumentationScope,
    scope_schema_url: String,
}

pub(crate) enum Record {
    Native(Box<Finished>),
    Sdk(Box<Span>, Arc<Group>),
}

struct QueueState {
    items: VecDeque<Record>,
    /// Spans handed to the worker whose export has not been reported yet.
    in_flight: usize,
    /// A flush is waiting: the worker sends what is queued without waiting for a full batch.
    flushing: bool,
    closed: bool,
    last_export: Instant,
}

/// The bounded queue and its counters.
pub(crate) struct Queue {
    state: Mutex<QueueState>,
    /// Wakes the worker: a full batch, a flush or close.
    work: Condvar,
    /// Wakes a flush: the queue ran empty and nothing is in flight.
    idle: Condvar,
    capacity: usize,
    batch: usize,
    delay: Duration,
    /// Set in a forked child for the parent's queue, whose lock may have been held at the fork.
    abandoned: AtomicBool,
    loom_group: Arc<Group>,
    queue_full: AtomicU64,
    pub(crate) export_failed: AtomicU64,
    exported: AtomicU64,
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn push(&self, record: Record) {
        if self.abandoned.load(Ordering::Relaxed) {
            return;
        }
        let mut q = self.lock();
        if q.closed {
            return;
        }
        if q.items.len() >= self.capacity {
            drop(q);
            self.queue_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.items.push_back(record);
        let full = q.items.len() == self.batch;
        drop(q);
        // Only at the threshold: a wake-up per span would cost a futex call on the agent's thread.
        if full {
            self.work.notify_one();
        }
    }

    pub(crate) fn push_native(&self, finished: Finished) {
        self.push(Record::Native(Box::new(finished)));
    }

    /// Waits (up to `timeout`) for a batch: a full one, or what is queued once the schedule
    /// delay has passed, a flush asks or the queue is closed. Empty when there is nothing.
    pub(crate) fn take(&self, timeout: Duration) -> Vec<Record> {
        let give_up = Instant::now() + timeout;
        let mut q = self.lock();
        loop {
            let due = q.last_export + self.delay;
            let now = Instant::now();
            let ready = q.items.len() >= self.batch
                || (!q.items.is_empty() && (q.flushing || q.closed || now >= due));
            if ready {
                let n = q.items.len().min(self.batch);
                let batch: Vec<Record> = q.items.drain(..n).collect();
                q.in_flight += n;
                q.last_export = now;
                return batch;
            }
            if q.items.is_empty() && q.flushing && q.in_flight == 0 {
                q.flushing = false;
                self.idle.notify_all();
            }
            if q.closed || now >= give_up {
                if q.items.is_empty() {
                    q.last_export = now;
                }
                return Vec::new();
            }
            let wake = if q.items.is_empty() {
                give_up
            } else {
                due.min(give_up)
            };
            let (guard, _) = self
                .work
                .wait_timeout(q, wake.saturating_duration_since(now))
                .unwrap_or_else(|p| p.into_inner());
            q = guard;
        }
    }

    pub(crate) fn done(&self, count: usize, ok: bool) {
        let counter = if ok {
            &self.exported
        } else {
            &self.export_failed
        };
        counter.fetch_add(count as u64, Ordering::Relaxed);
        let mut q = self.lock();
        q.in_flight = q.in_flight.saturating_sub(count);
        if q.items.is_empty() && q.in_flight == 0 {
            q.flushing = false;
            self.idle.notify_all();
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// A batch as the OTLP request it becomes.
    pub(crate) fn request(&self, batch: Vec<Record>) -> ExportTraceServiceRequest {
        request(batch, &self.loom_group)
    }

    /// Waits until everything queued before the call has been exported (or failed).
    fn flush(&self, timeout: Duration) -> bool {
        let give_up = Instant::now() + timeout;
        let mut q = self.lock();
        if q.items.is_empty() && q.in_flight == 0 {
            return true;
        }
        q.flushing = true;
        self.work.notify_one();
        while !(q.items.is_empty() && q.in_flight == 0) {
            let now = Instant::now();
            if now >= give_up {
                return false;
            }
            let (guard, _) = self
                .idle
                .wait_timeout(q, give_up - now)
                .unwrap_or_else(|p| p.into_inner());
            q = guard;
        }
        true
    }
}

/// One batch as a request, grouped by resource then scope in first-seen order (as the SDK's
/// encoder groups).
fn request(batch: Vec<Record>, loom_group: &Arc<Group>) -> ExportTraceServiceRequest {
    let mut groups: Vec<ByResource> = Vec::new();
    for record in batch {
        let (span, group) = match record {
            Record::Native(f) => (f.into_otlp(), None),
            Record::Sdk(span, group) => (*span, Some(group)),
        };
        let group = group.unwrap_or_else(|| loom_group.clone());
        let r = match groups
            .iter()
            .position(|(res, _)| Arc::ptr_eq(res, &group.resource))
        {
            Some(i) => i,
            None => {
                groups.push((group.resource.clone(), Vec::new()));
                groups.len() - 1
            }
        };
        let scopes = &mut groups[r].1;
        match scopes.iter().position(|(g, _)| Arc::ptr_eq(g, &group)) {
            Some(i) => scopes[i].1.push(span),
            None => scopes.push((group, vec![span])),
        }
    }
    ExportTraceServiceRequest {
        resource_spans: groups
            .into_iter()
            .map(|(resource, scopes)| ResourceSpans {
                resource: Some(resource.0.clone()),
                schema_url: resource.1.clone(),
                scope_spans: scopes
                    .into_iter()
                    .map(|(g, spans)| ScopeSpans {
                        scope: Some(g.scope.clone()),
                        spans,
                        schema_url: g.scope_schema_url.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The OpenTelemetry Python objects native spans need, looked up once.
pub(crate) struct Helpers {
    pub(crate) span_context_cls: Py<PyAny>,
    pub(crate) trace_flags_cls: Py<PyAny>,
    pub(crate) trace_state_cls: Py<PyAny>,
    pub(crate) default_trace_state: Py<PyAny>,
    pub(crate) status_cls: Py<PyAny>,
    pub(crate) status_code_cls: Py<PyAny>,
    pub(crate) invalid_span: Py<PyAny>,
    pub(crate) clean: Py<PyAny>,
    pub(crate) format_exception: Py<PyAny>,
}

impl Helpers {
    fn load(py: Python<'_>) -> PyResult<Helpers> {
        let trace = py.import("opentelemetry.trace")?;
        let get = |name: &str| -> PyResult<Py<PyAny>> { Ok(trace.getattr(name)?.unbind()) };
        Ok(Helpers {
            span_context_cls: get("SpanContext")?,
            trace_flags_cls: get("TraceFlags")?,
            trace_state_cls: get("TraceState")?,
            default_trace_state: py
                .import("opentelemetry.trace.span")?
                .getattr("DEFAULT_TRACE_STATE")?
                .unbind(),
            status_cls: get("Status")?,
            status_code_cls: get("StatusCode")?,
            invalid_span: get("INVALID_SPAN")?,
            clean: py
                .import("opentelemetry.attributes")?
                .getattr("_clean_attribute_value")?
                .unbind(),
            format_exception: py
                .import("traceback")?
                .getattr("format_exception")?
                .unbind(),
        })
    }
}

/// The SDK's `SpanLimits` (None: no limit).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Limits {
    pub(crate) max_span_attributes: Option<usize>,
    pub(crate) max_events: Option<usize>,
    pub(crate) max_links: Option<usize>,
    pub(crate) max_event_attributes: Option<usize>,
    pub(crate) max_link_attributes: Option<usize>,
    pub(crate) max_attribute_length: Option<usize>,
}

impl Limits {
    fn from_sdk(limits: &Bound<'_, PyAny>) -> PyResult<Limits> {
        let get = |name: &str| -> PyResult<Option<usize>> { limits.getattr(name)?.extract() };
        Ok(Limits {
            max_span_attributes: get("max_span_attributes")?,
            max_events: get("max_events")?,
            max_links: get("max_links")?,
            max_event_attributes: get("max_event_attributes")?,
            max_link_attributes: get("max_link_attributes")?,
            max_attribute_length: get("max_attribute_length")?,
        })
    }
}

/// What every span of a pipeline shares.
pub(crate) struct Core {
    pub(crate) queue: Queue,
    pub(crate) helpers: Helpers,
    pub(crate) limits: Limits,
    sampler: Option<Sampler>,
}

/// A parent as a native span needs it: span id, remote, sampled, and its trace id and state.
struct Parent {
    trace_id: u128,
    span_id: u64,
    remote: bool,
    sampled: bool,
    trace_state: String,
}

/// How many resource/scope pairs of SDK spans are remembered by identity; more are converted
/// per span (a process has a handful).
const GROUP_CACHE: usize = 64;

#[pyclass(module = "loom._native", name = "SpanPipeline", frozen)]
pub(crate) struct SpanPipeline {
    core: Arc<Core>,
    resource_obj: Py<PyAny>,
    groups: Mutex<Vec<CachedGroup>>,
    /// The Rust sender thread, when `start_export` started one.
    sender: Mutex<Option<std::thread::JoinHandle<()>>>,
}

#[pymethods]
impl SpanPipeline {
    /// `resource`: the provider's `Resource`; `sampler`/`ratio`: the canonical sampler name and
    /// ratio (`parse_sampler_env`), or None when native spans must not be started (a custom
    /// sampler object); `limits`: the SDK's `SpanLimits`.
    #[new]
    #[pyo3(signature = (resource, limits, *, sampler=None, ratio=None, max_queue_size=2048, max_export_batch_size=512, schedule_delay_millis=5000, scope_name="loom"))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        resource: Bound<'_, PyAny>,
        limits: &Bound<'_, PyAny>,
        sampler: Option<&str>,
        ratio: Option<f64>,
        max_queue_size: usize,
        max_export_batch_size: usize,
        schedule_delay_millis: u64,
        scope_name: &str,
    ) -> PyResult<SpanPipeline> {
        if max_queue_size == 0 || max_export_batch_size == 0 {
            return Err(PyValueError::new_err(
                "max_queue_size and max_export_batch_size must be positive",
            ));
        }
        if max_export_batch_size > max_queue_size {
            return Err(PyValueError::new_err(format!(
                "max_export_batch_size ({max_export_batch_size}) must be <= max_queue_size ({max_queue_size})"
            )));
        }
        let sampler = match sampler {
            None => None,
            Some(name) => Some(Sampler::from_name(name, ratio).ok_or_else(|| {
                PyValueError::new_err(format!("unknown sampler {name:?} (ratio {ratio:?})"))
            })?),
        };
        let resource_pb = resource_of(py, &resource)?;
        let loom_group = Arc::new(Group {
            resource: resource_pb,
            scope: InstrumentationScope {
                name: scope_name.to_owned(),
                ..InstrumentationScope::default()
            },
            scope_schema_url: String::new(),
        });
        let queue = Queue {
            state: Mutex::new(QueueState {
                items: VecDeque::with_capacity(max_export_batch_size),
                in_flight: 0,
                flushing: false,
                closed: false,
                last_export: Instant::now(),
            }),
            work: Condvar::new(),
            idle: Condvar::new(),
            capacity: max_queue_size,
            batch: max_export_batch_size,
            delay: Duration::from_millis(schedule_delay_millis),
            abandoned: AtomicBool::new(false),
            loom_group,
            queue_full: AtomicU64::new(0),
            export_failed: AtomicU64::new(0),
            exported: AtomicU64::new(0),
        };
        Ok(SpanPipeline {
            core: Arc::new(Core {
                queue,
                helpers: Helpers::load(py)?,
                limits: Limits::from_sdk(limits)?,
                sampler,
            }),
            resource_obj: resource.unbind(),
            groups: Mutex::new(Vec::new()),
            sender: Mutex::new(None),
        })
    }

    /// Whether native spans can be started (the sampler is one the pipeline implements).
    #[getter]
    fn native(&self) -> bool {
        self.core.sampler.is_some()
    }

    /// Starts a native span. Its parent: `envelope`'s trace context when it has one (a remote
    /// parent), else `parent` (the current span; a native span is read directly), else none.
    /// `kind` is `SpanKind.value`.
    #[pyo3(signature = (name, kind, attributes=None, parent=None, envelope=None))]
    fn start_span(
        &self,
        py: Python<'_>,
        name: String,
        kind: i32,
        attributes: Option<&Bound<'_, PyAny>>,
        parent: Option<&Bound<'_, PyAny>>,
        envelope: Option<&Bound<'_, PyEnvelope>>,
    ) -> PyResult<NativeSpan> {
        self.start(py, name, kind, parent, envelope, |rules| match attributes {
            Some(a) => rules.items(a),
            None => Ok(Prepared::default()),
        })
    }

    /// Starts a span about one event (`agent.emit`, `agent.on_event`) with the attributes
    /// docs/contracts.md §5 lists, built here from their values: `loom.agent.id`, `loom.topic`,
    /// `loom.event.id`, the messaging conventions with `operation`, then `loom.event.type`,
    /// `loom.thread_id` and `loom.correlation_id` (of `event_envelope`) when not empty. The
    /// same attributes, in the same order, as the dict `loom.tracing.event_attributes` builds.
    #[pyo3(signature = (name, kind, agent_id, topic, event_id, event_type, event_envelope, operation, parent=None, envelope=None))]
    #[allow(clippy::too_many_arguments)]
    fn start_event_span(
        &self,
        py: Python<'_>,
        name: String,
        kind: i32,
        agent_id: String,
        topic: String,
        event_id: String,
        event_type: String,
        event_envelope: &Bound<'_, PyEnvelope>,
        operation: String,
        parent: Option<&Bound<'_, PyAny>>,
        envelope: Option<&Bound<'_, PyEnvelope>>,
    ) -> PyResult<NativeSpan> {
        self.start(py, name, kind, parent, envelope, |rules| {
            let env = event_envelope.borrow();
            let mut entries = vec![
                ("loom.agent.id", agent_id),
                ("loom.topic", topic.clone()),
                ("loom.event.id", event_id.clone()),
                ("messaging.system", "loom".to_owned()),
                ("messaging.destination.name", topic),
                ("messaging.message.id", event_id),
                ("messaging.operation.type", operation),
            ];
            let optional = [
                ("loom.event.type", Some(event_type)),
                ("loom.thread_id", env.inner.thread_id.clone()),
                ("loom.correlation_id", env.inner.correlation_id.clone()),
            ];
            entries.extend(
                optional
                    .into_iter()
                    .filter_map(|(k, v)| v.filter(|v| !v.is_empty()).map(|v| (k, v))),
            );
            Ok(Prepared {
                entries: entries
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), Some(rules.string(v))))
                    .collect(),
                refused: 0,
            })
        })
    }

    /// Queues an ended SDK span (`ReadableSpan`); unsampled ones are skipped, as the SDK's
    /// batch processor skips them.
    fn submit(&self, py: Python<'_>, span: &Bound<'_, PyAny>) -> PyResult<()> {
        let ctx = span.getattr(intern!(py, "context"))?;
        let sampled = ctx
            .getattr(intern!(py, "trace_flags"))?
            .getattr(intern!(py, "sampled"))?
            .is_truthy()?;
        if !sampled {
            return Ok(());
        }
        let encoded = encode_span(py, span)?;
        let group = self.group_of(py, span)?;
        self.core.queue.push(Record::Sdk(Box::new(encoded), group));
        Ok(())
    }

    /// Waits up to `timeout_s` (GIL released) for a batch and returns it serialized with its
    /// span count, or None when there was nothing to send.
    fn next_batch<'py>(
        &self,
        py: Python<'py>,
        timeout_s: f64,
    ) -> PyResult<Option<(Bound<'py, PyBytes>, usize)>> {
        let timeout = Duration::try_from_secs_f64(timeout_s.max(0.0))
            .map_err(|e| PyValueError::new_err(format!("timeout_s: {e}")))?;
        let core = self.core.clone();
        let out = py.detach(move || {
            let batch = core.queue.take(timeout);
            if batch.is_empty() {
                return None;
            }
            let n = batch.len();
            Some((core.queue.request(batch).encode_to_vec(), n))
        });
        Ok(out.map(|(bytes, n)| (PyBytes::new(py, &bytes), n)))
    }

    /// Sends batches from a Rust thread over OTLP/gRPC (plaintext) to `endpoint` (`host:port` or
    /// `http://host:port`) with `headers`, each batch within `timeout_s`, retrying the gRPC codes
    /// in `retryable` (numbers). Then `next_batch` must not be used. ValueError for a header or
    /// endpoint gRPC cannot carry, RuntimeError if it already runs.
    fn start_export(
        &self,
        endpoint: &str,
        headers: Vec<(String, String)>,
        timeout_s: f64,
        retryable: Vec<i32>,
    ) -> PyResult<()> {
        let timeout = Duration::try_from_secs_f64(timeout_s)
            .map_err(|e| PyValueError::new_err(format!("timeout_s: {e}")))?;
        let cfg = super::export::ExportConfig::new(endpoint, headers, timeout, retryable)
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        let mut sender = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        if sender.is_some() {
            return Err(pyo3::exceptions::PyRuntimeError::new_err(
                "the span export thread already runs",
            ));
        }
        let handle = super::export::spawn(self.core.clone(), cfg).map_err(|e| {
            pyo3::exceptions::PyRuntimeError::new_err(format!("span export thread: {e}"))
        })?;
        *sender = Some(handle);
        Ok(())
    }

    /// After `close()`: waits (GIL released) for the Rust sender to send what is queued and end.
    fn join_export(&self, py: Python<'_>) {
        let handle = self.sender.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            py.detach(move || {
                // A sender that panicked has nothing more to send.
                let _ = h.join();
            });
        }
    }

    /// Reports the export of a batch `next_batch` gave out: sent, or given up on.
    fn batch_done(&self, count: usize, ok: bool) {
        self.core.queue.done(count, ok);
    }

    /// Waits (GIL released) until everything queued so far has been exported or has failed.
    fn flush(&self, py: Python<'_>, timeout_s: f64) -> PyResult<bool> {
        let timeout = Duration::try_from_secs_f64(timeout_s.max(0.0))
            .map_err(|e| PyValueError::new_err(format!("timeout_s: {e}")))?;
        let core = self.core.clone();
        Ok(py.detach(move || core.queue.flush(timeout)))
    }

    /// Takes no more spans; the worker drains what is queued, then `next_batch` returns None.
    fn close(&self) {
        let mut q = self.core.queue.lock();
        q.closed = true;
        drop(q);
        self.core.queue.work.notify_all();
    }

    /// In a forked child: this (the parent's) pipeline is left alone for good — its lock may have
    /// been held by a thread that does not exist here — and the id generator is reseeded.
    fn abandon_after_fork(&self) {
        self.core.queue.abandoned.store(true, Ordering::Relaxed);
        sampling::reseed_after_fork();
    }

    /// Counters: `queue_full` (spans dropped because the queue was full), `export_failed` (spans
    /// of batches the exporter gave up on), `exported`, and `queued` (waiting now).
    fn drops<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let q = &self.core.queue;
        let queued = if q.abandoned.load(Ordering::Relaxed) {
            0
        } else {
            q.lock().items.len()
        };
        let d = PyDict::new(py);
        d.set_item("queue_full", q.queue_full.load(Ordering::Relaxed))?;
        d.set_item("export_failed", q.export_failed.load(Ordering::Relaxed))?;
        d.set_item("exported", q.exported.load(Ordering::Relaxed))?;
        d.set_item("queued", queued)?;
        Ok(d)
    }
}

impl SpanPipeline {
    /// Starts a span (see `start_span`); `attributes` runs only when it is sampled.
    fn start(
        &self,
        py: Python<'_>,
        name: String,
        kind: i32,
        parent: Option<&Bound<'_, PyAny>>,
        envelope: Option<&Bound<'_, PyEnvelope>>,
        attributes: impl FnOnce(&Rules<'_, '_>) -> PyResult<Prepared>,
    ) -> PyResult<NativeSpan> {
        let sampler = self
            .core
            .sampler
            .ok_or_else(|| PyValueError::new_err("this pipeline starts no native spans"))?;
        let mut found = None;
        if let Some(env) = envelope {
            found = self.envelope_parent(py, env)?;
        }
        if found.is_none() {
            if let Some(p) = parent {
                found = self.span_parent(py, p)?;
            }
        }
        let trace_id = found
            .as_ref()
            .map_or_else(sampling::new_trace_id, |p| p.trace_id);
        let sampled = sampler.samples(found.as_ref().map(|p| p.sampled), trace_id);
        let mut attrs = Attrs::default();
        if sampled {
            let clean = self.core.helpers.clean.bind(py);
            let rules = Rules {
                max_len: self.core.limits.max_attribute_length,
                clean,
            };
            attrs.apply(self.core.limits.max_span_attributes, attributes(&rules)?);
        }
        let (parent, trace_state) = match found {
            Some(p) => (Some((p.span_id, p.remote)), p.trace_state),
            None => (None, String::new()),
        };
        Ok(NativeSpan::start(
            self.core.clone(),
            Start {
                trace_id,
                span_id: sampling::new_span_id(),
                sampled,
                trace_state,
                parent,
                name,
                kind: kind + 1,
                attrs,
            },
        ))
    }

    /// The remote parent an envelope names; its trace state parsed as `Envelope.parent_context`
    /// parses it (invalid reads as empty).
    fn envelope_parent(
        &self,
        py: Python<'_>,
        env: &Bound<'_, PyEnvelope>,
    ) -> PyResult<Option<Parent>> {
        let env = env.borrow();
        let e = &env.inner;
        let Some(tp) = e.trace_parent() else {
            return Ok(None);
        };
        let trace_state = match e.tracestate.as_deref() {
            Some(ts) if !ts.is_empty() => {
                let cls = self.core.helpers.trace_state_cls.bind(py);
                match cls.call_method1(intern!(py, "from_header"), (vec![ts],)) {
                    Ok(state) => state.call_method0(intern!(py, "to_header"))?.extract()?,
                    Err(_) => String::new(),
                }
            }
            _ => String::new(),
        };
        Ok(Some(Parent {
            trace_id: u128::from_be_bytes(tp.trace_id),
            span_id: u64::from_be_bytes(tp.span_id),
            remote: true,
            sampled: tp.sampled(),
            trace_state,
        }))
    }

    /// The parent a span object gives: read directly from a native span, through
    /// `get_span_context()` from any other; None when invalid.
    fn span_parent(&self, py: Python<'_>, span: &Bound<'_, PyAny>) -> PyResult<Option<Parent>> {
        if span.is(self.core.helpers.invalid_span.bind(py)) || span.is_none() {
            return Ok(None);
        }
        if let Ok(native) = span.cast::<NativeSpan>() {
            let (trace_id, span_id, sampled, state) = native.get().ids();
            return Ok(Some(Parent {
                trace_id,
                span_id,
                remote: false,
                sampled,
                trace_state: state.to_owned(),
            }));
        }
        let sc = span.call_method0(intern!(py, "get_span_context"))?;
        if sc.is_none() || !sc.getattr(intern!(py, "is_valid"))?.is_truthy()? {
            return Ok(None);
        }
        let flags: u8 = sc.getattr(intern!(py, "trace_flags"))?.extract()?;
        let state = sc.getattr(intern!(py, "trace_state"))?;
        let trace_state = if state.is_none() {
            String::new()
        } else {
            state.call_method0(intern!(py, "to_header"))?.extract()?
        };
        Ok(Some(Parent {
            trace_id: sc.getattr(intern!(py, "trace_id"))?.extract()?,
            span_id: sc.getattr(intern!(py, "span_id"))?.extract()?,
            remote: sc.getattr(intern!(py, "is_remote"))?.is_truthy()?,
            sampled: flags & 1 == 1,
            trace_state,
        }))
    }

    /// The resource/scope group of an SDK span, remembered by the objects' identity.
    fn group_of(&self, py: Python<'_>, span: &Bound<'_, PyAny>) -> PyResult<Arc<Group>> {
        let resource = span.getattr(intern!(py, "resource"))?;
        let scope = span.getattr(intern!(py, "instrumentation_scope"))?;
        {
            let cache = self.groups.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((_, _, g)) = cache
                .iter()
                .find(|(r, s, _)| r.bind(py).is(&resource) && s.bind(py).is(&scope))
            {
                return Ok(g.clone());
            }
        }
        let resource_pb = if resource.is(self.resource_obj.bind(py)) {
            self.core.queue.loom_group.resource.clone()
        } else {
            resource_of(py, &resource)?
        };
        let (scope_pb, scope_schema_url) = scope_of(py, &scope)?;
        let group = Arc::new(Group {
            resource: resource_pb,
            scope: scope_pb,
            scope_schema_url,
        });
        let mut cache = self.groups.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() < GROUP_CACHE {
            cache.push((resource.unbind(), scope.unbind(), group.clone()));
        }
        Ok(group)
    }
}

fn resource_of(py: Python<'_>, resource: &Bound<'_, PyAny>) -> PyResult<OtlpResource> {
    Ok(Arc::new((
        Resource {
            attributes: attributes(py, &resource.getattr(intern!(py, "attributes"))?)?,
            ..Resource::default()
        },
        opt_string(&resource.getattr(intern!(py, "schema_url"))?)?,
    )))
}
