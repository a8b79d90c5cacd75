//! Sidecar configuration: YAML in the OpenTelemetry Collector's shape, env-expanded, validated,
//! with every error naming its YAML path (`exporters.otlp/jaeger.endpoint: ...`).
//!
//! This layer knows no component: each section's components are parsed by the factories of the
//! registry handed to `component::Config::from_yaml_with` (assembled in `load.rs`).

pub mod expand;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

/// A configuration problem at a YAML path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl ConfigError {
    pub fn at(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            path: path.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

/// All the problems found in one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

/// A component id: `type` or `type/name`, as in the Collector.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ComponentId {
    pub kind: String,
    pub name: Option<String>,
}

impl ComponentId {
    pub fn parse(s: &str) -> Option<ComponentId> {
        let (kind, name) = match s.split_once('/') {
            Some((k, n)) => (k, Some(n)),
            None => (s, None),
        };
        let ok = |p: &str| {
            !p.is_empty()
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        };
        if !ok(kind) || name.is_some_and(|n| !ok(n)) {
            return None;
        }
        Some(ComponentId {
            kind: kind.to_owned(),
            name: name.map(str::to_owned),
        })
    }
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{}/{}", self.kind, n),
            None => write!(f, "{}", self.kind),
        }
    }
}

/// Deserializes a component's YAML into its typed config (`deny_unknown_fields` there), with
/// errors located under `path`. A null/empty component (`enrich: {}` / `enrich:`) reads as `{}`.
pub fn parse_as<T: DeserializeOwned>(value: &Value, path: &str) -> Result<T, ConfigError> {
    let value = match value {
        Value::Null => Value::Mapping(Default::default()),
        v => v.clone(),
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let inner = e.path().to_string();
        let at = if inner == "." || inner.is_empty() {
            path.to_owned()
        } else {
            format!("{path}.{inner}")
        };
        ConfigError::at(at, e.into_inner().to_string())
    })
}

/// One component's YAML as its parser gets it: the id, the value, where it sits in the file
/// (`exporters.otlp/jaeger`, the prefix of every error) and what the parser may look up.
pub struct ComponentYaml<'a> {
    pub id: &'a ComponentId,
    pub value: &'a Value,
    pub path: &'a str,
    pub ctx: &'a ParseCtx<'a>,
}

/// Test helper for component parsers: each `(yaml, path)` case is refused with an error at (or
/// under) `path`, the YAML path of the mistake. `at` is the component's own path.
#[cfg(test)]
pub(crate) fn assert_errors_at<T>(
    parse: impl Fn(&Value, &str) -> Result<T, ConfigError>,
    at: &str,
    cases: &[(&str, &str)],
) {
    for (yaml, want) in cases {
        let v: Value = serde_yaml::from_str(yaml).expect("test yaml");
        match parse(&v, at) {
            Ok(_) => panic!("{yaml}: accepted"),
            Err(e) => assert!(
                e.path.starts_with(want),
                "{yaml}: error at {:?}: {e}",
                e.path
            ),
        }
    }
}

/// What each component can see while its config is checked.
pub struct ParseCtx<'a> {
    /// Env variables each expanded value came from, by YAML path (for error messages).
    pub origins: &'a BTreeMap<String, Vec<String>>,
    pub lookup: &'a dyn Fn(&str) -> Option<String>,
}

impl ParseCtx<'_> {
    /// " (from ${env:X})" when the value at `path` was expanded from env variables.
    pub fn origin_hint(&self, path: &str) -> String {
        match self.origins.get(path) {
            Some(vars) if !vars.is_empty() => format!(
                " (from {})",
                vars.iter()
                    .map(|v| format!("${{env:{v}}}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            _ => String::new(),
        }
    }
}

/// A missing list is an empty one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    pub receivers: Vec<String>,
    pub processors: Vec<String>,
    pub exporters: Vec<String>,
}

/// A missing field takes its value from `Default`, the one place the defaults live.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Prometheus `/metrics` listen address; `none` turns it off.
    pub address: String,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            address: "127.0.0.1:8888".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogsConfig {
    pub level: String,
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TelemetryConfig {
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub logs: LogsConfig,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    #[serde(default)]
    pub extensions: Vec<String>,
    #[serde(default)]
    pub pipelines: BTreeMap<String, PipelineConfig>,
    #[serde(default)]
    pub telemetry: TelemetryConfig,
    /// How long a SIGTERM/SIGINT drain may take before the sidecar exits anyway; also how
    /// long a reload waits for in-flight requests and for a removed exporter to flush.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    #[serde(default)]
    pub reload: ReloadConfig,
}

/// `service.reload`: live reconfiguration. SIGHUP always reloads; `watch` also reloads when
/// the file's content changes and then stays the same for `debounce`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadConfig {
    #[serde(default)]
    pub watch: bool,
    #[serde(default = "default_reload_debounce", with = "humantime_serde")]
    pub debounce: Duration,
}

fn default_reload_debounce() -> Duration {
    Duration::from_secs(1)
}

impl Default for ReloadConfig {
    fn default() -> Self {
        ReloadConfig {
            watch: false,
            debounce: default_reload_debounce(),
        }
    }
}

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}

const SECTIONS: [&str; 5] = [
    "receivers",
    "processors",
    "exporters",
    "extensions",
    "service",
];

/// A YAML document read and env-expanded, before the components parse their sections.
pub struct Document {
    /// The env-expanded document, for `print-config`.
    pub expanded: Value,
    /// Env variables each expanded value came from, by YAML path.
    pub origins: BTreeMap<String, Vec<String>>,
}

impl Document {
    /// Parses and expands a YAML document. Unknown top-level sections go to `errors`; a
    /// document that is not YAML or not a mapping fails at once.
    pub fn parse(
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
        errors: &mut Vec<ConfigError>,
    ) -> Result<Document, ConfigErrors> {
        let mut doc: Value = serde_yaml::from_str(text)
            .map_err(|e| ConfigError::at("", format!("not valid YAML: {e}")))?;
        if doc.is_null() {
            doc = Value::Mapping(Default::default());
        }
        let mut origins = BTreeMap::new();
        expand::expand(&mut doc, "", lookup, &mut origins)?;
        let Value::Mapping(top) = &doc else {
            return Err(ConfigError::at("", "the config must be a YAML mapping").into());
        };
        for k in top.keys() {
            let key = expand::key_text(k);
            if !SECTIONS.contains(&key.as_str()) {
                errors.push(ConfigError::at(
                    key,
                    format!(
                        "unknown top-level section; expected one of {}",
                        SECTIONS.join(", ")
                    ),
                ));
            }
        }
        Ok(Document {
            expanded: doc,
            origins,
        })
    }

    /// A top-level section (null when absent).
    pub fn section(&self, name: &str) -> Value {
        self.expanded.get(name).cloned().unwrap_or(Value::Null)
    }

    /// The `service` section, typed; its parse error goes to `errors`.
    pub fn service(&self, errors: &mut Vec<ConfigError>) -> ServiceConfig {
        match parse_as(&self.section("service"), "service") {
            Ok(s) => s,
            Err(e) => {
                errors.push(e);
                ServiceConfig::default()
            }
        }
    }

    /// The expanded document with secrets replaced by `<redacted>`.
    pub fn redacted_yaml(&self) -> String {
        let mut doc = self.expanded.clone();
        redact(&mut doc, false);
        serde_yaml::to_string(&doc).unwrap_or_default()
    }
}

/// Ids whose own config failed: pipelines naming them get no second, misleading error.
pub fn failed_ids(errors: &[ConfigError]) -> HashSet<String> {
    errors
        .iter()
        .filter_map(|e| {
            let mut parts = e.path.splitn(3, '.');
            match (parts.next(), parts.next()) {
                (Some("receivers" | "processors" | "exporters" | "extensions"), Some(id)) => {
                    Some(id.to_owned())
                }
                _ => None,
            }
        })
        .collect()
}

impl ServiceConfig {
    /// Checks the `service` section against the components defined: `defined(section, id)`
    /// says whether `id` is defined under `section`; ids in `failed` already have an error.
    pub fn validate(
        &self,
        defined: &dyn Fn(&str, &ComponentId) -> bool,
        failed: &HashSet<String>,
        errors: &mut Vec<ConfigError>,
    ) {
        if self.pipelines.is_empty() {
            errors.push(ConfigError::at(
                "service.pipelines",
                "no pipeline defined; add `traces: {receivers: [...], exporters: [...]}`",
            ));
        }
        for (i, ext) in self.extensions.iter().enumerate() {
            if !ComponentId::parse(ext).is_some_and(|id| defined("extensions", &id)) {
                errors.push(ConfigError::at(
                    format!("service.extensions[{i}]"),
                    format!("extension {ext:?} is not defined under `extensions`"),
                ));
            }
        }
        for (name, p) in &self.pipelines {
            let base = format!("service.pipelines.{name}");
            if name != "traces" && !name.starts_with("traces/") {
                errors.push(ConfigError::at(
                    &base,
                    "only trace pipelines are supported: name it `traces` or `traces/<name>`",
                ));
            }
            let check = |list: &[String],
                         what: &str,
                         defined: &dyn Fn(&ComponentId) -> bool,
                         errors: &mut Vec<ConfigError>| {
                if list.is_empty() && what != "processors" {
                    errors.push(ConfigError::at(
                        format!("{base}.{what}"),
                        format!("a pipeline needs at least one of its {what}"),
                    ));
                }
                let mut seen = HashSet::new();
                for (i, id) in list.iter().enumerate() {
                    let at = format!("{base}.{what}[{i}]");
                    match ComponentId::parse(id) {
                        _ if failed.contains(id) => {}
                        Some(cid) if defined(&cid) => {
                            if !seen.insert(cid) {
                                errors.push(ConfigError::at(at, format!("{id:?} is listed twice")));
                            }
                        }
                        _ => errors.push(ConfigError::at(
                            at,
                            format!("{id:?} is not defined under `{what}`"),
                        )),
                    }
                }
            };
            check(
                &p.receivers,
                "receivers",
                &|id| defined("receivers", id),
                errors,
            );
            check(
                &p.processors,
                "processors",
                &|id| defined("processors", id),
                errors,
            );
            check(
                &p.exporters,
                "exporters",
                &|id| defined("exporters", id),
                errors,
            );
            // The batch processor hands data to the exporters, so it has to come last.
            if let Some(pos) = p
                .processors
                .iter()
                .position(|p| p.split('/').next() == Some("batch"))
            {
                if pos + 1 != p.processors.len() {
                    errors.push(ConfigError::at(
                        format!("{base}.processors[{pos}]"),
                        "`batch` must be the last processor of a pipeline",
                    ));
                }
            }
        }
        let addr = &self.telemetry.metrics.address;
        if addr != "none" && !addr.is_empty() && parse_endpoint(addr).is_err() {
            errors.push(ConfigError::at(
                "service.telemetry.metrics.address",
                format!("{addr:?} is not host:port (or `none`)"),
            ));
        }
        let level = self.telemetry.logs.level.to_ascii_lowercase();
        if !["error", "warn", "info", "debug", "trace", "off"].contains(&level.as_str()) {
            errors.push(ConfigError::at(
                "service.telemetry.logs.level",
                format!(
                    "{:?} is not a log level (error, warn, info, debug, trace)",
                    self.telemetry.logs.level
                ),
            ));
        }
    }
}

/// Keys whose values are secrets wherever they appear.
fn secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    [
        "token",
        "password",
        "secret",
        "api_key",
        "apikey",
        "authorization",
        "credential",
        "private_key",
    ]
    .iter()
    .any(|s| k.contains(s))
}

fn redact(v: &mut Value, all: bool) {
    match v {
        Value::Mapping(map) => {
            for (k, val) in map.iter_mut() {
                let key = expand::key_text(k);
                // Every header value is treated as a secret: auth schemes vary too much to guess.
                let hide = all || secret_key(&key);
                if key == "headers" {
                    redact(val, true);
                } else if hide && !matches!(val, Value::Mapping(_) | Value::Sequence(_)) {
                    if !val.is_null() {
                        *val = Value::String("<redacted>".into());
                    }
                } else {
                    redact(val, hide);
                }
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(|i| redact(i, all)),
        _ => {}
    }
}

/// Why an endpoint is not a usable `host:port`.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    #[error("{0:?} is not host:port")]
    NotHostPort(String),
    #[error("{0:?}: port {1:?} is not a number from 0 to 65535")]
    BadPort(String, String),
    #[error("{0:?}: empty host (use 0.0.0.0 or 127.0.0.1)")]
    EmptyHost(String),
    #[error("{0:?}: {1}")]
    Resolve(String, #[source] std::io::Error),
    #[error("{0:?}: host resolves to no address")]
    NoAddress(String),
}

/// A setting's `endpoint` as a socket address, an error naming `{path}.endpoint`.
pub fn endpoint_at(path: &str, endpoint: &str) -> Result<std::net::SocketAddr, ConfigError> {
    parse_endpoint(endpoint).map_err(|m| ConfigError::at(format!("{path}.endpoint"), m.to_string()))
}

/// A size, count or duration that 0 would make meaningless (an empty batch, a queue of none).
pub trait Positive {
    fn is_zero(&self) -> bool;
}

impl Positive for usize {
    fn is_zero(&self) -> bool {
        *self == 0
    }
}

impl Positive for u64 {
    fn is_zero(&self) -> bool {
        *self == 0
    }
}

impl Positive for Duration {
    fn is_zero(&self) -> bool {
        Duration::is_zero(self)
    }
}

/// Refuses 0 for `{path}.{key}`, in the one wording every component uses.
pub fn require_positive(path: &str, key: &str, value: impl Positive) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(ConfigError::at(
            format!("{path}.{key}"),
            "must be greater than 0",
        ));
    }
    Ok(())
}

/// Runs a component's settings parser on YAML text (tests), at `path`.
#[cfg(test)]
pub fn parse_yaml<T>(
    yaml: &str,
    path: &str,
    parse: impl FnOnce(&Value, &str) -> Result<T, ConfigError>,
) -> Result<T, ConfigError> {
    let v: Value = serde_yaml::from_str(yaml).expect("test yaml");
    parse(&v, path)
}

/// Which of two settings that exclude each other is given.
pub enum OneOf<A, B> {
    First(A),
    Second(B),
}

/// Exactly one of two settings under `path` (`a` and `b` name them), in one wording.
pub fn one_of<A, B>(
    path: &str,
    (a, first): (&str, Option<A>),
    (b, second): (&str, Option<B>),
) -> Result<OneOf<A, B>, ConfigError> {
    match (first, second) {
        (Some(x), None) => Ok(OneOf::First(x)),
        (None, Some(y)) => Ok(OneOf::Second(y)),
        (Some(_), Some(_)) => Err(ConfigError::at(path, format!("set {a} or {b}, not both"))),
        (None, None) => Err(ConfigError::at(path, format!("set {a} or {b}"))),
    }
}

/// Checks a byte bound `{path}.{key}` against its floor; the bound as this platform's size.
pub fn byte_bound(path: &str, key: &str, value: u64, min: u64) -> Result<usize, ConfigError> {
    let at = || format!("{path}.{key}");
    if value < min {
        return Err(ConfigError::at(
            at(),
            format!("{value} is below the minimum of {min}"),
        ));
    }
    usize::try_from(value).map_err(|_| ConfigError::at(at(), "too large for this platform"))
}

/// Parses `host:port` (IPv6 in brackets; `localhost` allowed) into a socket address.
pub fn parse_endpoint(s: &str) -> Result<std::net::SocketAddr, EndpointError> {
    use std::net::ToSocketAddrs;
    let s = s.trim();
    if let Ok(a) = s.parse::<std::net::SocketAddr>() {
        return Ok(a);
    }
    let (host, port_text) = s
        .rsplit_once(':')
        .ok_or_else(|| EndpointError::NotHostPort(s.to_owned()))?;
    let port = port_text
        .parse::<u16>()
        .map_err(|_| EndpointError::BadPort(s.to_owned(), port_text.to_owned()))?;
    if host.is_empty() {
        return Err(EndpointError::EmptyHost(s.to_owned()));
    }
    (host, port)
        .to_socket_addrs()
        .map_err(|e| EndpointError::Resolve(s.to_owned(), e))?
        .next()
        .ok_or_else(|| EndpointError::NoAddress(s.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn component_ids() {
        assert_eq!(
            ComponentId::parse("otlp/jaeger").unwrap().to_string(),
            "otlp/jaeger"
        );
        assert!(ComponentId::parse("otlp/").is_none());
        assert!(ComponentId::parse("a b").is_none());
    }
}
