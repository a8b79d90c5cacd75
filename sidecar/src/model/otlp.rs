//! OTLP trace types whose spans stay the protobuf bytes they arrived as.
//!
//! The default pipeline reads a span's trace id, parent, flags and at most four attributes, and
//! appends at most two. Decoding every span into `opentelemetry_proto` structs (a `String` or
//! `Vec` per attribute) and encoding it again for export cost more CPU than everything else
//! the sidecar does. Here a span is a reference-counted slice of the request buffer, checked
//! field by field on arrival (the same rules as prost's decoder, so a malformed span is refused
//! at the door and never poisons a batch at the backend); appended attributes are encoded
//! bytes written after it. Protobuf merges a repeated field that occurs more than once, so
//! `raw ++ extra` is a valid span with the attributes added.
//!
//! Resources and scopes are small and decoded as usual. `to_proto` gives the
//! `opentelemetry_proto` form for the exporters that print or write JSON.

use std::fmt;

use bytes::{Buf, BufMut, Bytes};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1 as pb;
use prost::encoding::{
    self, decode_varint, encode_key, encode_varint, encoded_len_varint, key_len, DecodeContext,
    WireType,
};
use prost::{DecodeError, Message};

/// The OTLP trace gRPC service, as servers register it and clients name it.
pub const TRACE_SERVICE: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
/// The gRPC path of its `Export` method (`/{TRACE_SERVICE}/Export`).
pub const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// `ExportTraceServiceRequest`, wire-compatible.
#[derive(Clone, PartialEq, Message)]
pub struct TraceRequest {
    #[prost(message, repeated, tag = "1")]
    pub resource_spans: Vec<ResourceSpans>,
}

/// `opentelemetry.proto.trace.v1.ResourceSpans`, wire-compatible.
#[derive(Clone, PartialEq, Message)]
pub struct ResourceSpans {
    #[prost(message, optional, tag = "1")]
    pub resource: Option<Resource>,
    #[prost(message, repeated, tag = "2")]
    pub scope_spans: Vec<ScopeSpans>,
    #[prost(string, tag = "3")]
    pub schema_url: String,
}

/// `opentelemetry.proto.trace.v1.ScopeSpans`, wire-compatible; its spans are [`Span`]s.
#[derive(Clone, PartialEq, Default, Debug)]
pub struct ScopeSpans {
    pub scope: Option<InstrumentationScope>,
    pub spans: Vec<Span>,
    pub schema_url: String,
}

/// One span as bytes: `raw` as received, `extra` the fields processors appended.
#[derive(Clone, PartialEq, Default)]
pub struct Span {
    raw: Bytes,
    extra: Vec<u8>,
    /// `raw[trace_id.0 .. trace_id.0 + trace_id.1]` (the last occurrence wins, as in prost).
    trace_id: (u32, u32),
    has_parent: bool,
    flags: u32,
}

impl fmt::Debug for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Span")
            .field("trace_id", &self.trace_id())
            .field("has_parent", &self.has_parent)
            .field("flags", &self.flags)
            .field("len", &self.len())
            .finish()
    }
}

impl TraceRequest {
    /// From the decoded form (OTLP/JSON intake, tests).
    pub fn from_proto(req: &ExportTraceServiceRequest) -> Result<TraceRequest, DecodeError> {
        TraceRequest::decode(Bytes::from(req.encode_to_vec()))
    }

    pub fn to_proto(&self) -> Result<ExportTraceServiceRequest, DecodeError> {
        ExportTraceServiceRequest::decode(Bytes::from(self.encode_to_vec()))
    }
}

impl ResourceSpans {
    pub fn from_proto(rs: &pb::ResourceSpans) -> Result<ResourceSpans, DecodeError> {
        ResourceSpans::decode(Bytes::from(rs.encode_to_vec()))
    }

    pub fn to_proto(&self) -> Result<pb::ResourceSpans, DecodeError> {
        pb::ResourceSpans::decode(Bytes::from(self.encode_to_vec()))
    }
}

impl Message for ScopeSpans {
    fn encode_raw(&self, buf: &mut impl BufMut) {
        if let Some(scope) = &self.scope {
            encoding::message::encode(1, scope, buf);
        }
        for span in &self.spans {
            encode_key(2, WireType::LengthDelimited, buf);
            encode_varint(span.len() as u64, buf);
            buf.put_slice(&span.raw);
            buf.put_slice(&span.extra);
        }
        if !self.schema_url.is_empty() {
            encoding::string::encode(3, &self.schema_url, buf);
        }
    }

    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: WireType,
        buf: &mut impl Buf,
        ctx: DecodeContext,
    ) -> Result<(), DecodeError> {
        match tag {
            1 => encoding::message::merge(
                wire_type,
                self.scope.get_or_insert_with(InstrumentationScope::default),
                buf,
                ctx,
            ),
            2 => {
                // prost's own checks; from a `Bytes` buffer (both receivers) the span is a
                // slice of it, not a copy.
                let mut raw = Bytes::new();
                encoding::bytes::merge(wire_type, &mut raw, buf, ctx)?;
                self.spans.push(Span::parse(raw)?);
                Ok(())
            }
            3 => encoding::string::merge(wire_type, &mut self.schema_url, buf, ctx),
            _ => encoding::skip_field(wire_type, tag, buf, ctx),
        }
    }

    fn encoded_len(&self) -> usize {
        let scope = self
            .scope
            .as_ref()
            .map_or(0, |s| encoding::message::encoded_len(1, s));
        let spans: usize = self
            .spans
            .iter()
            .map(|s| {
                let l = s.len();
                key_len(2) + encoded_len_varint(l as u64) + l
            })
            .sum();
        let schema = if self.schema_url.is_empty() {
            0
        } else {
            encoding::string::encoded_len(3, &self.schema_url)
        };
        scope + spans + schema
    }

    fn clear(&mut self) {
        *self = ScopeSpans::default();
    }
}

/// The messages a span holds, for the validating walk.
#[derive(Clone, Copy)]
enum Msg {
    Span,
    KeyValue,
    AnyValue,
    ArrayValue,
    KeyValueList,
    Event,
    Link,
    Status,
}

/// What a known field holds. Unknown fields are skipped, as prost does.
#[derive(Clone, Copy)]
enum Field {
    Varint,
    Fixed32,
    Fixed64,
    Blob,
    Str,
    Sub(Msg),
}

impl Field {
    fn wire_type(self) -> WireType {
        match self {
            Field::Varint => WireType::Varint,
            Field::Fixed32 => WireType::ThirtyTwoBit,
            Field::Fixed64 => WireType::SixtyFourBit,
            Field::Blob | Field::Str | Field::Sub(_) => WireType::LengthDelimited,
        }
    }
}

/// The field table of opentelemetry-proto's trace and common messages.
fn field(m: Msg, tag: u32) -> Option<Field> {
    use Field::*;
    Some(match (m, tag) {
        (Msg::Span, 1 | 2 | 4) => Blob,
        (Msg::Span, 3 | 5) => Str,
        (Msg::Span, 6 | 10 | 12 | 14) => Varint,
        (Msg::Span, 7 | 8) => Fixed64,
        (Msg::Span, 9) => Sub(Msg::KeyValue),
        (Msg::Span, 11) => Sub(Msg::Event),
        (Msg::Span, 13) => Sub(Msg::Link),
        (Msg::Span, 15) => Sub(Msg::Status),
        (Msg::Span, 16) => Fixed32,
        (Msg::KeyValue, 1) => Str,
        (Msg::KeyValue, 2) => Sub(Msg::AnyValue),
        (Msg::KeyValue, 3) => Varint,
        (Msg::AnyValue, 1) => Str,
        (Msg::AnyValue, 2 | 3 | 8) => Varint,
        (Msg::AnyValue, 4) => Fixed64,
        (Msg::AnyValue, 5) => Sub(Msg::ArrayValue),
        (Msg::AnyValue, 6) => Sub(Msg::KeyValueList),
        (Msg::AnyValue, 7) => Blob,
        (Msg::ArrayValue, 1) => Sub(Msg::AnyValue),
        (Msg::KeyValueList, 1) => Sub(Msg::KeyValue),
        (Msg::Event, 1) => Fixed64,
        (Msg::Event, 2) => Str,
        (Msg::Event, 3) => Sub(Msg::KeyValue),
        (Msg::Event, 4) => Varint,
        (Msg::Link, 1 | 2) => Blob,
        (Msg::Link, 3) => Str,
        (Msg::Link, 4) => Sub(Msg::KeyValue),
        (Msg::Link, 5) => Varint,
        (Msg::Link, 6) => Fixed32,
        (Msg::Status, 2) => Str,
        (Msg::Status, 3) => Varint,
        _ => return None,
    })
}

/// Nesting the walk follows before it hands a span to prost for the verdict.
const MAX_DEPTH: u32 = 32;

/// One field of a message: its tag and, for length-delimited fields, the payload.
pub struct RawField<'a> {
    pub tag: u32,
    pub wire_type: WireType,
    pub payload: &'a [u8],
    /// Varint, fixed32 or fixed64 value, else 0.
    pub number: u64,
}

/// A varint; the one-byte case (most keys and lengths) without prost's general decoder.
#[inline]
fn varint(b: &mut &[u8]) -> Option<u64> {
    match b.first() {
        Some(&v) if v < 0x80 => {
            *b = &b[1..];
            Some(u64::from(v))
        }
        Some(_) => decode_varint(b).ok(),
        None => None,
    }
}

/// Reads the next field of `b`; None at the end or on any malformation (a caller that needs
/// to tell them apart checks `b.is_empty()` before the call). Groups are skipped whole.
pub fn next_field<'a>(b: &mut &'a [u8]) -> Option<RawField<'a>> {
    // prost's decode_key is not used: its error for "no more bytes", which ends every walk, is
    // a heap allocation.
    let key = u32::try_from(varint(b)?).ok()?;
    let tag = Some(key >> 3).filter(|t| *t != 0)?;
    let wire_type = WireType::try_from(u64::from(key & 7)).ok()?;
    let mut number = 0;
    let payload: &[u8] = match wire_type {
        WireType::Varint => {
            number = varint(b)?;
            &[]
        }
        WireType::ThirtyTwoBit => {
            let (v, rest) = b.split_first_chunk::<4>()?;
            number = u64::from(u32::from_le_bytes(*v));
            *b = rest;
            &[]
        }
        WireType::SixtyFourBit => {
            let (v, rest) = b.split_first_chunk::<8>()?;
            number = u64::from_le_bytes(*v);
            *b = rest;
            &[]
        }
        WireType::LengthDelimited => {
            let len = usize::try_from(varint(b)?).ok()?;
            if len > b.len() {
                return None;
            }
            let (v, rest) = b.split_at(len);
            *b = rest;
            v
        }
        WireType::StartGroup | WireType::EndGroup => {
            encoding::skip_field(wire_type, tag, b, DecodeContext::default()).ok()?;
            &[]
        }
    };
    Some(RawField {
        tag,
        wire_type,
        payload,
        number,
    })
}

/// Whether `b` is a valid `m` by prost's rules (wire types of known fields, lengths, UTF-8 of
/// strings, nested messages). False may also mean "deeper than MAX_DEPTH": the caller then
/// asks prost.
fn valid(m: Msg, mut b: &[u8], depth: u32) -> bool {
    if depth == 0 {
        return false;
    }
    while !b.is_empty() {
        let Some(f) = next_field(&mut b) else {
            return false;
        };
        let Some(kind) = field(m, f.tag) else {
            continue;
        };
        if kind.wire_type() != f.wire_type || !payload_ok(kind, f.payload, depth - 1) {
            return false;
        }
    }
    true
}

/// Whether a known field's payload is valid: UTF-8 for strings, `valid` for messages.
fn payload_ok(kind: Field, payload: &[u8], depth: u32) -> bool {
    match kind {
        Field::Str => std::str::from_utf8(payload).is_ok(),
        Field::Sub(m) => valid(m, payload, depth),
        _ => true,
    }
}

/// The string value of an `AnyValue`, if that is what it holds (the last oneof field wins).
fn any_string(mut b: &[u8]) -> Option<&str> {
    let mut s = None;
    while let Some(f) = next_field(&mut b) {
        match f.tag {
            1 => s = std::str::from_utf8(f.payload).ok(),
            2..=8 => s = None,
            _ => {}
        }
    }
    s
}

/// `(key, string value)` of an encoded `KeyValue`; the value is None unless it is a string.
fn key_value(mut b: &[u8]) -> Option<(&str, Option<&str>)> {
    let mut key = "";
    let mut value = None;
    while let Some(f) = next_field(&mut b) {
        match f.tag {
            1 => key = std::str::from_utf8(f.payload).ok()?,
            2 => value = any_string(f.payload),
            _ => {}
        }
    }
    Some((key, value))
}

/// The attributes (field 9) of encoded span fields, in order.
fn attributes(mut b: &[u8]) -> impl Iterator<Item = (&str, Option<&str>)> {
    std::iter::from_fn(move || loop {
        let f = next_field(&mut b)?;
        if f.tag == 9 && f.wire_type == WireType::LengthDelimited {
            if let Some(kv) = key_value(f.payload) {
                return Some(kv);
            }
        }
    })
}

impl Span {
    /// Checks `raw` as a span and notes what the sampler needs. Errors are prost's own.
    pub fn parse(raw: Bytes) -> Result<Span, DecodeError> {
        let mut span = Span {
            raw,
            ..Span::default()
        };
        let mut ok = true;
        let base = span.raw.as_ptr() as usize;
        let mut b: &[u8] = &span.raw;
        while !b.is_empty() {
            let Some(f) = next_field(&mut b) else {
                ok = false;
                break;
            };
            let Some(kind) = field(Msg::Span, f.tag) else {
                continue;
            };
            if kind.wire_type() != f.wire_type {
                ok = false;
                break;
            }
            match f.tag {
                1 => {
                    let start = f.payload.as_ptr() as usize - base;
                    span.trace_id = (start as u32, f.payload.len() as u32);
                }
                4 => span.has_parent = !f.payload.is_empty(),
                16 => span.flags = f.number as u32,
                _ => ok &= payload_ok(kind, f.payload, MAX_DEPTH),
            }
        }
        if !ok {
            // prost has the last word. The walk stopped early only where prost refuses too (a
            // field it cannot read, a known field of the wrong wire type), so when prost takes
            // the span, the fields above were all read: what failed was nesting beyond
            // MAX_DEPTH, which prost allows.
            pb::Span::decode(span.raw.clone())?;
        }
        Ok(span)
    }

    /// From the decoded form (tests, and spans built by the sidecar itself).
    pub fn from_proto(span: &pb::Span) -> Span {
        let raw = Bytes::from(span.encode_to_vec());
        // prost's own encoding parses; the fallback keeps the bytes with no sampler fields.
        Span::parse(raw.clone()).unwrap_or(Span {
            raw,
            ..Span::default()
        })
    }

    pub fn to_proto(&self) -> Result<pb::Span, DecodeError> {
        pb::Span::decode(self.raw.clone().chain(&self.extra[..]))
    }

    /// Gives the span its own copy of its bytes. A span is a slice of the request it came in;
    /// one held for long (tail sampling) would keep that whole request buffer alive.
    pub fn detach(&mut self) {
        self.raw = Bytes::copy_from_slice(&self.raw);
    }

    /// Encoded length of the span's fields.
    pub fn len(&self) -> usize {
        self.raw.len() + self.extra.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn trace_id(&self) -> &[u8] {
        let (start, len) = (self.trace_id.0 as usize, self.trace_id.1 as usize);
        self.raw.get(start..start + len).unwrap_or(&[])
    }

    pub fn has_parent(&self) -> bool {
        self.has_parent
    }

    /// `Span.flags`: W3C trace flags in bits 0–7, OTLP's own flags above.
    pub fn flags(&self) -> u32 {
        self.flags
    }

    /// `(start_time_unix_nano, end_time_unix_nano, status code)` read from the bytes (fields
    /// processors append are attributes only), for tail sampling's latency and status policies.
    pub fn times_and_status(&self) -> (u64, u64, i32) {
        let (mut start, mut end, mut code) = (0, 0, 0);
        let mut b: &[u8] = &self.raw;
        while let Some(f) = next_field(&mut b) {
            match (f.tag, f.wire_type) {
                (7, WireType::SixtyFourBit) => start = f.number,
                (8, WireType::SixtyFourBit) => end = f.number,
                (15, WireType::LengthDelimited) => {
                    let mut st = f.payload;
                    while let Some(sf) = next_field(&mut st) {
                        if sf.tag == 3 && sf.wire_type == WireType::Varint {
                            code = sf.number as i32;
                        }
                    }
                }
                _ => {}
            }
        }
        (start, end, code)
    }

    /// Every attribute as `(key, string value)`; the value is None unless it is a string.
    fn attributes(&self) -> impl Iterator<Item = (&str, Option<&str>)> {
        attributes(&self.raw).chain(attributes(&self.extra))
    }

    /// The first attribute named `key`, when it is a non-empty string.
    pub fn str_attr(&self, key: &str) -> Option<&str> {
        let [value] = self.find_attrs([key]);
        value.flatten()
    }

    /// One pass for several keys: for each, None when absent, else the first occurrence's
    /// string value (None unless a non-empty string).
    pub fn find_attrs<'a, const N: usize>(
        &'a self,
        keys: [&str; N],
    ) -> [Option<Option<&'a str>>; N] {
        let mut found = [None; N];
        let mut missing = N;
        for (k, v) in self.attributes() {
            if let Some(i) = keys.iter().position(|key| *key == k) {
                if found[i].is_none() {
                    found[i] = Some(v.filter(|v| !v.is_empty()));
                    missing -= 1;
                    if missing == 0 {
                        break;
                    }
                }
            }
        }
        found
    }

    /// Appends a string attribute.
    pub fn push_str_attr(&mut self, key: &str, value: &str) {
        encoding::message::encode(9, &string_attr(key, value), &mut self.extra);
    }
}

/// A string-valued attribute.
pub fn string_attr(key: &str, value: &str) -> KeyValue {
    let value = any_value::Value::StringValue(value.to_owned());
    KeyValue {
        key: key.to_owned(),
        value: Some(AnyValue { value: Some(value) }),
        ..KeyValue::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
    use opentelemetry_proto::tonic::trace::v1::{span, Status};

    fn kv(key: &str, v: any_value::Value) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: Some(v) }),
            ..KeyValue::default()
        }
    }

    fn s(v: &str) -> any_value::Value {
        any_value::Value::StringValue(v.into())
    }

    fn rich_span(i: u8) -> pb::Span {
        pb::Span {
            trace_id: vec![i; 16],
            span_id: vec![i + 1; 8],
            trace_state: "k=v".into(),
            parent_span_id: if i.is_multiple_of(2) {
                vec![9; 8]
            } else {
                vec![]
            },
            flags: 0x101,
            name: format!("span-{i}"),
            kind: span::SpanKind::Client as i32,
            start_time_unix_nano: 1_000,
            end_time_unix_nano: 2_000,
            attributes: vec![
                kv("loom.topic", s("sensor.temp")),
                kv("n", any_value::Value::IntValue(-7)),
                kv("d", any_value::Value::DoubleValue(1.5)),
                kv("b", any_value::Value::BoolValue(true)),
                kv("raw", any_value::Value::BytesValue(vec![0, 1, 2])),
                kv(
                    "list",
                    any_value::Value::ArrayValue(ArrayValue {
                        values: vec![AnyValue {
                            value: Some(s("x")),
                        }],
                    }),
                ),
                kv(
                    "map",
                    any_value::Value::KvlistValue(KeyValueList {
                        values: vec![kv("inner", s("y"))],
                    }),
                ),
            ],
            dropped_attributes_count: 1,
            events: vec![span::Event {
                time_unix_nano: 1_500,
                name: "ev".into(),
                attributes: vec![kv("e", s("1"))],
                dropped_attributes_count: 0,
            }],
            dropped_events_count: 2,
            links: vec![span::Link {
                trace_id: vec![3; 16],
                span_id: vec![4; 8],
                trace_state: String::new(),
                attributes: vec![kv("l", s("2"))],
                dropped_attributes_count: 0,
                flags: 1,
            }],
            dropped_links_count: 3,
            status: Some(Status {
                message: "ok".into(),
                code: 1,
            }),
        }
    }

    fn request() -> ExportTraceServiceRequest {
        ExportTraceServiceRequest {
            resource_spans: vec![pb::ResourceSpans {
                resource: Some(Resource {
                    attributes: vec![kv("service.name", s("agent-7"))],
                    ..Resource::default()
                }),
                scope_spans: vec![pb::ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: "loom".into(),
                        ..InstrumentationScope::default()
                    }),
                    spans: (0..4).map(rich_span).collect(),
                    schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
                }],
                schema_url: "s".into(),
            }],
        }
    }

    #[test]
    fn round_trips_byte_for_byte_and_reads_sampler_fields() {
        let full = request();
        let bytes = full.encode_to_vec();
        let lazy = TraceRequest::decode(Bytes::from(bytes.clone())).expect("decodes");
        assert_eq!(lazy.encode_to_vec(), bytes);
        assert_eq!(lazy.encoded_len(), bytes.len());
        assert_eq!(lazy.to_proto().expect("back"), full);
        let spans = &lazy.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans.len(), 4);
        for (i, sp) in spans.iter().enumerate() {
            assert_eq!(sp.trace_id(), &[i as u8; 16][..]);
            assert_eq!(sp.has_parent(), i.is_multiple_of(2));
            assert_eq!(sp.flags(), 0x101);
            assert_eq!(sp.times_and_status(), (1_000, 2_000, 1));
            assert_eq!(sp.str_attr("loom.topic"), Some("sensor.temp"));
            assert_eq!(sp.str_attr("n"), None, "an int is not a string");
            assert_eq!(sp.find_attrs(["n"]), [Some(None)], "present, not a string");
            assert_eq!(
                sp.str_attr("inner"),
                None,
                "nested keys are not span attributes"
            );
        }
    }

    #[test]
    fn appended_attributes_are_read_back_and_decoded_by_prost() {
        let mut sp = Span::from_proto(&rich_span(1));
        assert_eq!(sp.find_attrs(["loom.agent.id"]), [None]);
        sp.push_str_attr("loom.agent.id", "planner");
        assert_eq!(sp.str_attr("loom.agent.id"), Some("planner"));
        let back = sp.to_proto().expect("decodes");
        let mut want = rich_span(1);
        want.attributes.push(kv("loom.agent.id", s("planner")));
        assert_eq!(back, want);
        // And inside a request, through the exporter's encoding.
        let rs = ResourceSpans {
            scope_spans: vec![ScopeSpans {
                spans: vec![sp],
                ..ScopeSpans::default()
            }],
            ..ResourceSpans::default()
        };
        let decoded = pb::ResourceSpans::decode(Bytes::from(rs.encode_to_vec())).expect("ok");
        assert_eq!(decoded.scope_spans[0].spans[0], want);
    }

    #[test]
    fn first_attribute_with_the_key_wins_and_empty_strings_are_absent() {
        let mut p = rich_span(1);
        p.attributes = vec![
            kv("k", any_value::Value::IntValue(1)),
            kv("k", s("later")),
            kv("e", s("")),
        ];
        let sp = Span::from_proto(&p);
        assert_eq!(sp.str_attr("k"), None);
        assert_eq!(sp.str_attr("e"), None);
        assert_eq!(sp.find_attrs(["e", "k"]), [Some(None), Some(None)]);
    }

    /// Every malformation prost refuses is refused here too, with prost's error, and
    /// everything prost takes is taken: single-byte edits and truncations of a rich request.
    #[test]
    fn accepts_and_refuses_exactly_what_prost_does() {
        let bytes = request().encode_to_vec();
        let mut cases: Vec<Vec<u8>> = Vec::new();
        for i in 0..bytes.len() {
            for v in [
                0x00u8,
                0xff,
                0x80,
                0x0a,
                0x12,
                0x7f,
                bytes[i] ^ 0x01,
                bytes[i] ^ 0x40,
            ] {
                let mut m = bytes.clone();
                m[i] = v;
                cases.push(m);
            }
            cases.push(bytes[..i].to_vec());
        }
        let (mut refused, mut taken) = (0, 0);
        for m in &cases {
            let want = ExportTraceServiceRequest::decode(&m[..]);
            let got = TraceRequest::decode(Bytes::from(m.clone()));
            match (&want, &got) {
                (Ok(w), Ok(g)) => {
                    taken += 1;
                    // Encodings, not structs: a mutated double may be NaN, which != itself.
                    let back = g.to_proto().expect("re-decodes");
                    assert_eq!(back.encode_to_vec(), w.encode_to_vec());
                }
                (Err(_), Err(_)) => refused += 1,
                _ => panic!(
                    "prost {:?} but lazy {:?} for {:02x?}",
                    want.as_ref().err(),
                    got.as_ref().err(),
                    m
                ),
            }
        }
        assert!(
            refused > 100 && taken > 100,
            "{refused} refused, {taken} taken"
        );
    }

    #[test]
    fn deep_nesting_is_judged_by_prost_and_never_overflows() {
        fn nested(depth: usize) -> AnyValue {
            let mut v = AnyValue {
                value: Some(s("leaf")),
            };
            for _ in 0..depth {
                v = AnyValue {
                    value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![v] })),
                };
            }
            v
        }
        for depth in [10, 40, 45, 46, 47, 48, 49, 50, 60, 200] {
            let mut p = rich_span(2);
            p.attributes = vec![KeyValue {
                key: "deep".into(),
                value: Some(nested(depth)),
                ..KeyValue::default()
            }];
            let req = ExportTraceServiceRequest {
                resource_spans: vec![pb::ResourceSpans {
                    scope_spans: vec![pb::ScopeSpans {
                        spans: vec![p],
                        ..pb::ScopeSpans::default()
                    }],
                    ..pb::ResourceSpans::default()
                }],
            };
            let bytes = req.encode_to_vec();
            let want = ExportTraceServiceRequest::decode(&bytes[..]).is_ok();
            let got = TraceRequest::decode(Bytes::from(bytes));
            // prost counts depth from the request, the fallback from the span: three levels
            // apart, so only the outcome away from the limit must agree.
            if !(47..=50).contains(&depth) {
                assert_eq!(got.is_ok(), want, "depth {depth}");
            }
            if let Ok(g) = got {
                assert_eq!(
                    g.resource_spans[0].scope_spans[0].spans[0].trace_id(),
                    &[2; 16]
                );
            }
        }
    }

    #[test]
    fn export_path_is_the_trace_service_method() {
        assert_eq!(EXPORT_PATH, format!("/{TRACE_SERVICE}/Export"));
    }
}
