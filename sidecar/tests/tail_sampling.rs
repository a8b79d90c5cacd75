//! The gateway examples in `configs/` load with the registry the binary uses, and a Collector
//! user's mistakes in the two gateway components are reported at their YAML paths.

use std::path::Path;

fn config(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../configs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_gateway_examples_load() {
    for name in ["gateway-agent.yaml", "gateway-tail-sampling.yaml"] {
        let c = loom_sidecar::from_yaml(&config(name), &|_| None)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let pipeline = &c.service.pipelines["traces"];
        assert!(!pipeline.exporters.is_empty(), "{name}");
    }
}

#[test]
fn mistakes_are_reported_at_their_yaml_paths() {
    let base = config("gateway-tail-sampling.yaml");
    let cases = [
        (
            base.replace("threshold_ms: 1000", "threshold_ms: -1"),
            "processors.tail_sampling.policies[1].latency.threshold_ms",
        ),
        (
            base.replace("values: [planner]", "value: [planner]"),
            "processors.tail_sampling.policies[2].and.and_sub_policy[0].string_attribute",
        ),
        (
            base.replace("max_bytes: 268435456", "max_bytes: 10"),
            "processors.tail_sampling.max_bytes",
        ),
        (
            config("gateway-agent.yaml").replace("routing_key: traceID", "routing_key: spanID"),
            "exporters.loadbalancing",
        ),
        (
            config("gateway-agent.yaml").replace("tls: { insecure: true }", "tls: { insecure: 3 }"),
            "exporters.loadbalancing.protocol.otlp.tls.insecure",
        ),
    ];
    for (yaml, path) in cases {
        let err = loom_sidecar::from_yaml(&yaml, &|_| None)
            .expect_err(path)
            .to_string();
        assert!(err.contains(path), "want {path} in: {err}");
    }
}
