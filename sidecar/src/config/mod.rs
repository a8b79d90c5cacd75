//! Sidecar configuration: YAML in the OpenTelemetry Collector's shape, env-expanded, validated,
//! with every error naming its YAML path (`exporters.otlp/jaeger.endpoint: ...`).

pub mod expand;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

use crate::exporters::{self, ExporterSpec};
use crate::extensions::{self, ExtensionSpec};
use crate::processors::{self, ProcessorSpec};
use crate::receivers::{self, ReceiverSpec};

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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    #[serde(default)]
    pub receivers: Vec<String>,
    #[serde(default)]
    pub processors: Vec<String>,
    #[serde(default)]
    pub exporters: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Prometheus `/metrics` listen address; `none` turns it off.
    #[serde(default = "default_metrics_address")]
    pub address: String,
}

fn default_metrics_address() -> String {
    "127.0.0.1:8888".into()
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            address: default_metrics_address(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogsConfig {
    #[serde(default = "default_log_level")]
    pub level: String,
}

fn default_log_level() -> String {
    "info".into()
}

impl Default for LogsConfig {
    fn default() -> Self {
        LogsConfig {
            level: default_log_level(),
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
    /// How long a SIGTERM/SIGINT drain may take before the sidecar exits anyway.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

fn default_shutdown_grace() -> Duration {
    Duration::from_secs(10)
}

/// A loaded, validated configuration.
pub struct Config {
    pub receivers: BTreeMap<ComponentId, Box<dyn ReceiverSpec>>,
    pub processors: BTreeMap<ComponentId, Box<dyn ProcessorSpec>>,
    pub exporters: BTreeMap<ComponentId, Box<dyn ExporterSpec>>,
    pub extensions: BTreeMap<ComponentId, Box<dyn ExtensionSpec>>,
    pub service: ServiceConfig,
    /// The env-expanded document, for `print-config`.
    pub expanded: Value,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("receivers", &self.receivers.keys().collect::<Vec<_>>())
            .field("processors", &self.processors.keys().collect::<Vec<_>>())
            .field("exporters", &self.exporters.keys().collect::<Vec<_>>())
            .field("extensions", &self.extensions.keys().collect::<Vec<_>>())
            .finish()
    }
}

const SECTIONS: [&str; 5] = [
    "receivers",
    "processors",
    "exporters",
    "extensions",
    "service",
];

impl Config {
    /// Reads and validates a config file with the process environment.
    pub fn load_file(path: &std::path::Path) -> Result<Config, ConfigErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::at(
                "",
                format!("cannot read config file {}: {e}", path.display()),
            )
        })?;
        Config::from_yaml(&text, &|k| std::env::var(k).ok())
    }

    /// Parses, expands and validates a YAML document; every problem found is reported.
    pub fn from_yaml(
        text: &str,
        lookup: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigErrors> {
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
        let mut errors = Vec::new();
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
        let ctx = ParseCtx {
            origins: &origins,
            lookup,
        };
        let section = |name: &str| top.get(name).cloned().unwrap_or(Value::Null);

        let receivers = parse_section(
            &section("receivers"),
            "receivers",
            receivers::FACTORIES,
            &ctx,
            &mut errors,
        );
        let processors = parse_section(
            &section("processors"),
            "processors",
            processors::FACTORIES,
            &ctx,
            &mut errors,
        );
        let exporters = parse_section(
            &section("exporters"),
            "exporters",
            exporters::FACTORIES,
            &ctx,
            &mut errors,
        );
        let extensions = parse_section(
            &section("extensions"),
            "extensions",
            extensions::FACTORIES,
            &ctx,
            &mut errors,
        );
        let service: ServiceConfig = match parse_as(&section("service"), "service") {
            Ok(s) => s,
            Err(e) => {
                errors.push(e);
                ServiceConfig::default()
            }
        };

        // Ids whose own config failed: pipelines naming them get no second, misleading error.
        let failed: std::collections::HashSet<String> = errors
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
            .collect();
        let cfg = Config {
            receivers,
            processors,
            exporters,
            extensions,
            service,
            expanded: doc.clone(),
        };
        cfg.validate_service(&failed, &mut errors);
        if errors.is_empty() {
            Ok(cfg)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    fn validate_service(
        &self,
        failed: &std::collections::HashSet<String>,
        errors: &mut Vec<ConfigError>,
    ) {
        if self.service.pipelines.is_empty() {
            errors.push(ConfigError::at(
                "service.pipelines",
                "no pipeline defined; add `traces: {receivers: [...], exporters: [...]}`",
            ));
        }
        for (i, ext) in self.service.extensions.iter().enumerate() {
            if !ComponentId::parse(ext).is_some_and(|id| self.extensions.contains_key(&id)) {
                errors.push(ConfigError::at(
                    format!("service.extensions[{i}]"),
                    format!("extension {ext:?} is not defined under `extensions`"),
                ));
            }
        }
        for (name, p) in &self.service.pipelines {
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
                let mut seen = std::collections::HashSet::new();
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
                &|id| self.receivers.contains_key(id),
                errors,
            );
            check(
                &p.processors,
                "processors",
                &|id| self.processors.contains_key(id),
                errors,
            );
            check(
                &p.exporters,
                "exporters",
                &|id| self.exporters.contains_key(id),
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
        let addr = &self.service.telemetry.metrics.address;
        if addr != "none" && !addr.is_empty() && parse_endpoint(addr).is_err() {
            errors.push(ConfigError::at(
                "service.telemetry.metrics.address",
                format!("{addr:?} is not host:port (or `none`)"),
            ));
        }
        let level = self.service.telemetry.logs.level.to_ascii_lowercase();
        if !["error", "warn", "info", "debug", "trace", "off"].contains(&level.as_str()) {
            errors.push(ConfigError::at(
                "service.telemetry.logs.level",
                format!(
                    "{:?} is not a log level (error, warn, info, debug, trace)",
                    self.service.telemetry.logs.level
                ),
            ));
        }
    }

    /// The expanded document with secrets replaced by `<redacted>`.
    pub fn redacted_yaml(&self) -> String {
        let mut doc = self.expanded.clone();
        redact(&mut doc, false);
        serde_yaml::to_string(&doc).unwrap_or_default()
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

fn parse_section<S: ?Sized>(
    section: &Value,
    name: &str,
    factories: &[crate::Factory<S>],
    ctx: &ParseCtx<'_>,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<ComponentId, Box<S>> {
    let mut out = BTreeMap::new();
    let map = match section {
        Value::Null => return out,
        Value::Mapping(m) => m,
        _ => {
            errors.push(ConfigError::at(
                name,
                "expected a mapping of component ids to their settings",
            ));
            return out;
        }
    };
    for (k, v) in map {
        let key = expand::key_text(k);
        let path = format!("{name}.{key}");
        let Some(id) = ComponentId::parse(&key) else {
            errors.push(ConfigError::at(
                path,
                "invalid component id; expected `type` or `type/name`",
            ));
            continue;
        };
        match factories.iter().find(|f| f.kind == id.kind) {
            Some(f) => match (f.parse)(&id, v, &path, ctx) {
                Ok(spec) => {
                    out.insert(id, spec);
                }
                Err(e) => errors.push(e),
            },
            None => errors.push(ConfigError::at(
                path,
                format!(
                    "unknown {} type {:?}; available: {}",
                    name.trim_end_matches('s'),
                    id.kind,
                    factories
                        .iter()
                        .map(|f| f.kind)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )),
        }
    }
    out
}

/// Parses `host:port` (IPv6 in brackets; `localhost` allowed) into a socket address.
pub fn parse_endpoint(s: &str) -> Result<std::net::SocketAddr, String> {
    use std::net::ToSocketAddrs;
    let s = s.trim();
    if let Ok(a) = s.parse::<std::net::SocketAddr>() {
        return Ok(a);
    }
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("{s:?} is not host:port"))?;
    port.parse::<u16>()
        .map_err(|_| format!("{s:?}: port {port:?} is not a number from 0 to 65535"))?;
    if host.is_empty() {
        return Err(format!("{s:?}: empty host (use 0.0.0.0 or 127.0.0.1)"));
    }
    (host, port.parse::<u16>().unwrap_or(0))
        .to_socket_addrs()
        .map_err(|e| format!("{s:?}: {e}"))?
        .next()
        .ok_or_else(|| format!("{s:?}: host resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Config::from_yaml(yaml, &|k| env.get(k).cloned())
    }

    const GOOD: &str = r#"
receivers:
  otlp:
    protocols:
      grpc: { endpoint: 127.0.0.1:0 }
      http: { endpoint: 127.0.0.1:0 }
processors:
  memory_limiter: { limit_mib: 256, spike_limit_mib: 64 }
  sampler:
    default: { sampler: "${env:OTEL_TRACE_SAMPLER:-parentbased_always_on}", arg: "${env:OTEL_TRACE_SAMPLER_ARG:-1.0}" }
    rules:
      - match: { agent: "sensor-*", topic: "sensor.*" }
        sampler: traceidratio
        arg: 0.1
  enrich: {}
  batch: { send_batch_size: 8192, timeout: 200ms }
exporters:
  otlp/jaeger: { endpoint: "${env:JAEGER_OTLP_ENDPOINT:-http://localhost:14317}", compression: gzip }
  otlphttp/vendor: { endpoint: https://example.invalid, headers: { x-api-key: "${env:API_KEY}" } }
  debug: { verbosity: basic }
  file: { path: /tmp/loom-test-spans.jsonl }
extensions:
  health_check: { endpoint: 127.0.0.1:0 }
service:
  extensions: [health_check]
  pipelines:
    traces:
      receivers: [otlp]
      processors: [memory_limiter, sampler, enrich, batch]
      exporters: [otlp/jaeger]
  telemetry:
    metrics: { address: 127.0.0.1:0 }
    logs: { level: info }
"#;

    #[test]
    fn the_design_example_loads() {
        let cfg = load(GOOD, &[("API_KEY", "s3cr3t")]).unwrap();
        assert_eq!(cfg.exporters.len(), 4);
        let printed = cfg.redacted_yaml();
        assert!(!printed.contains("s3cr3t"), "{printed}");
        assert!(printed.contains("x-api-key: <redacted>"), "{printed}");
        assert!(printed.contains("http://localhost:14317"));
    }

    #[test]
    fn errors_name_the_yaml_path() {
        let cases: &[(&str, &str)] = &[
            ("receivers:\n  otlp:\n    protocols:\n      grpc: { endpoint: 127.0.0.1:0, bogus: 1 }\n", "receivers.otlp.protocols.grpc.bogus: unknown field `bogus`"),
            ("exporters:\n  otlp/jaeger: { endpoint: 'not a url' }\n", "exporters.otlp/jaeger.endpoint:"),
            ("exporters:\n  kafka: {}\n", "exporters.kafka: unknown exporter type \"kafka\""),
            ("processors:\n  batch: { timeout: soon }\n", "processors.batch.timeout:"),
            ("service:\n  pipelines:\n    traces: { receivers: [otlp], exporters: [nope] }\n", "service.pipelines.traces.receivers[0]: \"otlp\" is not defined"),
            ("service:\n  pipelines:\n    traces: { receivers: [otlp], exporters: [nope] }\n", "service.pipelines.traces.exporters[0]: \"nope\" is not defined"),
            ("bogus: 1\n", "bogus: unknown top-level section"),
            ("service:\n  telemetry:\n    logs: { level: loud }\n", "service.telemetry.logs.level:"),
            ("exporters:\n  otlp: { endpoint: 'http://h:1', sending_queue: { storage: { directory: /tmp/q, max_bytes: 10 } } }\n", "exporters.otlp.sending_queue.storage.max_bytes: 10 is below the minimum"),
            ("exporters:\n  otlp: { endpoint: 'http://h:1', sending_queue: { storage: { directory: /tmp/q, fsync: sometimes } } }\n", "exporters.otlp.sending_queue.storage.fsync: unknown variant `sometimes`"),
            ("exporters:\n  otlp: { endpoint: 'http://h:1', sending_queue: { storage: { directory: /tmp/q, bogus: 1 } } }\n", "exporters.otlp.sending_queue.storage.bogus: unknown field"),
            ("exporters:\n  otlp: { endpoint: 'http://h:1', sending_queue: { when_full: drop_oldest } }\n", "exporters.otlp.sending_queue.when_full: only with storage"),
            ("exporters:\n  otlp: { endpoint: 'http://h:1', sending_queue: { queue_size: 5, storage: { directory: /tmp/q } } }\n", "exporters.otlp.sending_queue.queue_size: not used with storage"),
            ("exporters:\n  otlp: { endpoint: 'http://h:1', retry_on_failure: { initial_interval: 0s } }\n", "exporters.otlp.retry_on_failure:"),
            ("exporters:\n  otlp: { endpoint: 'http://h:1', tls: { insecure: false } }\n", "exporters.otlp.tls.insecure: false contradicts"),
            ("exporters:\n  otlphttp: { endpoint: 'https://h:1', tls: { insecure: true } }\n", "exporters.otlphttp.tls.insecure: true contradicts"),
            ("receivers:\n  otlp:\n    auth: { bearer_token: '' }\n    protocols: { grpc: }\n", "receivers.otlp.auth.bearer_token: the token is empty"),
            ("receivers:\n  otlp:\n    auth: { token: x }\n    protocols: { grpc: }\n", "receivers.otlp.auth.token: unknown field"),
            ("receivers:\n  otlp:\n    protocols: { grpc: { tls: { cert_file: /nonexistent.pem, key_file: /k } } }\n", "receivers.otlp.protocols.grpc.tls.cert_file: cannot read"),
        ];
        for (yaml, want) in cases {
            let err = load(yaml, &[]).unwrap_err().to_string();
            assert!(err.contains(want), "want {want:?} in:\n{err}");
        }
    }

    #[test]
    fn unknown_sampler_from_env_names_the_variable_and_choices() {
        let err = load(GOOD, &[("OTEL_TRACE_SAMPLER", "sometimes")])
            .unwrap_err()
            .to_string();
        assert!(err.contains("processors.sampler.default.sampler"), "{err}");
        assert!(err.contains("${env:OTEL_TRACE_SAMPLER}"), "{err}");
        assert!(err.contains("parentbased_traceidratio"), "{err}");
    }

    #[test]
    fn batch_must_be_last() {
        let yaml = GOOD.replace(
            "[memory_limiter, sampler, enrich, batch]",
            "[memory_limiter, batch, sampler]",
        );
        let err = load(&yaml, &[]).unwrap_err().to_string();
        assert!(
            err.contains("processors[1]: `batch` must be the last"),
            "{err}"
        );
    }

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
