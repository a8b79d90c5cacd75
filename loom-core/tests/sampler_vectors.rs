//! Holds loom-core's sampler parser to the shared table of sampler-variable verdicts.
//!
//! The same table (`sampler_vectors.json`) is checked by the sidecar's sampler config and by the
//! Python SDK, so the three give one verdict for one string.

use std::collections::HashMap;

use loom_core::sampler_spec::{sampler_spec_from, SamplerSpec, SAMPLER_NAMES};
use serde_json::Value;

const VECTORS: &str = include_str!("sampler_vectors.json");

#[test]
fn every_sampler_vector_gets_its_verdict() {
    let table: Value = serde_json::from_str(VECTORS).expect("sampler_vectors.json is JSON");
    let cases = table["cases"].as_array().expect("cases");
    assert!(cases.len() >= 30, "the table lost cases: {}", cases.len());
    let (mut accepted, mut refused) = (0, 0);
    for case in cases {
        let name = case["name"].as_str().expect("name");
        let env: HashMap<String, String> = case["env"]
            .as_object()
            .expect("env")
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().expect("env value").to_owned()))
            .collect();
        let got = sampler_spec_from(|k| env.get(k).cloned());
        match case.get("error_var").and_then(Value::as_str) {
            Some(var) => {
                let err = got.expect_err(name);
                assert_eq!(err.var(), var, "{name}: {err}");
                let msg = err.to_string();
                assert!(msg.starts_with(&format!("{var}=")), "{name}: {msg}");
                refused += 1;
            }
            None => {
                let spec: SamplerSpec = got.unwrap_or_else(|e| panic!("{name}: {e}"));
                let want = case["sampler"].as_str().expect("sampler");
                assert!(SAMPLER_NAMES.contains(&want), "{name}: {want}");
                assert_eq!(spec.name(), want, "{name}");
                assert_eq!(spec.ratio(), case["ratio"].as_f64(), "{name}");
                accepted += 1;
            }
        }
    }
    assert!(accepted > 0 && refused > 0);
}
