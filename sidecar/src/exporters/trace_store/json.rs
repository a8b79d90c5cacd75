//! OTLP/JSON written straight from the stored protobuf bytes: byte for byte what decoding into
//! `opentelemetry_proto` and serializing with its serde derive gives, without building structs.
//!
//! Decoding 1000 spans into prost structs (a `String` or `Vec` per attribute) and walking them
//! with serde was most of a trace GET. Here each span is read in place with the model's field
//! reader and written in the field order and formatting of opentelemetry-proto's serde
//! (`proto.rs` `serializers`, the `rename_all = "camelCase"` derives): every field present,
//! ids as lowercase hex, 64-bit times and `intValue` as strings, `bytesValue` as padded
//! base64, a missing message as `null`, an `AnyValue` without a value as `{}`, `keyStrindex`
//! only when set. Resources and scopes (one per piece) go through prost and serde as before.
//!
//! Anything this writer does not reproduce exactly gives [`Unsupported`] and the caller takes
//! the prost + serde path, which stays the reference: a singular message or a oneof that
//! occurs twice in one message (prost merges them), a known field of the wrong wire type or a
//! string that is not UTF-8 (prost refuses), values nested deeper than [`MAX_DEPTH`].

use bytes::Bytes;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::encoding::WireType::{LengthDelimited as Ld, SixtyFourBit, ThirtyTwoBit, Varint};
use prost::Message;

use crate::model::otlp::{next_field, RawField};

/// `AnyValue` nesting the writer follows; deeper values take the reference path, which also
/// applies prost's recursion limit.
const MAX_DEPTH: u32 = 32;

/// The bytes hold something only the reference path renders exactly.
#[derive(Debug, PartialEq, Eq)]
pub struct Unsupported;

type R = Result<(), Unsupported>;

/// `{"result": <TracesData>}` for the pieces (encoded `ResourceSpans`).
pub fn render(pieces: &[Bytes]) -> Result<Vec<u8>, Unsupported> {
    // OTLP/JSON of agent spans is about 2.5 times their protobuf size.
    let cap = pieces.iter().map(Bytes::len).sum::<usize>() * 3 + 64;
    let mut w = Writer {
        out: Vec::with_capacity(cap),
    };
    w.raw(b"{\"result\":{\"resourceSpans\":[");
    for (i, p) in pieces.iter().enumerate() {
        w.comma(i);
        w.resource_spans(p)?;
    }
    w.raw(b"]}}");
    Ok(w.out)
}

/// Calls `f` for every field of `b`; Unsupported when `b` is not a sequence of fields.
fn fields<'a>(mut b: &'a [u8], mut f: impl FnMut(RawField<'a>) -> R) -> R {
    while !b.is_empty() {
        f(next_field(&mut b).ok_or(Unsupported)?)?;
    }
    Ok(())
}

/// Keeps the first occurrence of a singular message field; a second one prost would merge.
fn once<'a>(slot: &mut Option<&'a [u8]>, payload: &'a [u8]) -> R {
    match slot.replace(payload) {
        None => Ok(()),
        Some(_) => Err(Unsupported),
    }
}

/// A known field (`tag <= known`) whose wire type was not matched: prost refuses the message.
fn unknown_or_bad(tag: u32, known: u32) -> R {
    if tag <= known {
        Err(Unsupported)
    } else {
        Ok(())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";
const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

struct Writer {
    out: Vec<u8>,
}

impl Writer {
    fn raw(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }

    fn comma(&mut self, i: usize) {
        if i > 0 {
            self.out.push(b',');
        }
    }

    /// A JSON string escaped as serde_json escapes it.
    fn str(&mut self, b: &[u8]) -> R {
        std::str::from_utf8(b).map_err(|_| Unsupported)?;
        self.out.push(b'"');
        let mut start = 0;
        for (i, &c) in b.iter().enumerate() {
            let short: &[u8] = match c {
                b'"' => b"\\\"",
                b'\\' => b"\\\\",
                b'\n' => b"\\n",
                b'\r' => b"\\r",
                b'\t' => b"\\t",
                0x08 => b"\\b",
                0x0c => b"\\f",
                0..=0x1f => &[],
                _ => continue,
            };
            self.out.extend_from_slice(&b[start..i]);
            start = i + 1;
            if short.is_empty() {
                self.out.extend_from_slice(b"\\u00");
                self.out.push(HEX[usize::from(c >> 4)]);
                self.out.push(HEX[usize::from(c & 0xf)]);
            } else {
                self.out.extend_from_slice(short);
            }
        }
        self.out.extend_from_slice(&b[start..]);
        self.out.push(b'"');
        Ok(())
    }

    fn hex(&mut self, b: &[u8]) {
        self.out.push(b'"');
        for &c in b {
            self.out.push(HEX[usize::from(c >> 4)]);
            self.out.push(HEX[usize::from(c & 0xf)]);
        }
        self.out.push(b'"');
    }

    fn base64(&mut self, b: &[u8]) {
        self.out.push(b'"');
        for chunk in b.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &c)| n | u32::from(c) << (16 - 8 * i));
            for i in 0..4 {
                self.out.push(if i <= chunk.len() {
                    BASE64[(n >> (18 - 6 * i) & 63) as usize]
                } else {
                    b'='
                });
            }
        }
        self.out.push(b'"');
    }

    fn uint(&mut self, mut v: u64) {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.out.extend_from_slice(&buf[i..]);
    }

    fn int(&mut self, v: i64) {
        if v < 0 {
            self.out.push(b'-');
        }
        self.uint(v.unsigned_abs());
    }

    /// A 64-bit integer as OTLP/JSON writes it: a string.
    fn quoted(&mut self, v: u64) {
        self.out.push(b'"');
        self.uint(v);
        self.out.push(b'"');
    }

    /// Any serde value (resources, scopes, doubles: rare or one per piece).
    fn serde(&mut self, v: &impl serde::Serialize) -> R {
        serde_json::to_writer(&mut self.out, v).map_err(|_| Unsupported)
    }

    /// `[...]` of the fields numbered `tag` in `b` (wire types checked by the caller's pass).
    fn list(
        &mut self,
        mut b: &[u8],
        tag: u32,
        depth: u32,
        each: fn(&mut Self, &[u8], u32) -> R,
    ) -> R {
        self.out.push(b'[');
        let mut n = 0;
        while let Some(f) = next_field(&mut b) {
            if f.tag == tag {
                self.comma(n);
                n += 1;
                each(self, f.payload, depth)?;
            }
        }
        self.out.push(b']');
        Ok(())
    }

    /// An encoded message decoded by prost and written by serde; `null` when absent.
    fn decoded<M: Message + Default + serde::Serialize>(&mut self, b: Option<&[u8]>) -> R {
        match b {
            None => {
                self.raw(b"null");
                Ok(())
            }
            Some(b) => self.serde(&M::decode(b).map_err(|_| Unsupported)?),
        }
    }

    fn resource_spans(&mut self, b: &[u8]) -> R {
        self.holder::<Resource>(b, b"{\"resource\":", b",\"scopeSpans\":", Self::scope_spans)
    }

    fn scope_spans(&mut self, b: &[u8], _: u32) -> R {
        self.holder::<InstrumentationScope>(b, b"{\"scope\":", b",\"spans\":", Self::span)
    }

    /// `ResourceSpans` and `ScopeSpans`, one shape: a message written by serde (field 1), a
    /// list (field 2), `schemaUrl` (field 3).
    fn holder<M: Message + Default + serde::Serialize>(
        &mut self,
        b: &[u8],
        head: &[u8],
        list_key: &[u8],
        each: fn(&mut Self, &[u8], u32) -> R,
    ) -> R {
        let (mut first, mut schema_url) = (None, &[][..]);
        fields(b, |f| {
            match (f.tag, f.wire_type) {
                (1, Ld) => once(&mut first, f.payload)?,
                (2, Ld) => {}
                (3, Ld) => schema_url = f.payload,
                (t, _) => unknown_or_bad(t, 3)?,
            }
            Ok(())
        })?;
        self.raw(head);
        self.decoded::<M>(first)?;
        self.raw(list_key);
        self.list(b, 2, 0, each)?;
        self.raw(b",\"schemaUrl\":");
        self.str(schema_url)?;
        self.raw(b"}");
        Ok(())
    }

    fn span(&mut self, b: &[u8], _: u32) -> R {
        let mut s = SpanFields::default();
        fields(b, |f| {
            let n = f.number;
            match (f.tag, f.wire_type) {
                (1, Ld) => s.trace_id = f.payload,
                (2, Ld) => s.span_id = f.payload,
                (3, Ld) => s.trace_state = f.payload,
                (4, Ld) => s.parent = f.payload,
                (5, Ld) => s.name = f.payload,
                (6, Varint) => s.kind = n as i32,
                (7, SixtyFourBit) => s.start = n,
                (8, SixtyFourBit) => s.end = n,
                (9 | 11 | 13, Ld) => {}
                (10, Varint) => s.dropped_attributes = n as u32,
                (12, Varint) => s.dropped_events = n as u32,
                (14, Varint) => s.dropped_links = n as u32,
                (15, Ld) => once(&mut s.status, f.payload)?,
                (16, ThirtyTwoBit) => s.flags = n as u32,
                (t, _) => unknown_or_bad(t, 16)?,
            }
            Ok(())
        })?;
        self.raw(b"{\"traceId\":");
        self.hex(s.trace_id);
        self.raw(b",\"spanId\":");
        self.hex(s.span_id);
        self.raw(b",\"traceState\":");
        self.str(s.trace_state)?;
        self.raw(b",\"parentSpanId\":");
        self.hex(s.parent);
        self.raw(b",\"flags\":");
        self.uint(u64::from(s.flags));
        self.raw(b",\"name\":");
        self.str(s.name)?;
        self.raw(b",\"kind\":");
        self.int(i64::from(s.kind));
        self.raw(b",\"startTimeUnixNano\":");
        self.quoted(s.start);
        self.raw(b",\"endTimeUnixNano\":");
        self.quoted(s.end);
        self.attributes(b, 9, s.dropped_attributes)?;
        self.raw(b",\"events\":");
        self.list(b, 11, 0, Self::event)?;
        self.raw(b",\"droppedEventsCount\":");
        self.uint(u64::from(s.dropped_events));
        self.raw(b",\"links\":");
        self.list(b, 13, 0, Self::link)?;
        self.raw(b",\"droppedLinksCount\":");
        self.uint(u64::from(s.dropped_links));
        self.raw(b",\"status\":");
        match s.status {
            None => self.raw(b"null"),
            Some(b) => self.status(b)?,
        }
        self.raw(b"}");
        Ok(())
    }

    /// `"attributes"` (field `tag` of `b`) and `"droppedAttributesCount"`, after other members.
    fn attributes(&mut self, b: &[u8], tag: u32, dropped: u32) -> R {
        self.raw(b",\"attributes\":");
        self.list(b, tag, 0, Self::key_value)?;
        self.raw(b",\"droppedAttributesCount\":");
        self.uint(u64::from(dropped));
        Ok(())
    }

    fn event(&mut self, b: &[u8], _: u32) -> R {
        let (mut time, mut name, mut dropped) = (0, &[][..], 0u32);
        fields(b, |f| {
            match (f.tag, f.wire_type) {
                (1, SixtyFourBit) => time = f.number,
                (2, Ld) => name = f.payload,
                (3, Ld) => {}
                (4, Varint) => dropped = f.number as u32,
                (t, _) => unknown_or_bad(t, 4)?,
            }
            Ok(())
        })?;
        self.raw(b"{\"timeUnixNano\":");
        self.quoted(time);
        self.raw(b",\"name\":");
        self.str(name)?;
        self.attributes(b, 3, dropped)?;
        self.raw(b"}");
        Ok(())
    }

    fn link(&mut self, b: &[u8], _: u32) -> R {
        let (mut trace_id, mut span_id, mut state) = (&[][..], &[][..], &[][..]);
        let (mut dropped, mut flags) = (0u32, 0u32);
        fields(b, |f| {
            match (f.tag, f.wire_type) {
                (1, Ld) => trace_id = f.payload,
                (2, Ld) => span_id = f.payload,
                (3, Ld) => state = f.payload,
                (4, Ld) => {}
                (5, Varint) => dropped = f.number as u32,
                (6, ThirtyTwoBit) => flags = f.number as u32,
                (t, _) => unknown_or_bad(t, 6)?,
            }
            Ok(())
        })?;
        self.raw(b"{\"traceId\":");
        self.hex(trace_id);
        self.raw(b",\"spanId\":");
        self.hex(span_id);
        self.raw(b",\"traceState\":");
        self.str(state)?;
        self.attributes(b, 4, dropped)?;
        self.raw(b",\"flags\":");
        self.uint(u64::from(flags));
        self.raw(b"}");
        Ok(())
    }

    fn status(&mut self, b: &[u8]) -> R {
        let (mut message, mut code) = (&[][..], 0i32);
        fields(b, |f| {
            match (f.tag, f.wire_type) {
                // Field 1 is reserved in status.proto: unknown, skipped.
                (2, Ld) => message = f.payload,
                (3, Varint) => code = f.number as i32,
                (t @ 2..=3, _) => unknown_or_bad(t, 3)?,
                _ => {}
            }
            Ok(())
        })?;
        self.raw(b"{\"message\":");
        self.str(message)?;
        self.raw(b",\"code\":");
        self.int(i64::from(code));
        self.raw(b"}");
        Ok(())
    }

    fn key_value(&mut self, b: &[u8], depth: u32) -> R {
        let (mut key, mut value, mut strindex) = (&[][..], None, 0i32);
        fields(b, |f| {
            match (f.tag, f.wire_type) {
                (1, Ld) => key = f.payload,
                (2, Ld) => once(&mut value, f.payload)?,
                (3, Varint) => strindex = f.number as i32,
                (t, _) => unknown_or_bad(t, 3)?,
            }
            Ok(())
        })?;
        self.raw(b"{\"key\":");
        self.str(key)?;
        self.raw(b",\"value\":");
        match value {
            None => self.raw(b"null"),
            Some(v) => self.any_value(v, depth + 1)?,
        }
        if strindex != 0 {
            self.raw(b",\"keyStrindex\":");
            self.int(i64::from(strindex));
        }
        self.raw(b"}");
        Ok(())
    }

    fn any_value(&mut self, b: &[u8], depth: u32) -> R {
        if depth > MAX_DEPTH {
            return Err(Unsupported);
        }
        let mut value: Option<RawField<'_>> = None;
        fields(b, |f| {
            let known = match (f.tag, f.wire_type) {
                (1 | 5 | 6 | 7, Ld) | (2 | 3 | 8, Varint) | (4, SixtyFourBit) => true,
                (t, _) => {
                    unknown_or_bad(t, 8)?;
                    false
                }
            };
            // One oneof field at most: a second replaces or merges into the first in prost.
            if known && value.replace(f).is_some() {
                return Err(Unsupported);
            }
            Ok(())
        })?;
        self.raw(b"{");
        if let Some(f) = value {
            match f.tag {
                1 => {
                    self.raw(b"\"stringValue\":");
                    self.str(f.payload)?;
                }
                2 => {
                    self.raw(b"\"boolValue\":");
                    self.raw(if f.number != 0 { b"true" } else { b"false" });
                }
                3 => {
                    self.raw(b"\"intValue\":\"");
                    self.int(f.number as i64);
                    self.raw(b"\"");
                }
                4 => {
                    self.raw(b"\"doubleValue\":");
                    self.serde(&f64::from_bits(f.number))?;
                }
                5 => {
                    self.raw(b"\"arrayValue\":{\"values\":");
                    self.list(f.payload, 1, depth + 1, Self::any_value)?;
                    self.raw(b"}");
                }
                6 => {
                    self.raw(b"\"kvlistValue\":{\"values\":");
                    self.list(f.payload, 1, depth + 1, Self::key_value)?;
                    self.raw(b"}");
                }
                7 => {
                    self.raw(b"\"bytesValue\":");
                    self.base64(f.payload);
                }
                _ => {
                    self.raw(b"\"stringValueStrindex\":");
                    self.int(i64::from(f.number as i32));
                }
            }
        }
        self.raw(b"}");
        Ok(())
    }
}

/// The singular fields of a span, last occurrence winning as in prost.
#[derive(Default)]
struct SpanFields<'a> {
    trace_id: &'a [u8],
    span_id: &'a [u8],
    trace_state: &'a [u8],
    parent: &'a [u8],
    name: &'a [u8],
    kind: i32,
    start: u64,
    end: u64,
    dropped_attributes: u32,
    dropped_events: u32,
    dropped_links: u32,
    status: Option<&'a [u8]>,
    flags: u32,
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use opentelemetry_proto::tonic::common::v1::{
        any_value::Value, AnyValue, ArrayValue, EntityRef, KeyValue, KeyValueList,
    };
    use opentelemetry_proto::tonic::trace::v1::{self as pb, span, Status};
    use prost::encoding::{encode_key, encode_varint, WireType};

    use super::super::api::render_traces_decoded;
    use super::super::store::{prepare, Limits, Store};
    use super::*;
    use crate::model::otlp::Span;
    use crate::model::{ResourceSpans, ScopeSpans};

    fn kv(key: &str, v: Option<Value>) -> KeyValue {
        KeyValue {
            key: key.into(),
            value: Some(AnyValue { value: v }),
            ..KeyValue::default()
        }
    }

    /// Every attribute value kind, with the edge cases of each.
    fn every_value() -> Vec<KeyValue> {
        let s = |v: &str| Some(Value::StringValue(v.into()));
        let mut attrs = vec![
            kv("plain", s("value")),
            kv(
                "escapes",
                s("q\" b\\ nl\n cr\r tab\t bs\x08 ff\x0c nul\0 us\x1f del\x7f /"),
            ),
            kv("unicode ✓ é", s("日本 😀 \u{2028}")),
            kv("empty", s("")),
            kv("true", Some(Value::BoolValue(true))),
            kv("false", Some(Value::BoolValue(false))),
            kv("no value", None),
            KeyValue {
                key: "absent".into(),
                value: None,
                key_strindex: 7,
            },
            kv("strindex", Some(Value::StringValueStrindex(-3))),
        ];
        for i in [0, 1, -1, 42, i64::MIN, i64::MAX] {
            attrs.push(kv("int", Some(Value::IntValue(i))));
        }
        for d in [
            0.0,
            -0.0,
            1.5,
            -2.0,
            1e300,
            5e-324,
            0.1,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ] {
            attrs.push(kv("double", Some(Value::DoubleValue(d))));
        }
        for n in 0..6u8 {
            attrs.push(kv(
                "bytes",
                Some(Value::BytesValue((250..250 + n).collect())),
            ));
        }
        let nested = Value::ArrayValue(ArrayValue {
            values: vec![
                AnyValue { value: s("a") },
                AnyValue { value: None },
                AnyValue {
                    value: Some(Value::KvlistValue(KeyValueList {
                        values: vec![kv("inner", Some(Value::IntValue(-5))), kv("x", None)],
                    })),
                },
                AnyValue {
                    value: Some(Value::ArrayValue(ArrayValue { values: vec![] })),
                },
            ],
        });
        attrs.push(kv("array", Some(nested)));
        attrs.push(kv(
            "kvlist",
            Some(Value::KvlistValue(KeyValueList { values: vec![] })),
        ));
        attrs
    }

    fn rich_span(trace_id: &[u8], i: u8) -> pb::Span {
        pb::Span {
            trace_id: trace_id.to_vec(),
            span_id: vec![i, 0xab, 0xcd, 0xef, 0, 1, 2, 0xff],
            trace_state: "vendor=a\"b".into(),
            parent_span_id: if i == 0 { vec![] } else { vec![0; 8] },
            flags: 0x301,
            name: format!("op \"{i}\"\n"),
            kind: [0, 1, 2, 3, 4, 5, 17][usize::from(i) % 7],
            start_time_unix_nano: u64::MAX - u64::from(i),
            end_time_unix_nano: 1_714_564_800_000_000_000,
            attributes: every_value(),
            dropped_attributes_count: u32::from(i),
            events: vec![
                span::Event {
                    time_unix_nano: 123,
                    name: "exception".into(),
                    attributes: vec![kv(
                        "exception.message",
                        Some(Value::StringValue("boom".into())),
                    )],
                    dropped_attributes_count: 2,
                },
                span::Event::default(),
            ],
            dropped_events_count: 3,
            links: vec![
                span::Link {
                    trace_id: vec![0x11; 16],
                    span_id: vec![0x22; 8],
                    trace_state: "k=v".into(),
                    attributes: every_value(),
                    dropped_attributes_count: 4,
                    flags: 0x100,
                },
                span::Link::default(),
            ],
            dropped_links_count: 5,
            status: match i % 3 {
                0 => None,
                1 => Some(Status::default()),
                _ => Some(Status {
                    message: "failed: \"x\"".into(),
                    code: 2,
                }),
            },
        }
    }

    fn rich_batch(trace_id: &[u8]) -> Vec<ResourceSpans> {
        let resource = Resource {
            attributes: vec![
                kv("service.name", Some(Value::StringValue("svc \"α\"".into()))),
                kv("host.cpus", Some(Value::IntValue(2))),
            ],
            dropped_attributes_count: 1,
            entity_refs: vec![EntityRef {
                schema_url: "https://x/1".into(),
                r#type: "host".into(),
                id_keys: vec!["host.id".into()],
                description_keys: vec![],
            }],
        };
        let scope = |name: &str| InstrumentationScope {
            name: name.into(),
            version: "1.2".into(),
            attributes: vec![kv("scope.attr", Some(Value::BoolValue(true)))],
            dropped_attributes_count: 6,
        };
        let rs = pb::ResourceSpans {
            resource: Some(resource),
            scope_spans: vec![
                pb::ScopeSpans {
                    scope: Some(scope("first")),
                    spans: (0..4).map(|i| rich_span(trace_id, i)).collect(),
                    schema_url: "https://opentelemetry.io/schemas/1.26.0".into(),
                },
                pb::ScopeSpans {
                    scope: None,
                    spans: (4..7).map(|i| rich_span(trace_id, i)).collect(),
                    schema_url: String::new(),
                },
            ],
            schema_url: "https://opentelemetry.io/schemas/1.25.0".into(),
        };
        let mut rs = ResourceSpans::from_proto(&rs).expect("valid");
        // Attributes the enrich processor appends come after the span's own fields.
        rs.scope_spans[0].spans[1].push_str_attr("loom.node", "node-\"1\"");
        vec![rs, ResourceSpans::default()]
    }

    /// The pieces the store keeps for `batch`'s trace.
    fn stored(batches: &[Vec<ResourceSpans>], trace_id: &[u8; 16]) -> Vec<Bytes> {
        let mut store = Store::new(Limits {
            max_bytes: 1 << 30,
            max_traces: 100,
            ttl: Duration::from_secs(60),
        });
        for b in batches {
            store.insert(prepare(b), Instant::now());
        }
        store.get(trace_id, Instant::now()).expect("stored")
    }

    fn assert_same(pieces: &[Bytes]) -> serde_json::Value {
        let fast = render(pieces).expect("written directly");
        let reference = render_traces_decoded(pieces).expect("decodes");
        assert_eq!(
            String::from_utf8_lossy(&fast),
            String::from_utf8_lossy(&reference)
        );
        serde_json::from_slice(&fast).expect("valid JSON")
    }

    #[test]
    fn a_rich_trace_is_written_as_serde_writes_it() {
        let id = [0xa1; 16];
        let other = [0x07; 16];
        let batches = [rich_batch(&id), rich_batch(&other), rich_batch(&id)];
        let pieces = stored(&batches, &id);
        assert_eq!(pieces.len(), 2);
        let v = assert_same(&pieces);
        let span = &v["result"]["resourceSpans"][0]["scopeSpans"][0]["spans"][1];
        assert_eq!(span["traceId"], "a1".repeat(16));
        assert_eq!(span["spanId"], "01abcdef000102ff");
        assert_eq!(span["startTimeUnixNano"], (u64::MAX - 1).to_string());
        let attrs = span["attributes"].as_array().expect("attributes");
        assert_eq!(attrs.last().expect("appended")["key"], "loom.node");
        assert_eq!(
            v["result"]["resourceSpans"][1]["scopeSpans"][1]["spans"]
                .as_array()
                .map(Vec::len),
            Some(3)
        );
    }

    /// A span as a client may encode it: fields out of order, a scalar twice (the last
    /// wins), unknown fields and a group, defaults written out, attributes in two runs.
    fn unusual_span() -> Vec<u8> {
        let mut b = Vec::new();
        let ld = |b: &mut Vec<u8>, tag: u32, v: &[u8]| {
            encode_key(tag, WireType::LengthDelimited, b);
            encode_varint(v.len() as u64, b);
            b.extend_from_slice(v);
        };
        let attr = |k: &str| kv(k, Some(Value::IntValue(1))).encode_to_vec();
        ld(&mut b, 9, &attr("first"));
        ld(&mut b, 5, b"old name");
        encode_key(6, WireType::Varint, &mut b);
        encode_varint(0, &mut b);
        encode_key(100, WireType::Varint, &mut b);
        encode_varint(99, &mut b);
        ld(&mut b, 101, b"unknown");
        encode_key(102, WireType::StartGroup, &mut b);
        encode_key(1, WireType::Varint, &mut b);
        encode_varint(5, &mut b);
        encode_key(102, WireType::EndGroup, &mut b);
        ld(&mut b, 1, &[0xa1; 16]);
        ld(&mut b, 5, b"new name");
        encode_key(16, WireType::ThirtyTwoBit, &mut b);
        b.extend_from_slice(&1u32.to_le_bytes());
        ld(&mut b, 9, &attr("second"));
        encode_key(10, WireType::Varint, &mut b);
        encode_varint(u64::MAX, &mut b);
        b
    }

    fn piece(spans: Vec<Vec<u8>>) -> Bytes {
        let rs = ResourceSpans {
            resource: None,
            scope_spans: vec![ScopeSpans {
                scope: None,
                spans: spans
                    .into_iter()
                    .map(|s| Span::parse(Bytes::from(s)).expect("prost reads it"))
                    .collect(),
                schema_url: String::new(),
            }],
            schema_url: String::new(),
        };
        Bytes::from(rs.encode_to_vec())
    }

    #[test]
    fn spans_encoded_unusually_read_as_prost_reads_them() {
        let v = assert_same(&[piece(vec![unusual_span(), Vec::new()])]);
        let spans = &v["result"]["resourceSpans"][0]["scopeSpans"][0]["spans"];
        assert_eq!(spans[0]["name"], "new name");
        assert_eq!(spans[0]["attributes"][1]["key"], "second");
        assert_eq!(spans[1]["traceId"], "");
    }

    #[test]
    fn what_prost_merges_takes_the_reference_path() {
        let status = Status {
            message: "m".into(),
            code: 1,
        }
        .encode_to_vec();
        let mut twice = pb::Span::default().encode_to_vec();
        for _ in 0..2 {
            encode_key(15, WireType::LengthDelimited, &mut twice);
            encode_varint(status.len() as u64, &mut twice);
            twice.extend_from_slice(&status);
        }
        let mut two_values = AnyValue {
            value: Some(Value::IntValue(1)),
        }
        .encode_to_vec();
        two_values.extend(
            AnyValue {
                value: Some(Value::BoolValue(true)),
            }
            .encode_to_vec(),
        );
        let mut kv = Vec::new();
        encode_key(2, WireType::LengthDelimited, &mut kv);
        encode_varint(two_values.len() as u64, &mut kv);
        kv.extend_from_slice(&two_values);
        let mut oneof_twice = Vec::new();
        encode_key(9, WireType::LengthDelimited, &mut oneof_twice);
        encode_varint(kv.len() as u64, &mut oneof_twice);
        oneof_twice.extend_from_slice(&kv);
        let mut deep = AnyValue {
            value: Some(Value::StringValue("leaf".into())),
        };
        for _ in 0..MAX_DEPTH {
            deep = AnyValue {
                value: Some(Value::ArrayValue(ArrayValue { values: vec![deep] })),
            };
        }
        let deep = pb::Span {
            attributes: vec![KeyValue {
                key: "deep".into(),
                value: Some(deep),
                ..KeyValue::default()
            }],
            ..pb::Span::default()
        }
        .encode_to_vec();
        for span in [twice, oneof_twice, deep] {
            let pieces = [piece(vec![span])];
            assert_eq!(render(&pieces), Err(Unsupported));
            // What the API serves is still the reference rendering.
            assert_eq!(
                super::super::api::render_traces(&pieces).expect("renders"),
                render_traces_decoded(&pieces).expect("decodes")
            );
        }
    }
}
