//! OTLP protobuf span validation: the sidecar's lazy decoder against prost's full decode.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use loom_sidecar::model::TraceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;

// The receiver's own contract (sidecar/src/model/otlp.rs): what prost refuses is refused, what
// prost takes is taken and re-encodes to the same bytes, and the fields the sampler reads from
// the raw bytes are the ones prost decodes.
fuzz_target!(|data: &[u8]| {
    let want = ExportTraceServiceRequest::decode(data);
    let got = TraceRequest::decode(Bytes::copy_from_slice(data));
    match (want, got) {
        (Err(_), Err(_)) => {}
        (Ok(w), Ok(g)) => {
            let back = g.to_proto().expect("an accepted request re-decodes");
            // Encodings, not structs: a double may be NaN, which != itself.
            assert_eq!(back.encode_to_vec(), w.encode_to_vec());
            let lazy = g
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .flat_map(|ss| &ss.spans);
            let full = w
                .resource_spans
                .iter()
                .flat_map(|rs| &rs.scope_spans)
                .flat_map(|ss| &ss.spans);
            assert_eq!(lazy.clone().count(), full.clone().count());
            for (l, f) in lazy.zip(full) {
                assert_eq!(l.trace_id(), &f.trace_id[..]);
                assert_eq!(l.has_parent(), !f.parent_span_id.is_empty());
                assert_eq!(l.flags(), f.flags);
            }
        }
        (w, g) => panic!("prost says {:?}, the sidecar says {:?}", w.err(), g.err()),
    }
});
