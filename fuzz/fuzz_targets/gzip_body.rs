//! gzip request bodies through the receiver's capped decompressor, then its body decoder.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use loom_sidecar::receivers::otlp::{decode_http_body, gunzip_capped, GunzipError};

// The first byte picks the cap, so small caps (where the limit is hit) are explored too.
fuzz_target!(|data: &[u8]| {
    let Some((&c, body)) = data.split_first() else {
        return;
    };
    let max = match c % 4 {
        0 => 16,
        1 => 1024,
        2 => 64 * 1024,
        _ => 4 * 1024 * 1024,
    };
    match gunzip_capped(body, max) {
        Ok(out) => {
            assert!(
                out.len() <= max,
                "{} bytes out of a {max}-byte cap",
                out.len()
            );
            let out = Bytes::from(out);
            let _ = decode_http_body(out.clone(), false);
            let _ = decode_http_body(out, true);
        }
        Err(GunzipError::TooLarge { max: m }) => assert_eq!(m, max),
        Err(GunzipError::Invalid) => {}
    }
});
