//! OTLP/JSON request bodies, through the decoder the HTTP receiver calls.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use loom_sidecar::receivers::otlp::decode_http_body;
use prost::Message;

// Never a panic; an accepted body is a request whose protobuf form the protobuf path takes too
// and reads back identically (JSON intake goes through the same span validation).
fuzz_target!(|data: &[u8]| {
    if let Ok(req) = decode_http_body(Bytes::copy_from_slice(data), true) {
        let wire = req.encode_to_vec();
        let again = decode_http_body(Bytes::from(wire.clone()), false)
            .expect("the protobuf form of an accepted JSON body is accepted");
        assert_eq!(again.encode_to_vec(), wire);
    }
});
