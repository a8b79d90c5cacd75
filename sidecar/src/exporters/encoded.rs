//! A batch encoded once: the `ExportTraceServiceRequest` bytes that the network exporters send.
//!
//! Encoding (and, for OTLP/HTTP, gzip) happens at a batch's first export attempt. The bytes are
//! then shared by every retry of that batch and by every exporter the same batch went to,
//! instead of each attempt deep-cloning the spans into a new request and encoding that. The
//! gRPC exporter sends them through [`ExportCodec`], whose encoder writes the bytes as they are.
//!
//! The shared bytes live in a small process-wide table keyed by the batch's `Arc` (held as a
//! `Weak`, so an entry never keeps a batch alive and its address cannot be reused while the
//! entry exists). An entry goes when its batch is gone: [`forget_dead`] runs after every
//! `send_with_retry`, so the last exporter to finish a batch also frees its bytes. The table
//! holds at most [`MAX_ENTRIES`] batches; an exporter far behind the others encodes again.

use std::io::Write as _;
use std::sync::{Arc, OnceLock, Weak};

use bytes::{BufMut as _, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use parking_lot::Mutex;
use prost::Message as _;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Status;

use super::ExportError;
use crate::model::{Batch, ResourceSpans};

/// Batches whose encodings are kept at once. More than the exports in flight of a usual
/// configuration (exporters × `num_consumers`), so the table only evicts when one exporter
/// lags far behind another.
pub const MAX_ENTRIES: usize = 64;

/// `ExportTraceServiceRequest { resource_spans }` encoded, without copying the spans into a
/// request first: the request is just field 1, repeated (byte-for-byte what prost writes).
pub fn encode_request(resource_spans: &[ResourceSpans]) -> Bytes {
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

/// The encodings of one batch, each made at most once (two exporters racing for the same one
/// may both encode; one result is kept).
#[derive(Default)]
pub struct Bodies {
    proto: OnceLock<Bytes>,
    proto_gzip: OnceLock<Bytes>,
    json: OnceLock<Bytes>,
    json_gzip: OnceLock<Bytes>,
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

impl Bodies {
    /// The protobuf request (what OTLP/gRPC sends; gRPC compression is tonic's).
    pub fn proto(&self, batch: &Batch) -> Bytes {
        self.proto
            .get_or_init(|| encode_request(&batch.resource_spans))
            .clone()
    }

    /// The protobuf request when another exporter already made it, else a fresh one that is not
    /// kept (only what is sent is kept: it is what retries send).
    fn proto_unkept(&self, batch: &Batch) -> Bytes {
        match self.proto.get() {
            Some(p) => p.clone(),
            None => encode_request(&batch.resource_spans),
        }
    }

    /// The OTLP/HTTP request body: protobuf or JSON, gzipped or not.
    pub fn http(&self, batch: &Batch, json: bool, gzipped: bool) -> Result<Bytes, ExportError> {
        match (json, gzipped) {
            (false, false) => Ok(self.proto(batch)),
            (false, true) => get_or_try(&self.proto_gzip, || gzip(&self.proto_unkept(batch))),
            (true, false) => get_or_try(&self.json, || encode_json(self.proto_unkept(batch))),
            (true, true) => get_or_try(&self.json_gzip, || match self.json.get() {
                Some(j) => gzip(j),
                None => gzip(&encode_json(self.proto_unkept(batch))?),
            }),
        }
    }
}

struct Entry {
    batch: Weak<Batch>,
    bodies: Arc<Bodies>,
}

/// Oldest first.
static TABLE: Mutex<Vec<Entry>> = Mutex::new(Vec::new());

/// The shared encodings of `batch` (empty at its first export attempt).
pub fn bodies(batch: &Arc<Batch>) -> Arc<Bodies> {
    let mut table = TABLE.lock();
    table.retain(|e| e.batch.strong_count() > 0);
    if let Some(e) = table
        .iter()
        .find(|e| std::ptr::eq(e.batch.as_ptr(), Arc::as_ptr(batch)))
    {
        return e.bodies.clone();
    }
    if table.len() >= MAX_ENTRIES {
        table.remove(0);
    }
    let bodies = Arc::new(Bodies::default());
    table.push(Entry {
        batch: Arc::downgrade(batch),
        bodies: bodies.clone(),
    });
    bodies
}

/// Frees the encodings of batches that no longer exist.
pub fn forget_dead() {
    let mut table = TABLE.lock();
    if !table.is_empty() {
        table.retain(|e| e.batch.strong_count() > 0);
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
        let b = Bodies::default();
        assert_eq!(
            b.http(&batch, true, false).unwrap().as_ref(),
            serde_json::to_vec(&req).unwrap().as_slice()
        );
        for json in [false, true] {
            let plain = b.http(&batch, json, false).unwrap();
            let zipped = b.http(&batch, json, true).unwrap();
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
        let pa = bodies(&a).proto(&a);
        // A retry or another exporter gets the very same bytes.
        assert_eq!(bodies(&a).proto(&a).as_ptr(), pa.as_ptr());
        let pb = bodies(&b).proto(&b);
        assert_ne!(pa, pb);
        let weak = Arc::downgrade(&a);
        drop(a);
        forget_dead();
        assert!(!TABLE
            .lock()
            .iter()
            .any(|e| std::ptr::eq(e.batch.as_ptr(), weak.as_ptr())));
        assert!(TABLE
            .lock()
            .iter()
            .any(|e| std::ptr::eq(e.batch.as_ptr(), Arc::as_ptr(&b))));
    }
}
