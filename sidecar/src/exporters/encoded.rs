//! A batch encoded once: the `ExportTraceServiceRequest` bytes that the network exporters send.
//!
//! Encoding (and, for OTLP/HTTP, gzip) happens at a batch's first export attempt. The bytes are
//! kept in the batch itself ([`Batch::bodies`]) and shared by every retry of that batch and by
//! every exporter the same batch went to, instead of each attempt deep-cloning the spans into a
//! new request and encoding that. They are freed with the batch, when the last exporter is done
//! with it. The gRPC exporter sends them through [`ExportCodec`], whose encoder writes the bytes
//! as they are.

use std::io::Write as _;
use std::sync::OnceLock;

use bytes::{BufMut as _, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use super::ExportError;
use crate::model::{Batch, ResourceSpans};

#[cfg(test)]
thread_local! {
    /// Protobuf encodings made on this thread: what tests count to show a batch is encoded once.
    pub(crate) static ENCODES: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// `ExportTraceServiceRequest { resource_spans }` encoded, without copying the spans into a
/// request first: the request is just field 1, repeated (byte-for-byte what prost writes).
pub fn encode_request(resource_spans: &[ResourceSpans]) -> Bytes {
    #[cfg(test)]
    ENCODES.with(|n| n.set(n.get() + 1));
    let len = prost::encoding::message::encoded_len_repeated(1, resource_spans);
    let mut buf = Vec::with_capacity(len);
    for rs in resource_spans {
        prost::encoding::message::encode(1, rs, &mut buf);
    }
    Bytes::from(buf)
}

/// The request as OTLP/JSON from its protobuf encoding: the spans are bytes until here, so JSON
/// goes through the decoded `ExportTraceServiceRequest` and its own `Serialize`.
fn encode_json(proto: Bytes) -> Result<Bytes, ExportError> {
    let req = ExportTraceServiceRequest::decode(proto)
        .map_err(|e| ExportError::permanent("encode", e.to_string()))?;
    serde_json::to_vec(&req)
        .map(Bytes::from)
        .map_err(|e| ExportError::permanent("encode", e.to_string()))
}

fn gzip(body: &[u8]) -> Result<Bytes, ExportError> {
    let mut enc = flate2::write::GzEncoder::new(
        Vec::with_capacity(body.len() / 4),
        flate2::Compression::fast(),
    );
    enc.write_all(body)
        .map_err(|e| ExportError::permanent("encode", e.to_string()))?;
    enc.finish()
        .map(Bytes::from)
        .map_err(|e| ExportError::permanent("encode", e.to_string()))
}

fn get_or_try(
    slot: &OnceLock<Bytes>,
    make: impl FnOnce() -> Result<Bytes, ExportError>,
) -> Result<Bytes, ExportError> {
    if let Some(b) = slot.get() {
        return Ok(b.clone());
    }
    let b = make()?;
    Ok(slot.get_or_init(|| b).clone())
}

/// The protobuf request (what OTLP/gRPC sends; gRPC compression is tonic's).
pub fn proto(batch: &Batch) -> Bytes {
    batch
        .bodies
        .proto
        .get_or_init(|| encode_request(&batch.resource_spans))
        .clone()
}

/// The protobuf request when another exporter already made it, else a fresh one that is not
/// kept (only what is sent is kept: it is what retries send).
fn proto_unkept(batch: &Batch) -> Bytes {
    match batch.bodies.proto.get() {
        Some(p) => p.clone(),
        None => encode_request(&batch.resource_spans),
    }
}

/// The OTLP/HTTP request body: protobuf or JSON, gzipped or not.
pub fn http(batch: &Batch, json: bool, gzipped: bool) -> Result<Bytes, ExportError> {
    let b = &batch.bodies;
    match (json, gzipped) {
        (false, false) => Ok(proto(batch)),
        (false, true) => get_or_try(&b.proto_gzip, || gzip(&proto_unkept(batch))),
        (true, false) => get_or_try(&b.json, || encode_json(proto_unkept(batch))),
        (true, true) => get_or_try(&b.json_gzip, || match b.json.get() {
            Some(j) => gzip(j),
            None => gzip(&encode_json(proto_unkept(batch))?),
        }),
    }
}

/// gRPC codec for `TraceService/Export` with a pre-encoded request: the encoder writes the
/// bytes as they are; the response is decoded with prost (as tonic-prost's codec does).
#[derive(Debug, Clone, Copy, Default)]
pub struct ExportCodec;

pub struct BytesEncoder;

impl Encoder for BytesEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.reserve(item.len());
        dst.put_slice(&item);
        Ok(())
    }
}

pub struct ResponseDecoder;

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Status> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            // INTERNAL, as tonic-prost maps undecodable messages.
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl Codec for ExportCodec {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = BytesEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> BytesEncoder {
        BytesEncoder
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{self as pb, ScopeSpans, Span};
    use std::io::Read as _;
    use std::sync::Arc;

    fn sample() -> Vec<ResourceSpans> {
        sample_proto()
            .iter()
            .map(|r| ResourceSpans::from_proto(r).expect("valid"))
            .collect()
    }

    fn sample_proto() -> Vec<pb::ResourceSpans> {
        (0..3)
            .map(|r| pb::ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![KeyValue {
                        key: "service.name".into(),
                        value: Some(AnyValue {
                            value: Some(any_value::Value::StringValue(format!("svc{r}"))),
                        }),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                scope_spans: vec![ScopeSpans {
                    spans: (0..4)
                        .map(|i| Span {
                            trace_id: vec![r as u8; 16],
                            span_id: vec![i as u8 + 1; 8],
                            name: format!("op{i}"),
                            start_time_unix_nano: 1_700_000_000_000_000_000 + i,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                }],
                ..Default::default()
            })
            .collect()
    }

    #[test]
    fn encodes_exactly_like_the_request() {
        let rs = sample();
        let req = ExportTraceServiceRequest {
            resource_spans: sample_proto(),
        };
        assert_eq!(encode_request(&rs).as_ref(), req.encode_to_vec().as_slice());
        assert!(encode_request(&[]).is_empty());
        let batch = Batch::new(rs, Arc::new(Vec::new()));
        assert_eq!(
            http(&batch, true, false).unwrap().as_ref(),
            serde_json::to_vec(&req).unwrap().as_slice()
        );
        for json in [false, true] {
            let plain = http(&batch, json, false).unwrap();
            let zipped = http(&batch, json, true).unwrap();
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(zipped.as_ref())
                .read_to_end(&mut out)
                .unwrap();
            assert_eq!(out, plain.as_ref());
        }
    }

    #[test]
    fn one_encoding_per_batch_freed_with_the_batch() {
        let a = Arc::new(Batch::new(sample(), Arc::new(Vec::new())));
        let b = Arc::new(Batch::new(sample()[..1].to_vec(), Arc::new(Vec::new())));
        let before = ENCODES.with(|n| n.get());
        let pa = proto(&a);
        // A retry or another exporter gets the very same bytes, without encoding again.
        assert_eq!(proto(&a).as_ptr(), pa.as_ptr());
        assert_eq!(http(&a, false, false).unwrap().as_ptr(), pa.as_ptr());
        assert_eq!(ENCODES.with(|n| n.get()) - before, 1);
        let pb = proto(&b);
        assert_ne!(pa, pb);
        // The bytes live as long as the batch (or a body still being sent), no longer.
        let weak = Arc::downgrade(&a);
        drop(a);
        assert!(weak.upgrade().is_none());
        assert!(pa.is_unique(), "only the copy held here is left");
    }
}
