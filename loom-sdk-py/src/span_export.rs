//! `encode_spans`: OpenTelemetry Python SDK spans (`ReadableSpan`) to OTLP protobuf bytes.
//!
//! The OTLP exporter of the OpenTelemetry Python SDK spends most of its time building protobuf
//! messages one Python object at a time. This reads the same span fields once and encodes them
//! with the official `opentelemetry-proto` types, mirroring the SDK's `encode_spans` field for
//! field (grouping by resource then scope in first-seen order, the same flags, an always-present
//! status/resource/scope), so a backend receives the same request. `loom.tracing` sends the
//! bytes through the SDK's own OTLP/gRPC exporter, which keeps its retries, headers and TLS.

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{
    any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList,
};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{
    span, ResourceSpans, ScopeSpans, Span, SpanFlags, Status,
};
use prost::Message;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyFloat, PyInt, PyMapping, PySequence, PyString};

/// Spans of one scope, under one resource (the Python objects the SDK shares between spans).
type ScopeGroup<'py> = (Bound<'py, PyAny>, Vec<Span>);
type ResourceGroup<'py> = (Bound<'py, PyAny>, Vec<ScopeGroup<'py>>);

/// Registers the module's functions on `loom._native`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(encode_spans, m)?)
}

/// The serialized `ExportTraceServiceRequest` for `spans` (a sequence of `ReadableSpan`).
#[pyfunction]
fn encode_spans<'py>(py: Python<'py>, spans: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyBytes>> {
    // (resource, [(scope, spans)]): a batch has one or two of each, so a scan beats hashing.
    let mut groups: Vec<ResourceGroup<'py>> = Vec::new();
    for item in spans.try_iter()? {
        let item = item?;
        let encoded = encode_span(py, &item)?;
        let resource = item.getattr(intern!(py, "resource"))?;
        let scope = item.getattr(intern!(py, "instrumentation_scope"))?;
        let r = match position(&groups, &resource, |g| &g.0)? {
            Some(i) => i,
            None => {
                groups.push((resource, Vec::new()));
                groups.len() - 1
            }
        };
        let scopes = &mut groups[r].1;
        match position(scopes, &scope, |g| &g.0)? {
            Some(i) => scopes[i].1.push(encoded),
            None => scopes.push((scope, vec![encoded])),
        }
    }
    let mut resource_spans = Vec::with_capacity(groups.len());
    for (resource, scopes) in groups {
        let mut scope_spans = Vec::with_capacity(scopes.len());
        for (scope, spans) in scopes {
            let (scope_pb, schema_url) = scope_of(py, &scope)?;
            scope_spans.push(ScopeSpans {
                scope: Some(scope_pb),
                spans,
                schema_url,
            });
        }
        resource_spans.push(ResourceSpans {
            resource: Some(Resource {
                attributes: attributes(py, &resource.getattr(intern!(py, "attributes"))?)?,
                ..Resource::default()
            }),
            scope_spans,
            schema_url: opt_string(&resource.getattr(intern!(py, "schema_url"))?)?,
        });
    }
    let request = ExportTraceServiceRequest { resource_spans };
    let bytes = py.detach(|| request.encode_to_vec());
    Ok(PyBytes::new(py, &bytes))
}

/// An SDK `InstrumentationScope` (None: the empty scope) and its schema URL.
pub(crate) fn scope_of(
    py: Python<'_>,
    scope: &Bound<'_, PyAny>,
) -> PyResult<(InstrumentationScope, String)> {
    if scope.is_none() {
        return Ok((InstrumentationScope::default(), String::new()));
    }
    Ok((
        InstrumentationScope {
            name: opt_string(&scope.getattr(intern!(py, "name"))?)?,
            version: opt_string(&scope.getattr(intern!(py, "version"))?)?,
            attributes: attributes(py, &scope.getattr(intern!(py, "attributes"))?)?,
            dropped_attributes_count: 0,
        },
        opt_string(&scope.getattr(intern!(py, "schema_url"))?)?,
    ))
}

fn position<'py, T>(
    groups: &[T],
    key: &Bound<'py, PyAny>,
    key_of: impl Fn(&T) -> &Bound<'py, PyAny>,
) -> PyResult<Option<usize>> {
    for (i, g) in groups.iter().enumerate() {
        let k = key_of(g);
        if k.is(key) || k.eq(key)? {
            return Ok(Some(i));
        }
    }
    Ok(None)
}

pub(crate) fn encode_span(py: Python<'_>, s: &Bound<'_, PyAny>) -> PyResult<Span> {
    let ctx = s.getattr(intern!(py, "context"))?;
    let parent = s.getattr(intern!(py, "parent"))?;
    let parent_span_id = if parent.is_truthy()? {
        span_id(py, &parent)?
    } else {
        Vec::new()
    };
    // Python's SpanKind counts from INTERNAL = 0, OTLP's from UNSPECIFIED = 0.
    let kind: i32 = s
        .getattr(intern!(py, "kind"))?
        .getattr(intern!(py, "value"))?
        .extract()?;
    let status = s.getattr(intern!(py, "status"))?;
    let status = if status.is_none() {
        None
    } else {
        Some(Status {
            code: status
                .getattr(intern!(py, "status_code"))?
                .getattr(intern!(py, "value"))?
                .extract()?,
            message: opt_string(&status.getattr(intern!(py, "description"))?)?,
        })
    };
    let mut events = Vec::new();
    for e in s.getattr(intern!(py, "events"))?.try_iter()? {
        let e = e?;
        events.push(span::Event {
            time_unix_nano: e.getattr(intern!(py, "timestamp"))?.extract()?,
            name: e.getattr(intern!(py, "name"))?.extract()?,
            attributes: attributes(py, &e.getattr(intern!(py, "attributes"))?)?,
            dropped_attributes_count: e.getattr(intern!(py, "dropped_attributes"))?.extract()?,
        });
    }
    let mut links = Vec::new();
    for l in s.getattr(intern!(py, "links"))?.try_iter()? {
        let l = l?;
        let lctx = l.getattr(intern!(py, "context"))?;
        links.push(span::Link {
            trace_id: trace_id(py, &lctx)?,
            span_id: span_id(py, &lctx)?,
            // The SDK's encoder leaves a link's trace state out; so does this one.
            trace_state: String::new(),
            attributes: attributes(py, &l.getattr(intern!(py, "attributes"))?)?,
            dropped_attributes_count: l.getattr(intern!(py, "dropped_attributes"))?.extract()?,
            flags: flags(py, Some(&lctx))?,
        });
    }
    Ok(Span {
        trace_id: trace_id(py, &ctx)?,
        span_id: span_id(py, &ctx)?,
        trace_state: trace_state(py, &ctx.getattr(intern!(py, "trace_state"))?)?,
        parent_span_id,
        flags: flags(py, parent.is_truthy()?.then_some(&parent))?,
        name: s.getattr(intern!(py, "name"))?.extract()?,
        kind: kind + 1,
        start_time_unix_nano: opt_u64(&s.getattr(intern!(py, "start_time"))?)?,
        end_time_unix_nano: opt_u64(&s.getattr(intern!(py, "end_time"))?)?,
        attributes: attributes(py, &s.getattr(intern!(py, "attributes"))?)?,
        dropped_attributes_count: s.getattr(intern!(py, "dropped_attributes"))?.extract()?,
        events,
        dropped_events_count: s.getattr(intern!(py, "dropped_events"))?.extract()?,
        links,
        dropped_links_count: s.getattr(intern!(py, "dropped_links"))?.extract()?,
        status,
    })
}

fn trace_id(py: Python<'_>, ctx: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let id: u128 = ctx.getattr(intern!(py, "trace_id"))?.extract()?;
    Ok(id.to_be_bytes().to_vec())
}

fn span_id(py: Python<'_>, ctx: &Bound<'_, PyAny>) -> PyResult<Vec<u8>> {
    let id: u64 = ctx.getattr(intern!(py, "span_id"))?.extract()?;
    Ok(id.to_be_bytes().to_vec())
}

/// `SpanFlags` as the SDK sets them: "is-remote known", plus "is remote" for a remote parent.
fn flags(py: Python<'_>, parent: Option<&Bound<'_, PyAny>>) -> PyResult<u32> {
    let mut f = SpanFlags::ContextHasIsRemoteMask as u32;
    if let Some(p) = parent {
        if p.getattr(intern!(py, "is_remote"))?.is_truthy()? {
            f |= SpanFlags::ContextIsRemoteMask as u32;
        }
    }
    Ok(f)
}

fn trace_state(py: Python<'_>, state: &Bound<'_, PyAny>) -> PyResult<String> {
    if state.is_none() {
        return Ok(String::new());
    }
    let mut out = String::new();
    for kv in state.call_method0(intern!(py, "items"))?.try_iter()? {
        let (k, v): (String, String) = kv?.extract()?;
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(&k);
        out.push('=');
        out.push_str(&v);
    }
    Ok(out)
}

pub(crate) fn opt_string(v: &Bound<'_, PyAny>) -> PyResult<String> {
    if v.is_none() {
        Ok(String::new())
    } else {
        v.extract()
    }
}

fn opt_u64(v: &Bound<'_, PyAny>) -> PyResult<u64> {
    if v.is_none() {
        Ok(0)
    } else {
        v.extract()
    }
}

/// An attribute mapping; a value the SDK's encoder cannot encode is left out, as it does.
pub(crate) fn attributes(py: Python<'_>, attrs: &Bound<'_, PyAny>) -> PyResult<Vec<KeyValue>> {
    if attrs.is_none() || !attrs.is_truthy()? {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for kv in attrs.call_method0(intern!(py, "items"))?.try_iter()? {
        let (k, v): (Bound<'_, PyAny>, Bound<'_, PyAny>) = kv?.extract()?;
        if let Some(value) = any_value(&v) {
            out.push(KeyValue {
                key: k.str()?.to_string(),
                value: Some(value),
                ..KeyValue::default()
            });
        }
    }
    Ok(out)
}

/// The SDK's `_encode_value`, in its order of checks (a str is a Sequence, a bool an int).
pub(crate) fn any_value(v: &Bound<'_, PyAny>) -> Option<AnyValue> {
    use any_value::Value;
    let value = if v.is_none() {
        None
    } else if let Ok(b) = v.cast::<PyBool>() {
        Some(Value::BoolValue(b.is_true()))
    } else if let Ok(s) = v.cast::<PyString>() {
        Some(Value::StringValue(s.to_cow().ok()?.into_owned()))
    } else if v.is_instance_of::<PyInt>() {
        Some(Value::IntValue(v.extract().ok()?))
    } else if v.is_instance_of::<PyFloat>() {
        Some(Value::DoubleValue(v.extract().ok()?))
    } else if let Ok(b) = v.cast::<PyBytes>() {
        Some(Value::BytesValue(b.as_bytes().to_vec()))
    } else if let Ok(seq) = v.cast::<PySequence>() {
        let mut values = Vec::new();
        for item in seq.try_iter().ok()? {
            values.push(any_value(&item.ok()?)?);
        }
        Some(Value::ArrayValue(ArrayValue { values }))
    } else if let Ok(map) = v.cast::<PyMapping>() {
        let mut values = Vec::new();
        for kv in map.items().ok()?.try_iter().ok()? {
            let (k, item): (Bound<'_, PyAny>, Bound<'_, PyAny>) = kv.ok()?.extract().ok()?;
            values.push(KeyValue {
                key: k.str().ok()?.to_string(),
                value: Some(any_value(&item)?),
                ..KeyValue::default()
            });
        }
        Some(Value::KvlistValue(KeyValueList { values }))
    } else {
        return None;
    };
    Some(AnyValue { value })
}
