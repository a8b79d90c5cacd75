//! tail_sampling's YAML: the Collector's shape (`decision_wait`, `num_traces`, `policies`) plus
//! the byte bound (`max_bytes`, `when_full`), checked at load with errors naming YAML paths.

use std::time::Duration;

use serde::Deserialize;
use serde_yaml::Value;

use super::policy::{Policy, PolicyKind, StatusCodes};
use crate::config::{byte_bound, parse_as, require_positive, ConfigError};
use crate::processors::sampler::threshold;

/// The smallest `max_bytes`: room for a few traces of a few hundred spans.
pub const MIN_MAX_BYTES: u64 = 64 * 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default = "default_wait", with = "humantime_serde")]
    decision_wait: Duration,
    #[serde(default = "default_num_traces")]
    num_traces: usize,
    /// The Collector's map-sizing hint; accepted so its files load, not needed here.
    #[serde(default)]
    #[allow(dead_code)]
    expected_new_traces_per_sec: u64,
    #[serde(default = "default_max_bytes")]
    max_bytes: u64,
    #[serde(default)]
    when_full: WhenFull,
    #[serde(default)]
    decision_cache: DecisionCache,
    #[serde(default)]
    policies: Vec<Value>,
}

fn default_wait() -> Duration {
    Duration::from_secs(10)
}

fn default_num_traces() -> usize {
    50_000
}

fn default_max_bytes() -> u64 {
    256 * 1024 * 1024
}

/// What happens to the oldest undecided trace when `max_bytes` or `num_traces` is reached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhenFull {
    /// Run the policies now on what has arrived (a slow or erroring trace is usually kept).
    #[default]
    Decide,
    /// Drop it unsampled.
    Drop,
}

/// The Collector's `decision_cache`: how many decided trace ids are remembered, so spans that
/// arrive after the decision follow it.
/// A field left out takes its value from `Default`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecisionCache {
    pub sampled_cache_size: usize,
    pub non_sampled_cache_size: usize,
}

impl Default for DecisionCache {
    fn default() -> Self {
        DecisionCache {
            sampled_cache_size: 100_000,
            non_sampled_cache_size: 100_000,
        }
    }
}

/// A checked `tail_sampling` config.
#[derive(Debug)]
pub struct Settings {
    pub decision_wait: Duration,
    pub num_traces: usize,
    pub max_bytes: usize,
    pub when_full: WhenFull,
    pub cache: DecisionCache,
    pub policies: Vec<Policy>,
}

pub fn parse_settings(v: &Value, path: &str) -> Result<Settings, ConfigError> {
    let r: Raw = parse_as(v, path)?;
    require_positive(path, "decision_wait", r.decision_wait)?;
    require_positive(path, "num_traces", r.num_traces)?;
    let max_bytes = byte_bound(path, "max_bytes", r.max_bytes, MIN_MAX_BYTES)?;
    if r.policies.is_empty() {
        return Err(ConfigError::at(
            format!("{path}.policies"),
            "at least one policy is needed (always_sample keeps everything)",
        ));
    }
    let policies = parse_policies(&r.policies, &format!("{path}.policies"), true)?;
    Ok(Settings {
        decision_wait: r.decision_wait,
        num_traces: r.num_traces,
        max_bytes,
        when_full: r.when_full,
        cache: r.decision_cache,
        policies,
    })
}

/// Policy types a top-level list takes; `and` / `composite` lists take the leaves only, as
/// in the Collector.
const LEAF_TYPES: &[&str] = &[
    "always_sample",
    "status_code",
    "latency",
    "probabilistic",
    "string_attribute",
    "numeric_attribute",
    "span_count",
    "rate_limiting",
];

fn parse_policies(list: &[Value], path: &str, top: bool) -> Result<Vec<Policy>, ConfigError> {
    let mut out: Vec<Policy> = Vec::with_capacity(list.len());
    for (i, v) in list.iter().enumerate() {
        let p = parse_policy(v, &format!("{path}[{i}]"), top)?;
        if out.iter().any(|q| q.name == p.name) {
            return Err(ConfigError::at(
                format!("{path}[{i}].name"),
                format!("{:?} is used by another policy of this list", p.name),
            ));
        }
        out.push(p);
    }
    Ok(out)
}

fn parse_policy(v: &Value, path: &str, top: bool) -> Result<Policy, ConfigError> {
    let Value::Mapping(m) = v else {
        return Err(ConfigError::at(
            path,
            "expected a mapping {name, type, <type>: {...}}",
        ));
    };
    let text = |key: &str| -> Result<String, ConfigError> {
        match m.get(key) {
            Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
            Some(_) => Err(ConfigError::at(
                format!("{path}.{key}"),
                "expected a non-empty string",
            )),
            None => Err(ConfigError::at(format!("{path}.{key}"), "missing")),
        }
    };
    let name = text("name")?;
    let kind = text("type")?;
    let allowed: Vec<&str> = if top {
        LEAF_TYPES
            .iter()
            .copied()
            .chain(["and", "composite"])
            .collect()
    } else {
        LEAF_TYPES.to_vec()
    };
    if !allowed.contains(&kind.as_str()) {
        return Err(ConfigError::at(
            format!("{path}.type"),
            format!(
                "unknown policy type {kind:?}; available: {}",
                allowed.join(", ")
            ),
        ));
    }
    for k in m.keys() {
        let key = k.as_str().unwrap_or("");
        if key != "name" && key != "type" && key != kind {
            return Err(ConfigError::at(
                format!("{path}.{key}"),
                format!("unknown key; a {kind:?} policy takes name, type and {kind}"),
            ));
        }
    }
    let body = m.get(kind.as_str()).cloned().unwrap_or(Value::Null);
    let bpath = format!("{path}.{kind}");
    let kind = match kind.as_str() {
        "always_sample" => {
            let _: Empty = parse_as(&body, &bpath)?;
            PolicyKind::AlwaysSample
        }
        "status_code" => {
            let c: StatusCodeCfg = parse_as(&body, &bpath)?;
            let mut codes = StatusCodes::default();
            if c.status_codes.is_empty() {
                return Err(ConfigError::at(
                    format!("{bpath}.status_codes"),
                    "list at least one of ERROR, OK, UNSET",
                ));
            }
            for (i, s) in c.status_codes.iter().enumerate() {
                match s.as_str() {
                    "UNSET" => codes.unset = true,
                    "OK" => codes.ok = true,
                    "ERROR" => codes.error = true,
                    other => {
                        return Err(ConfigError::at(
                            format!("{bpath}.status_codes[{i}]"),
                            format!("{other:?}: expected ERROR, OK or UNSET"),
                        ))
                    }
                }
            }
            PolicyKind::StatusCode(codes)
        }
        "latency" => {
            let c: LatencyCfg = parse_as(&body, &bpath)?;
            if c.threshold_ms == 0 && c.upper_threshold_ms.is_none() {
                return Err(ConfigError::at(
                    format!("{bpath}.threshold_ms"),
                    "must be greater than 0 (or set upper_threshold_ms)",
                ));
            }
            if let Some(up) = c.upper_threshold_ms {
                if up <= c.threshold_ms {
                    return Err(ConfigError::at(
                        format!("{bpath}.upper_threshold_ms"),
                        format!("{up} must be above threshold_ms ({})", c.threshold_ms),
                    ));
                }
            }
            PolicyKind::Latency {
                threshold_ns: c.threshold_ms.saturating_mul(1_000_000),
                upper_ns: c.upper_threshold_ms.map(|u| u.saturating_mul(1_000_000)),
            }
        }
        "probabilistic" => {
            let c: ProbabilisticCfg = parse_as(&body, &bpath)?;
            if !(0.0..=100.0).contains(&c.sampling_percentage) {
                return Err(ConfigError::at(
                    format!("{bpath}.sampling_percentage"),
                    format!("{} is not within 0..=100", c.sampling_percentage),
                ));
            }
            PolicyKind::Probabilistic {
                threshold: threshold(c.sampling_percentage / 100.0),
            }
        }
        "string_attribute" => {
            let c: StringAttrCfg = parse_as(&body, &bpath)?;
            if c.key.is_empty() {
                return Err(ConfigError::at(format!("{bpath}.key"), "must not be empty"));
            }
            if c.values.is_empty() {
                return Err(ConfigError::at(
                    format!("{bpath}.values"),
                    "list at least one value",
                ));
            }
            let regexes = if c.enabled_regex_matching {
                let mut out = Vec::new();
                for (i, v) in c.values.iter().enumerate() {
                    out.push(regex::Regex::new(v).map_err(|e| {
                        ConfigError::at(format!("{bpath}.values[{i}]"), e.to_string())
                    })?);
                }
                Some(out)
            } else {
                None
            };
            PolicyKind::StringAttribute {
                key: c.key,
                values: c.values,
                regexes,
                invert: c.invert_match,
            }
        }
        "numeric_attribute" => {
            let c: NumericAttrCfg = parse_as(&body, &bpath)?;
            if c.key.is_empty() {
                return Err(ConfigError::at(format!("{bpath}.key"), "must not be empty"));
            }
            if c.min_value.is_none() && c.max_value.is_none() {
                return Err(ConfigError::at(
                    bpath.as_str(),
                    "set min_value, max_value or both",
                ));
            }
            if let (Some(lo), Some(hi)) = (c.min_value, c.max_value) {
                if lo > hi {
                    return Err(ConfigError::at(
                        format!("{bpath}.max_value"),
                        format!("{hi} is below min_value ({lo})"),
                    ));
                }
            }
            PolicyKind::NumericAttribute {
                key: c.key,
                min: c.min_value.unwrap_or(f64::NEG_INFINITY),
                max: c.max_value.unwrap_or(f64::INFINITY),
                invert: c.invert_match,
            }
        }
        "span_count" => {
            let c: SpanCountCfg = parse_as(&body, &bpath)?;
            require_positive(&bpath, "min_spans", c.min_spans)?;
            if let Some(max) = c.max_spans.filter(|m| *m < c.min_spans) {
                return Err(ConfigError::at(
                    format!("{bpath}.max_spans"),
                    format!("{max} is below min_spans ({})", c.min_spans),
                ));
            }
            PolicyKind::SpanCount {
                min: c.min_spans,
                max: c.max_spans.unwrap_or(usize::MAX),
            }
        }
        "rate_limiting" => {
            let c: RateCfg = parse_as(&body, &bpath)?;
            require_positive(&bpath, "spans_per_second", c.spans_per_second)?;
            PolicyKind::rate_limiting(c.spans_per_second)
        }
        "and" => {
            let c: AndCfg = parse_as(&body, &bpath)?;
            if c.and_sub_policy.is_empty() {
                return Err(ConfigError::at(
                    format!("{bpath}.and_sub_policy"),
                    "list at least one policy",
                ));
            }
            PolicyKind::And(parse_policies(
                &c.and_sub_policy,
                &format!("{bpath}.and_sub_policy"),
                false,
            )?)
        }
        "composite" => parse_composite(&body, &bpath)?,
        _ => unreachable!("checked against the allowed types above"),
    };
    Ok(Policy { name, kind })
}

fn parse_composite(body: &Value, bpath: &str) -> Result<PolicyKind, ConfigError> {
    let c: CompositeCfg = parse_as(body, bpath)?;
    require_positive(
        bpath,
        "max_total_spans_per_second",
        c.max_total_spans_per_second,
    )?;
    let subs = parse_policies(
        &c.composite_sub_policy,
        &format!("{bpath}.composite_sub_policy"),
        false,
    )?;
    if subs.is_empty() {
        return Err(ConfigError::at(
            format!("{bpath}.composite_sub_policy"),
            "list at least one policy",
        ));
    }
    let mut order = Vec::new();
    for (i, name) in c.policy_order.iter().enumerate() {
        match subs.iter().position(|p| &p.name == name) {
            Some(ix) if !order.contains(&ix) => order.push(ix),
            Some(_) => {
                return Err(ConfigError::at(
                    format!("{bpath}.policy_order[{i}]"),
                    format!("{name:?} is listed twice"),
                ))
            }
            None => {
                return Err(ConfigError::at(
                    format!("{bpath}.policy_order[{i}]"),
                    format!("{name:?} is not a composite_sub_policy name"),
                ))
            }
        }
    }
    // Sub-policies policy_order leaves out are tried after the listed ones, in list order.
    for ix in 0..subs.len() {
        if !order.contains(&ix) {
            order.push(ix);
        }
    }
    let mut percent = vec![None; subs.len()];
    let mut total = 0u64;
    for (i, a) in c.rate_allocation.iter().enumerate() {
        let Some(ix) = subs.iter().position(|p| p.name == a.policy) else {
            return Err(ConfigError::at(
                format!("{bpath}.rate_allocation[{i}].policy"),
                format!("{:?} is not a composite_sub_policy name", a.policy),
            ));
        };
        total += a.percent;
        percent[ix] = Some(a.percent);
    }
    if total > 100 {
        return Err(ConfigError::at(
            format!("{bpath}.rate_allocation"),
            format!("percentages add up to {total}, above 100"),
        ));
    }
    // Sub-policies without an allocation share what the listed ones leave, equally.
    let unlisted = percent.iter().filter(|p| p.is_none()).count() as u64;
    let rest = (100 - total).checked_div(unlisted).unwrap_or(0);
    let mut ordered = Vec::new();
    let mut subs: Vec<Option<Policy>> = subs.into_iter().map(Some).collect();
    for ix in order {
        let pct = percent[ix].unwrap_or(rest);
        let budget = c.max_total_spans_per_second.saturating_mul(pct) / 100;
        if let Some(p) = subs[ix].take() {
            ordered.push((p, PolicyKind::rate_limiting(budget.max(1))));
        }
    }
    Ok(PolicyKind::Composite(ordered))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StatusCodeCfg {
    #[serde(default)]
    status_codes: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LatencyCfg {
    #[serde(default)]
    threshold_ms: u64,
    #[serde(default)]
    upper_threshold_ms: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProbabilisticCfg {
    sampling_percentage: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct StringAttrCfg {
    key: String,
    #[serde(default)]
    values: Vec<String>,
    #[serde(default)]
    enabled_regex_matching: bool,
    #[serde(default)]
    invert_match: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NumericAttrCfg {
    key: String,
    #[serde(default)]
    min_value: Option<f64>,
    #[serde(default)]
    max_value: Option<f64>,
    #[serde(default)]
    invert_match: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SpanCountCfg {
    #[serde(default)]
    min_spans: usize,
    #[serde(default)]
    max_spans: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RateCfg {
    spans_per_second: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AndCfg {
    #[serde(default)]
    and_sub_policy: Vec<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompositeCfg {
    max_total_spans_per_second: u64,
    #[serde(default)]
    policy_order: Vec<String>,
    #[serde(default)]
    composite_sub_policy: Vec<Value>,
    #[serde(default)]
    rate_allocation: Vec<Allocation>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Allocation {
    policy: String,
    percent: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Settings, ConfigError> {
        crate::config::parse_yaml(yaml, "processors.tail_sampling", parse_settings)
    }

    #[test]
    fn takes_a_collector_file_and_names_the_path_of_each_mistake() {
        let ok = parse(
            "decision_wait: 5s\nnum_traces: 100\nexpected_new_traces_per_sec: 10\n\
             policies:\n  - {name: errors, type: status_code, status_code: {status_codes: [ERROR]}}\n\
             \x20 - {name: slow, type: latency, latency: {threshold_ms: 500}}\n\
             \x20 - {name: some, type: probabilistic, probabilistic: {sampling_percentage: 10}}\n\
             \x20 - name: both\n    type: and\n    and:\n      and_sub_policy:\n\
             \x20       - {name: a, type: string_attribute, string_attribute: {key: loom.topic, values: ['orders\\..*'], enabled_regex_matching: true}}\n\
             \x20       - {name: b, type: span_count, span_count: {min_spans: 2}}\n",
        )
        .expect("valid");
        assert_eq!(ok.decision_wait, Duration::from_secs(5));
        assert_eq!(ok.policies.len(), 4);

        let cases = [
            (
                "policies: [{name: x, type: latency, latency: {threshold_ms: 0}}]",
                "processors.tail_sampling.policies[0].latency.threshold_ms",
            ),
            (
                "policies: [{name: x, type: always_sample}, {name: y, type: nope}]",
                "processors.tail_sampling.policies[1].type",
            ),
            (
                "policies: [{name: x, type: status_code, status_code: {status_codes: [ERR]}}]",
                "processors.tail_sampling.policies[0].status_code.status_codes[0]",
            ),
            (
                "policies: [{name: x, type: probabilistic, probabilistic: {sampling_percentage: 150}}]",
                "processors.tail_sampling.policies[0].probabilistic.sampling_percentage",
            ),
            (
                "policies: [{name: x, type: latency, latency: {threshold_ms: 5, typo: 1}}]",
                "processors.tail_sampling.policies[0].latency.typo",
            ),
            (
                "policies: [{name: x, type: always_sample, latency: {}}]",
                "processors.tail_sampling.policies[0].latency",
            ),
            (
                "policies: [{name: x, type: always_sample}, {name: x, type: always_sample}]",
                "processors.tail_sampling.policies[1].name",
            ),
            ("policies: []", "processors.tail_sampling.policies"),
            (
                "max_bytes: 10\npolicies: [{name: x, type: always_sample}]",
                "processors.tail_sampling.max_bytes",
            ),
            (
                "policies: [{name: c, type: composite, composite: {max_total_spans_per_second: 10, policy_order: [zz], composite_sub_policy: [{name: a, type: always_sample}]}}]",
                "processors.tail_sampling.policies[0].composite.policy_order[0]",
            ),
            (
                "policies: [{name: c, type: and, and: {and_sub_policy: [{name: a, type: and}]}}]",
                "processors.tail_sampling.policies[0].and.and_sub_policy[0].type",
            ),
        ];
        crate::config::assert_errors_at(parse_settings, "processors.tail_sampling", &cases);
    }
}
