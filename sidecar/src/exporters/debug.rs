//! debug: prints spans to stderr, one line per span (`basic`) or trace trees with attributes
//! (`detailed`).

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Arc;

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, Span};
use serde::Deserialize;

use super::{
    BoxFuture, BuildCtx, BuildError, Built, ExportError, ExportOk, Exporter, ExporterSpec,
    QueueConfig, RetryConfig,
};
use crate::component::Factory;
use crate::config::{parse_as, ComponentId, ComponentYaml, ConfigError};
use crate::model::Batch;

pub const FACTORY: Factory<dyn ExporterSpec> = Factory {
    kind: "debug",
    parse,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Verbosity {
    Basic,
    Normal,
    Detailed,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct DebugConfig {
    #[serde(default = "default_verbosity")]
    verbosity: Verbosity,
}

fn default_verbosity() -> Verbosity {
    Verbosity::Basic
}

fn parse(y: &ComponentYaml<'_>) -> Result<Box<dyn ExporterSpec>, ConfigError> {
    let (v, path) = (y.value, y.path);
    Ok(Box::new(parse_as::<DebugConfig>(v, path)?))
}

impl ExporterSpec for DebugConfig {
    fn build(&self, _id: &ComponentId, _ctx: &BuildCtx) -> Result<Built, BuildError> {
        Ok(Built {
            exporter: Arc::new(DebugExporter {
                verbosity: self.verbosity,
            }),
            // Printing cannot fail transiently: one consumer keeps output in order.
            queue: QueueConfig::single_consumer(),
            retry: RetryConfig::disabled(),
        })
    }
}

struct DebugExporter {
    verbosity: Verbosity,
}

fn hex(b: &[u8]) -> String {
    b.iter()
        .fold(String::with_capacity(b.len() * 2), |mut s, x| {
            let _ = write!(s, "{x:02x}");
            s
        })
}

fn value(v: &Option<AnyValue>) -> String {
    match v.as_ref().and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::ArrayValue(a)) => format!(
            "[{}]",
            a.values
                .iter()
                .map(|x| value(&Some(x.clone())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Some(any_value::Value::KvlistValue(kv)) => format!("{{{}}}", attrs(&kv.values)),
        Some(any_value::Value::BytesValue(b)) => format!("0x{}", hex(b)),
        // String-table references only mean something inside profiles.
        Some(_) | None => String::new(),
    }
}

fn attrs(kvs: &[KeyValue]) -> String {
    kvs.iter()
        .map(|kv| format!("{}={}", kv.key, value(&kv.value)))
        .collect::<Vec<_>>()
        .join(" ")
}

fn service_name(rs: &ResourceSpans) -> String {
    rs.resource
        .as_ref()
        .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
        .map(|kv| value(&kv.value))
        .unwrap_or_default()
}

const KINDS: [&str; 6] = [
    "UNSPECIFIED",
    "INTERNAL",
    "SERVER",
    "CLIENT",
    "PRODUCER",
    "CONSUMER",
];

fn kind(span: &Span) -> &'static str {
    KINDS.get(span.kind as usize).copied().unwrap_or("?")
}

fn line(span: &Span, service: &str) -> String {
    let dur_ms = span
        .end_time_unix_nano
        .saturating_sub(span.start_time_unix_nano) as f64
        / 1e6;
    let parent = if span.parent_span_id.is_empty() {
        "-".to_owned()
    } else {
        hex(&span.parent_span_id)
    };
    format!(
        "span trace={} span={} parent={} service={} name={} kind={} {:.3}ms",
        hex(&span.trace_id),
        hex(&span.span_id),
        parent,
        service,
        span.name,
        kind(span),
        dur_ms
    )
}

impl Exporter for DebugExporter {
    fn export(&self, batch: Arc<Batch>) -> BoxFuture<'static, Result<ExportOk, ExportError>> {
        let verbosity = self.verbosity;
        Box::pin(async move {
            // Printing reads every field: decode the spans (bytes until here).
            let resource_spans = batch
                .resource_spans
                .iter()
                .map(|rs| rs.to_proto())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ExportError::permanent("decode", e.to_string()))?;
            let mut out = String::new();
            match verbosity {
                Verbosity::Basic | Verbosity::Normal => {
                    for rs in &resource_spans {
                        let service = service_name(rs);
                        for ss in &rs.scope_spans {
                            for s in &ss.spans {
                                out.push_str(&line(s, &service));
                                if verbosity == Verbosity::Normal {
                                    let _ = write!(out, " {}", attrs(&s.attributes));
                                }
                                out.push('\n');
                            }
                        }
                    }
                }
                Verbosity::Detailed => {
                    // Group by trace and print each as a tree of the spans in this batch.
                    let mut traces: HashMap<Vec<u8>, Vec<(&Span, String)>> = HashMap::new();
                    for rs in &resource_spans {
                        let service = service_name(rs);
                        for ss in &rs.scope_spans {
                            for s in &ss.spans {
                                traces
                                    .entry(s.trace_id.clone())
                                    .or_default()
                                    .push((s, service.clone()));
                            }
                        }
                    }
                    for (tid, spans) in traces {
                        let _ = writeln!(
                            out,
                            "trace {} ({} spans in this batch)",
                            hex(&tid),
                            spans.len()
                        );
                        let ids: std::collections::HashSet<&[u8]> =
                            spans.iter().map(|(s, _)| s.span_id.as_slice()).collect();
                        let mut roots: Vec<&(&Span, String)> = spans
                            .iter()
                            .filter(|(s, _)| !ids.contains(s.parent_span_id.as_slice()))
                            .collect();
                        roots.sort_by_key(|(s, _)| s.start_time_unix_nano);
                        fn walk(
                            out: &mut String,
                            all: &[(&Span, String)],
                            node: &(&Span, String),
                            depth: usize,
                        ) {
                            let (s, service) = node;
                            let _ = writeln!(
                                out,
                                "{}{} [{}] ({service}) {}",
                                "  ".repeat(depth + 1),
                                s.name,
                                kind(s),
                                attrs(&s.attributes)
                            );
                            let mut kids: Vec<&(&Span, String)> = all
                                .iter()
                                .filter(|(c, _)| c.parent_span_id == s.span_id)
                                .collect();
                            kids.sort_by_key(|(c, _)| c.start_time_unix_nano);
                            for k in kids {
                                walk(out, all, k, depth + 1);
                            }
                        }
                        for r in roots {
                            walk(&mut out, &spans, r, 0);
                        }
                    }
                }
            }
            let _ = std::io::stderr().lock().write_all(out.as_bytes());
            Ok(ExportOk::default())
        })
    }
}
