//! W3C traceparent/tracestate parsing in the envelope codec (loom-core, also the Python SDK's).
#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use loom_core::envelope::{self, Envelope, MAX_TRACESTATE_LEN, TRACEPARENT, TRACESTATE};

// Input: `traceparent` value, a 0xff byte, `tracestate` value, a 0xff byte, then other
// metadata as `key=value` lines (0xff never occurs in UTF-8, so it cannot clash with a value).
fuzz_target!(|data: &[u8]| {
    let mut parts = data.split(|&b| b == 0xff);
    let tp = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let ts = parts
        .next()
        .map(|ts| String::from_utf8_lossy(ts).into_owned());
    let mut md = HashMap::new();
    for line in parts.next().unwrap_or_default().split(|&b| b == b'\n') {
        let line = String::from_utf8_lossy(line);
        if let Some((k, v)) = line.split_once('=') {
            md.insert(k.to_owned(), v.to_owned());
        }
    }
    // Last, so a `key=value` line cannot replace them.
    md.insert(TRACEPARENT.to_owned(), tp.clone());
    match ts {
        Some(ts) => md.insert(TRACESTATE.to_owned(), ts),
        None => md.remove(TRACESTATE),
    };

    if let Some(p) = envelope::parse_traceparent(&tp) {
        let s = envelope::format_traceparent(&p);
        assert_eq!(s.len(), envelope::TRACEPARENT_LEN);
        assert_eq!(envelope::parse_traceparent(&s), Some(p));
        // Version 00 round-trips to its own lowercase spelling.
        let t = tp.trim_matches([' ', '\t']);
        if t.starts_with("00") {
            assert_eq!(s, t.to_ascii_lowercase());
        }
    }

    // Reading, writing and reading again is a fixed point, and what is written is valid.
    let env = Envelope::from_metadata(&md);
    assert_eq!(
        env.trace_id.is_some(),
        envelope::parse_traceparent(&tp).is_some()
    );
    let out = env.to_metadata();
    if let Some(w) = out.get(TRACEPARENT) {
        assert!(envelope::parse_traceparent(w).is_some());
    }
    if let Some(ts) = out.get(TRACESTATE) {
        assert!(out.contains_key(TRACEPARENT) && ts.len() <= MAX_TRACESTATE_LEN);
    }
    let again = Envelope::from_metadata(&out);
    assert_eq!(again, env);
    assert_eq!(again.to_metadata(), out);
});
