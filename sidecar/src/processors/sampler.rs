//! sampler: OpenTelemetry sampler names plus ordered agent/topic rules, decided per trace.
//!
//! Ratio decisions are OpenTelemetry consistent probability sampling: the randomness is the
//! trace id's low 56 bits, kept when `R >= (1 - ratio) * 2^56`. Every sidecar therefore keeps
//! or drops the same traces, and a trace that crosses nodes stays whole.
//!
//! `parentbased_*`: a span with a parent follows the parent's sampled flag (the W3C flags that
//! OTLP carries in `Span.flags` bits 0–7; an exporter that leaves that byte at 0 says nothing,
//! and the span counts as sampled since it was exported). When the delegate is a ratio, sampled
//! children also face the same trace-id ratio as their root, so the root and its children are
//! always decided alike. Roots use the delegate.

use std::collections::HashMap;
use std::sync::Arc;

use globset::{Glob, GlobMatcher};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use serde::Deserialize;

use super::{BuildCtx, Processor, ProcessorSpec, Stage};
use crate::component::Factory;
use crate::component::Refusal;
use crate::config::{parse_as, ComponentId, ComponentYaml, ConfigError, ParseCtx};
use crate::metrics::{Metric, Metrics};
use crate::model::{ResourceSpans, Span};
use loom_core::sampler_spec::{parse_sampler, sampler_spec_from, SamplerSpec, SamplerSpecError};

pub const FACTORY: Factory<dyn ProcessorSpec> = Factory {
    kind: "sampler",
    parse,
};

/// The names (and their parsing) are loom-core's, shared with the Rust and Python SDKs.
pub use loom_core::sampler_spec::SAMPLER_NAMES;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ChoiceConfig {
    sampler: String,
    #[serde(default)]
    arg: Option<ArgValue>,
}

/// `arg:` as written: a number, or text, which is what `${env:OTEL_TRACE_SAMPLER_ARG}` leaves
/// when the variable is not a number. Text is checked by the shared parser like the variable
/// itself, and only for the samplers that take a ratio, as the SDKs do.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ArgValue {
    Number(f64),
    Text(String),
}

impl ArgValue {
    fn text(&self) -> String {
        match self {
            ArgValue::Number(n) => n.to_string(),
            ArgValue::Text(t) => t.clone(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MatchConfig {
    #[serde(default)]
    agent: Option<String>,
    #[serde(default)]
    topic: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleConfig {
    #[serde(default)]
    name: Option<String>,
    #[serde(rename = "match", default)]
    matcher: MatchConfig,
    sampler: String,
    #[serde(default)]
    arg: Option<ArgValue>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SamplerConfig {
    #[serde(default)]
    default: Option<ChoiceConfig>,
    #[serde(default)]
    rules: Vec<RuleConfig>,
}

/// A parsed sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Kind {
    AlwaysOn,
    AlwaysOff,
    /// Keep when the trace id's low 56 bits are at least this threshold.
    Ratio(u64),
    ParentBased(Root),
}

/// The root-span delegate of a parent-based sampler.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    AlwaysOn,
    AlwaysOff,
    Ratio(u64),
}

const TWO_56: f64 = (1u64 << 56) as f64;

/// Threshold of consistent probability sampling for `ratio` (0 keeps all, 2^56 keeps none).
pub fn threshold(ratio: f64) -> u64 {
    let t = ((1.0 - ratio.clamp(0.0, 1.0)) * TWO_56).round();
    t as u64
}

/// The randomness of a trace: its id's low 56 bits (the last 7 bytes, big-endian).
pub fn randomness(trace_id: &[u8]) -> u64 {
    if trace_id.len() != 16 {
        return 0;
    }
    trace_id[9..16]
        .iter()
        .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

pub fn ratio_keeps(trace_id: &[u8], threshold: u64) -> bool {
    randomness(trace_id) >= threshold
}

impl From<SamplerSpec> for Kind {
    fn from(spec: SamplerSpec) -> Kind {
        match spec {
            SamplerSpec::AlwaysOn => Kind::AlwaysOn,
            SamplerSpec::AlwaysOff => Kind::AlwaysOff,
            SamplerSpec::TraceIdRatio(r) => Kind::Ratio(threshold(r)),
            SamplerSpec::ParentBasedAlwaysOn => Kind::ParentBased(Root::AlwaysOn),
            SamplerSpec::ParentBasedAlwaysOff => Kind::ParentBased(Root::AlwaysOff),
            SamplerSpec::ParentBasedTraceIdRatio(r) => Kind::ParentBased(Root::Ratio(threshold(r))),
        }
    }
}

/// The YAML key an `arg:` error names (the path says where).
const ARG_KEY: &str = "arg";

/// Reads a YAML `sampler:` (names, or the inline `name=ratio` form, which wins over `arg:`) and
/// `arg:` with loom-core's parser. The error says which of the two keys is wrong, for the caller
/// to place at its path.
fn parse_kind(name: &str, arg: Option<&ArgValue>) -> Result<Kind, (&'static str, String)> {
    let arg_text = arg.map(ArgValue::text);
    parse_sampler("sampler", name, arg_text.as_deref().map(|a| (ARG_KEY, a)))
        .map(Kind::from)
        .map_err(|e| match (&e, arg) {
            (SamplerSpecError::InvalidRatio { var, .. }, Some(arg)) if var == ARG_KEY => {
                let shown = match arg {
                    ArgValue::Number(n) => n.to_string(),
                    ArgValue::Text(t) => format!("{t:?}"),
                };
                (
                    ARG_KEY,
                    format!("arg {shown} is not a sampling ratio from 0.0 to 1.0"),
                )
            }
            _ => ("sampler", message(&e)),
        })
}

/// The sidecar's wording of a sampler error, which goes after a YAML path (and, for the
/// environment, the variable): the value Debug-quoted, as in the sidecar's other config errors.
fn message(e: &SamplerSpecError) -> String {
    match e {
        SamplerSpecError::UnknownSampler { value, .. } => format!(
            "{value:?} is not a known sampler; accepted values: {} (the ratio ones also as traceidratio=<ratio>)",
            SAMPLER_NAMES.join(", ")
        ),
        SamplerSpecError::InvalidRatio { var, value } if var.ends_with("_ARG") => {
            format!("{value:?} is not a sampling ratio from 0.0 to 1.0")
        }
        SamplerSpecError::InvalidRatio { value, .. } => {
            format!("{value:?}: the ratio is not a number from 0.0 to 1.0")
        }
        SamplerSpecError::UnexpectedRatio { value, name, .. } => format!(
            "{value:?}: {name} takes no ratio; only traceidratio and parentbased_traceidratio do"
        ),
    }
}

/// W3C sampled flag of the span's context as OTLP carries it (bits 0–7 of `Span.flags`).
/// Many exporters (the Python SDK's among them) fill only the is-remote bits 8–9 and leave the
/// trace-flags byte at 0; a zero byte therefore says nothing, and the span counts as sampled
/// since it was exported. A populated byte (e.g. the W3C "random" bit) is read as it stands.
fn flag_sampled(span: &Span) -> Option<bool> {
    let trace_flags = span.flags() & 0xff;
    if trace_flags == 0 {
        None
    } else {
        Some(trace_flags & 0x1 != 0)
    }
}

impl Kind {
    pub fn keeps(&self, span: &Span) -> bool {
        match *self {
            Kind::AlwaysOn => true,
            Kind::AlwaysOff => false,
            Kind::Ratio(t) => ratio_keeps(span.trace_id(), t),
            Kind::ParentBased(root) => {
                if !span.has_parent() {
                    match root {
                        Root::AlwaysOn => true,
                        Root::AlwaysOff => false,
                        Root::Ratio(t) => ratio_keeps(span.trace_id(), t),
                    }
                } else {
                    let parent_sampled = flag_sampled(span).unwrap_or(true);
                    match root {
                        Root::Ratio(t) => parent_sampled && ratio_keeps(span.trace_id(), t),
                        _ => parent_sampled,
                    }
                }
            }
        }
    }
}

struct Rule {
    name: String,
    agent: Option<GlobMatcher>,
    topic: Option<GlobMatcher>,
    kind: Kind,
}

struct Spec {
    default: Kind,
    rules: Vec<Rule>,
}

fn glob(path: &str, pattern: &Option<String>) -> Result<Option<GlobMatcher>, ConfigError> {
    pattern
        .as_deref()
        .map(|p| {
            Glob::new(p)
                .map(|g| g.compile_matcher())
                .map_err(|e| ConfigError::at(path, format!("invalid glob {p:?}: {e}")))
        })
        .transpose()
}

fn parse(y: &ComponentYaml<'_>) -> Result<Box<dyn ProcessorSpec>, ConfigError> {
    let (v, path, ctx) = (y.value, y.path, y.ctx);
    Ok(Box::new(Arc::new(parse_spec(v, path, ctx)?)))
}

fn parse_spec(v: &serde_yaml::Value, path: &str, ctx: &ParseCtx<'_>) -> Result<Spec, ConfigError> {
    let c: SamplerConfig = parse_as(v, path)?;
    let default = match &c.default {
        Some(d) => parse_kind(&d.sampler, d.arg.as_ref()).map_err(|(key, m)| {
            let at = format!("{path}.default.{key}");
            let hint = ctx.origin_hint(&at);
            ConfigError::at(at, format!("{m}{hint}"))
        })?,
        None => {
            from_env(ctx).map_err(|e| ConfigError::at(format!("{path}.default"), e.to_string()))?
        }
    };
    let mut rules = Vec::new();
    for (i, r) in c.rules.iter().enumerate() {
        let at = format!("{path}.rules[{i}]");
        let kind = parse_kind(&r.sampler, r.arg.as_ref())
            .map_err(|(key, m)| ConfigError::at(format!("{at}.{key}"), m))?;
        rules.push(Rule {
            name: r.name.clone().unwrap_or_else(|| format!("rules[{i}]")),
            agent: glob(&format!("{at}.match.agent"), &r.matcher.agent)?,
            topic: glob(&format!("{at}.match.topic"), &r.matcher.topic)?,
            kind,
        });
    }
    Ok(Spec { default, rules })
}

/// A sampler variable of the environment that does not parse, worded as the sidecar's other
/// config errors: the variable, then the problem.
#[derive(Debug, thiserror::Error)]
#[error("{}: {}", .0.var(), message(.0))]
pub struct EnvSamplerError(#[source] SamplerSpecError);

/// No `default:` in the YAML: the environment decides, read as the SDKs read it.
fn from_env(ctx: &ParseCtx<'_>) -> Result<Kind, EnvSamplerError> {
    sampler_spec_from(|k| (ctx.lookup)(k))
        .map(Kind::from)
        .map_err(EnvSamplerError)
}

impl ProcessorSpec for Arc<Spec> {
    fn build(&self, id: &ComponentId, ctx: &BuildCtx) -> Stage {
        Stage::Inline(Arc::new(Sampler {
            spec: self.clone(),
            metrics: ctx.metrics.clone(),
            id: id.to_string(),
        }))
    }
}

pub struct Sampler {
    spec: Arc<Spec>,
    metrics: Arc<Metrics>,
    id: String,
}

fn str_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    attrs.iter().find(|kv| kv.key == key).and_then(|kv| {
        match kv.value.as_ref()?.value.as_ref()? {
            any_value::Value::StringValue(s) if !s.is_empty() => Some(s.as_str()),
            _ => None,
        }
    })
}

/// The agent a span belongs to: its own `loom.agent.id`, else its resource's, else a
/// `service.name` of the form `agent-{id}`.
pub fn span_agent<'a>(span: &'a Span, resource: &'a [KeyValue]) -> Option<&'a str> {
    span.str_attr("loom.agent.id")
        .or_else(|| resource_agent(resource))
}

/// The agent a resource names: `loom.agent.id`, else a `service.name` of the form `agent-{id}`.
pub fn resource_agent(resource: &[KeyValue]) -> Option<&str> {
    str_attr(resource, "loom.agent.id").or_else(|| {
        str_attr(resource, "service.name")
            .and_then(|s| s.strip_prefix("agent-"))
            .filter(|s| !s.is_empty())
    })
}

/// The topic of a span: `loom.topic`, else the messaging convention's destination name.
pub fn span_topic(span: &Span) -> Option<&str> {
    let [topic, destination] = span.find_attrs(["loom.topic", "messaging.destination.name"]);
    topic.flatten().or(destination.flatten())
}

impl Sampler {
    /// Index of the first rule the span matches (None: the default).
    fn rule_for(&self, span: &Span, resource: &[KeyValue]) -> Option<usize> {
        // Each lookup walks the span's bytes: at most once per span, and only if a rule asks.
        let agent = std::cell::OnceCell::new();
        let topic = std::cell::OnceCell::new();
        self.spec.rules.iter().position(|r| {
            let agent_ok = r.agent.as_ref().is_none_or(|g| {
                agent
                    .get_or_init(|| span_agent(span, resource))
                    .is_some_and(|a| g.is_match(a))
            });
            let topic_ok = r.topic.as_ref().is_none_or(|g| {
                topic
                    .get_or_init(|| span_topic(span))
                    .is_some_and(|t| g.is_match(t))
            });
            agent_ok && topic_ok
        })
    }
}

impl Processor for Sampler {
    fn process(&self, spans: &mut Vec<ResourceSpans>) -> Result<(), Refusal> {
        let spec = &self.spec;
        if spec.rules.is_empty() && spec.default == Kind::AlwaysOn {
            let n = crate::model::span_count(spans) as u64;
            self.metrics.count(
                Metric::SamplerKeptSpans,
                &[("processor", &self.id), ("rule", "default")],
                n,
            );
            return Ok(());
        }
        // One decision per trace in this request: the first rule any of its spans matches
        // (in rule order) applies to all of them, so a request never splits a trace.
        let mut trace_rule: HashMap<&[u8], Option<usize>> = HashMap::new();
        if !spec.rules.is_empty() {
            for rs in spans.iter() {
                let resource = rs
                    .resource
                    .as_ref()
                    .map(|r| r.attributes.as_slice())
                    .unwrap_or(&[]);
                for ss in &rs.scope_spans {
                    for s in &ss.spans {
                        let r = self.rule_for(s, resource);
                        trace_rule
                            .entry(s.trace_id())
                            .and_modify(|cur| {
                                if let (Some(new), Some(old)) = (r, *cur) {
                                    *cur = Some(new.min(old));
                                } else if cur.is_none() {
                                    *cur = r;
                                }
                            })
                            .or_insert(r);
                    }
                }
            }
        }
        let trace_rule: HashMap<Vec<u8>, Option<usize>> = trace_rule
            .into_iter()
            .map(|(k, v)| (k.to_vec(), v))
            .collect();
        let mut dropped: Vec<u64> = vec![0; spec.rules.len() + 1];
        let mut kept: Vec<u64> = vec![0; spec.rules.len() + 1];
        for rs in spans.iter_mut() {
            for ss in rs.scope_spans.iter_mut() {
                ss.spans.retain(|s| {
                    let rule = trace_rule.get(s.trace_id()).copied().flatten();
                    let (kind, slot) = match rule {
                        Some(i) => (spec.rules[i].kind, i),
                        None => (spec.default, spec.rules.len()),
                    };
                    let keep = kind.keeps(s);
                    if keep {
                        kept[slot] += 1;
                    } else {
                        dropped[slot] += 1;
                    }
                    keep
                });
            }
            rs.scope_spans.retain(|ss| !ss.spans.is_empty());
        }
        spans.retain(|rs| !rs.scope_spans.is_empty());
        for (slot, (d, k)) in dropped.iter().zip(kept.iter()).enumerate() {
            let rule = spec
                .rules
                .get(slot)
                .map(|r| r.name.as_str())
                .unwrap_or("default");
            self.metrics.count(
                Metric::SamplerDroppedSpans,
                &[("processor", &self.id), ("rule", rule)],
                *d,
            );
            self.metrics.count(
                Metric::SamplerKeptSpans,
                &[("processor", &self.id), ("rule", rule)],
                *k,
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::trace::v1 as pb;

    fn tid(low: u64) -> Vec<u8> {
        let mut t = vec![0xAB; 16];
        t[8..16].copy_from_slice(&low.to_be_bytes());
        t
    }

    #[test]
    fn threshold_and_randomness_follow_the_spec() {
        assert_eq!(threshold(1.0), 0);
        assert_eq!(threshold(0.0), 1 << 56);
        assert_eq!(threshold(0.5), 1 << 55);
        // The top byte of the low 8 is not part of the randomness.
        assert_eq!(randomness(&tid(0xFF00_0000_0000_0001)), 1);
        assert!(ratio_keeps(&tid((1 << 55) + 1), threshold(0.5)));
        assert!(!ratio_keeps(&tid((1 << 55) - 1), threshold(0.5)));
        assert!(!ratio_keeps(&tid((1 << 56) - 1), threshold(0.0)));
    }

    #[test]
    fn parent_based_follows_the_flag_and_roots_use_the_delegate() {
        let root = Span::from_proto(&pb::Span {
            trace_id: tid(1),
            ..pb::Span::default()
        });
        let child = |flags: u32| {
            Span::from_proto(&pb::Span {
                trace_id: tid(1),
                parent_span_id: vec![1; 8],
                flags,
                ..pb::Span::default()
            })
        };
        let pb_on = Kind::ParentBased(Root::AlwaysOn);
        let pb_off = Kind::ParentBased(Root::AlwaysOff);
        assert!(pb_on.keeps(&root));
        assert!(!pb_off.keeps(&root));
        assert!(pb_off.keeps(&child(0x301)), "sampled parent");
        assert!(
            !pb_on.keeps(&child(0x302)),
            "unsampled parent: flags byte populated, bit 0 clear"
        );
        assert!(
            pb_on.keeps(&child(0x100)),
            "only is-remote bits set (Python SDK): exported means sampled"
        );
        assert!(
            pb_on.keeps(&child(0)),
            "flags unset: exported means sampled"
        );
        assert!(pb_off.keeps(&child(0x01)));
    }

    #[test]
    fn names_parse_and_unknown_names_list_the_choices() {
        assert_eq!(
            parse_kind("traceidratio", Some(&ArgValue::Number(0.5))),
            Ok(Kind::Ratio(1 << 55))
        );
        assert_eq!(
            parse_kind("traceidratio", Some(&ArgValue::Number(1.5)))
                .unwrap_err()
                .0,
            "arg"
        );
        let (key, e) = parse_kind("sometimes", None).unwrap_err();
        assert_eq!(key, "sampler");
        for n in SAMPLER_NAMES {
            assert!(e.contains(n), "{e}");
        }
    }

    /// The processor's spec from its YAML, `${env:…}` expanded from `env` as the config loader does.
    fn spec_of(yaml: &str, env: &HashMap<String, String>) -> Result<Spec, ConfigError> {
        let mut v: serde_yaml::Value = serde_yaml::from_str(yaml).unwrap();
        let mut origins = std::collections::BTreeMap::new();
        let lookup = |k: &str| env.get(k).cloned();
        crate::config::expand::expand(&mut v, "processors.sampler", &lookup, &mut origins)?;
        let ctx = ParseCtx {
            origins: &origins,
            lookup: &lookup,
        };
        parse_spec(&v, "processors.sampler", &ctx)
    }

    /// The `default:` of `configs/sidecar.yaml` and the Helm chart: Loom's variable names only.
    const SHIPPED_DEFAULT: &str = r#"default: { sampler: "${env:OTEL_TRACE_SAMPLER:-parentbased_always_on}", arg: "${env:OTEL_TRACE_SAMPLER_ARG:-1.0}" }"#;

    /// The shared table of sampler-variable verdicts (loom-core/tests/sampler_vectors.json),
    /// through this processor's config: with no `default:`, the environment decides.
    #[test]
    fn every_sampler_vector_gets_its_verdict_from_the_config() {
        let table: serde_json::Value = serde_json::from_str(include_str!(
            "../../../loom-core/tests/sampler_vectors.json"
        ))
        .unwrap();
        let cases = table["cases"].as_array().unwrap();
        assert!(cases.len() >= 30, "the table lost cases: {}", cases.len());
        let mut shipped_cases = 0;
        for case in cases {
            let name = case["name"].as_str().unwrap();
            let env: HashMap<String, String> = case["env"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            let got = spec_of("rules: []", &env);
            // The shipped configs read Loom's spellings through `${env:…}`: the same verdicts
            // for the cases that use only those (and no blank value, which `:-` keeps as is).
            let shipped = env.iter().all(|(k, v)| {
                k.starts_with("OTEL_TRACE_SAMPLER") && (v.is_empty() || !v.trim().is_empty())
            });
            let via_shipped = shipped.then(|| spec_of(SHIPPED_DEFAULT, &env));
            shipped_cases += usize::from(shipped);
            match case.get("error_var").and_then(|v| v.as_str()) {
                Some(var) => {
                    let err = got.err().unwrap_or_else(|| panic!("{name}: accepted"));
                    assert_eq!(err.path, "processors.sampler.default", "{name}");
                    assert!(
                        err.message.starts_with(&format!("{var}: ")),
                        "{name}: {err}"
                    );
                    if let Some(got) = via_shipped {
                        let err = got
                            .err()
                            .unwrap_or_else(|| panic!("{name}: shipped accepted"));
                        assert!(
                            err.to_string().contains(&format!("(from ${{env:{var}}})")),
                            "{name}: {err}"
                        );
                    }
                }
                None => {
                    let spec = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                    let shipped_kind = via_shipped
                        .map(|g| g.unwrap_or_else(|e| panic!("{name}: shipped: {e}")).default);
                    let ratio = case["ratio"].as_f64();
                    // Built here from the table, not through loom-core's conversion.
                    let want = match (case["sampler"].as_str().unwrap(), ratio) {
                        ("always_on", None) => Kind::AlwaysOn,
                        ("always_off", None) => Kind::AlwaysOff,
                        ("traceidratio", Some(r)) => Kind::Ratio(threshold(r)),
                        ("parentbased_always_on", None) => Kind::ParentBased(Root::AlwaysOn),
                        ("parentbased_always_off", None) => Kind::ParentBased(Root::AlwaysOff),
                        ("parentbased_traceidratio", Some(r)) => {
                            Kind::ParentBased(Root::Ratio(threshold(r)))
                        }
                        other => panic!("{name}: bad table entry {other:?}"),
                    };
                    assert_eq!(spec.default, want, "{name}");
                    if let Some(kind) = shipped_kind {
                        assert_eq!(kind, want, "{name}: shipped");
                    }
                }
            }
        }
        assert!(
            shipped_cases >= 8,
            "{shipped_cases} cases via the shipped default"
        );
    }

    #[test]
    fn the_shipped_default_checks_a_textual_arg_only_for_ratio_samplers() {
        let env = |pairs: &[(&str, &str)]| -> HashMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let on = spec_of(
            SHIPPED_DEFAULT,
            &env(&[
                ("OTEL_TRACE_SAMPLER", "always_on"),
                ("OTEL_TRACE_SAMPLER_ARG", "half"),
            ]),
        )
        .unwrap();
        assert_eq!(on.default, Kind::AlwaysOn);
        let err = spec_of(
            SHIPPED_DEFAULT,
            &env(&[
                ("OTEL_TRACE_SAMPLER", "traceidratio"),
                ("OTEL_TRACE_SAMPLER_ARG", "half"),
            ]),
        )
        .err()
        .unwrap()
        .to_string();
        assert_eq!(
            err,
            "processors.sampler.default.arg: arg \"half\" is not a sampling ratio from 0.0 to 1.0 (from ${env:OTEL_TRACE_SAMPLER_ARG})"
        );
    }

    #[test]
    fn yaml_takes_the_inline_form_and_it_wins_over_arg() {
        let env = HashMap::new();
        let spec = spec_of(
            "default: { sampler: traceidratio=0.25, arg: 1.0 }\nrules:\n  - { match: { topic: 'a.*' }, sampler: 'parentbased_traceidratio=0.5' }",
            &env,
        )
        .unwrap();
        assert_eq!(spec.default, Kind::Ratio(threshold(0.25)));
        assert_eq!(
            spec.rules[0].kind,
            Kind::ParentBased(Root::Ratio(threshold(0.5)))
        );
        for (yaml, path) in [
            (
                "default: { sampler: traceidratio, arg: 1.5 }",
                "processors.sampler.default.arg",
            ),
            (
                "default: { sampler: traceidratio=1.5 }",
                "processors.sampler.default.sampler",
            ),
            (
                "default: { sampler: always_on=1 }",
                "processors.sampler.default.sampler",
            ),
            (
                "rules: [{ sampler: traceidratio, arg: -1 }]",
                "processors.sampler.rules[0].arg",
            ),
            (
                "rules: [{ sampler: sometimes }]",
                "processors.sampler.rules[0].sampler",
            ),
        ] {
            let err = spec_of(yaml, &env)
                .err()
                .unwrap_or_else(|| panic!("{yaml}: accepted"));
            assert_eq!(err.path, path, "{yaml}: {err}");
        }
    }
}
