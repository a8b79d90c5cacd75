//! Loading a config with every built-in component type: the one place that assembles each
//! folder's `FACTORIES` into a [`Registry`], above the components.

use std::path::Path;

use crate::component::{Config, Registry};
use crate::config::ConfigErrors;
use crate::{exporters, extensions, processors, receivers};

/// Every built-in component type.
pub fn registry() -> Registry {
    Registry {
        receivers: receivers::FACTORIES,
        processors: processors::FACTORIES,
        exporters: exporters::FACTORIES,
        extensions: extensions::FACTORIES,
    }
}

/// Reads and validates a config file with the process environment.
pub fn load_file(path: &Path) -> Result<Config, ConfigErrors> {
    Config::load_file_with(&registry(), path)
}

/// Parses, expands and validates a YAML document; every problem found is reported.
pub fn from_yaml(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigErrors> {
    Config::from_yaml_with(&registry(), text, lookup)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use crate::config::ConfigErrors;

    fn load(yaml: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
        let env: BTreeMap<String, String> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        from_yaml(yaml, &|k| env.get(k).cloned())
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
}
