//! Config load: YAML parse, `${env:...}` expansion and validation of every component
//! (`loom_sidecar::load::from_yaml`, what `load_file` runs on the file's text).
#![no_main]

use libfuzzer_sys::fuzz_target;

// A fixed environment, so `${env:...}` references both resolve (to values that are themselves
// YAML, references or `$`) and miss.
fn lookup(k: &str) -> Option<String> {
    match k {
        "A" => Some("0.5".into()),
        "B" => Some("${env:A}".into()),
        "C" => Some("{x: [1, 2]}".into()),
        "D" => Some("$$".into()),
        "E" => Some(String::new()),
        "P" => Some("127.0.0.1:0".into()),
        _ => None,
    }
}

// Never a panic, and every error names a problem (the loader reports each one with its path).
fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errs) = loom_sidecar::load::from_yaml(text, &lookup) {
        assert!(!errs.to_string().is_empty());
    }
});
