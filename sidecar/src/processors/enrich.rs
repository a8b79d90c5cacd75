//! enrich: makes every span carry `loom.agent.id` and `loom.topic`, and the node it passed.
//!
//! Sources, in order: the span's own keys, its resource (`loom.agent.id`, or a `service.name`
//! of the form `agent-{id}`), and the messaging convention (`messaging.destination.name`).
//! Node attributes (`host.name`, and `k8s.node.name` / `k8s.pod.name` / `k8s.namespace.name`
//! from `K8S_NODE_NAME` / `K8S_POD_NAME` / `K8S_NAMESPACE_NAME`) go on the resource when absent.

use std::sync::Arc;

use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::resource::v1::Resource;
use serde::Deserialize;

use super::sampler::resource_agent;
use super::{BuildCtx, Processor, ProcessorSpec, Stage};
use crate::component::Factory;
use crate::component::Refusal;
use crate::config::{parse_as, ComponentId, ComponentYaml, ConfigError};
use crate::model::otlp::string_attr;
use crate::model::ResourceSpans;

pub const FACTORY: Factory<dyn ProcessorSpec> = Factory {
    kind: "enrich",
    parse,
};

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrichConfig {
    /// Add host.name and k8s.* to resources (default true).
    #[serde(default = "yes")]
    node_attributes: bool,
    /// Overrides the detected host name.
    #[serde(default)]
    host_name: Option<String>,
}

fn yes() -> bool {
    true
}

struct Spec {
    node: Vec<(String, String)>,
}

fn parse(y: &ComponentYaml<'_>) -> Result<Box<dyn ProcessorSpec>, ConfigError> {
    let (v, path, ctx) = (y.value, y.path, y.ctx);
    let c: EnrichConfig = parse_as(v, path)?;
    let mut node = Vec::new();
    if c.node_attributes {
        let host = c
            .host_name
            .clone()
            .or_else(|| hostname::get().ok().and_then(|h| h.into_string().ok()))
            .filter(|h| !h.is_empty());
        if let Some(h) = host {
            node.push(("host.name".to_owned(), h));
        }
        for (var, key) in [
            ("K8S_NODE_NAME", "k8s.node.name"),
            ("K8S_POD_NAME", "k8s.pod.name"),
            ("K8S_NAMESPACE_NAME", "k8s.namespace.name"),
        ] {
            if let Some(v) = (ctx.lookup)(var).filter(|v| !v.is_empty()) {
                node.push((key.to_owned(), v));
            }
        }
    }
    Ok(Box::new(Arc::new(Spec { node })))
}

impl ProcessorSpec for Arc<Spec> {
    fn build(&self, _id: &ComponentId, _ctx: &BuildCtx) -> Stage {
        Stage::Inline(Arc::new(Enrich { spec: self.clone() }))
    }
}

pub struct Enrich {
    spec: Arc<Spec>,
}

fn has(attrs: &[KeyValue], key: &str) -> bool {
    attrs.iter().any(|kv| kv.key == key)
}

impl Processor for Enrich {
    fn process(&self, spans: &mut Vec<ResourceSpans>) -> Result<(), Refusal> {
        for rs in spans.iter_mut() {
            let resource = rs.resource.get_or_insert_with(Resource::default);
            for (k, v) in &self.spec.node {
                if !has(&resource.attributes, k) {
                    resource.attributes.push(string_attr(k, v));
                }
            }
            let resource_agent = resource_agent(&resource.attributes);
            for ss in rs.scope_spans.iter_mut() {
                for span in ss.spans.iter_mut() {
                    // One walk over the span's attributes for all three keys.
                    let [agent, topic, destination] = span.find_attrs([
                        "loom.agent.id",
                        "loom.topic",
                        "messaging.destination.name",
                    ]);
                    let add_agent = agent.is_none();
                    // Owned (the span is written below), so copied only when it is used.
                    let destination = if topic.is_none() {
                        destination.flatten().map(str::to_owned)
                    } else {
                        None
                    };
                    if add_agent {
                        if let Some(agent) = resource_agent {
                            span.push_str_attr("loom.agent.id", agent);
                        }
                    }
                    if let Some(topic) = destination {
                        span.push_str_attr("loom.topic", &topic);
                    }
                }
            }
        }
        Ok(())
    }
}
