//! Envelope: the parsed view of an event's metadata — W3C trace context plus the `loom.*` keys.
//!
//! This is the single codec for Loom metadata: the bridge, the bus and (through pyo3) the Python
//! SDK all read and write it here, so every language produces byte-identical metadata.
//! Invalid trace context is treated as absent, never as an error: an event with a garbled
//! `traceparent` still flows, it just starts a new trace.

use std::collections::HashMap;

use crate::proto::Event;

/// W3C Trace Context header carrying version, trace id, parent span id and flags.
pub const TRACEPARENT: &str = "traceparent";
/// W3C vendor-specific trace state; only meaningful alongside a valid `traceparent`.
pub const TRACESTATE: &str = "tracestate";
pub const THREAD_ID: &str = "loom.thread_id";
pub const CORRELATION_ID: &str = "loom.correlation_id";
pub const REPLY_TO: &str = "loom.reply_to";
pub const SENDER: &str = "loom.sender";
pub const TTL: &str = "loom.ttl";
pub const HOP: &str = "loom.hop";

/// Upstream loom-py's bare trace keys (`loom-py/src/loom/envelope.py` in loom-os/loom): read when
/// an event has no `traceparent` key, so a mixed deployment still forms one trace. Never written:
/// `traceparent` is the one source of truth on this wire (docs/migrating-from-upstream.md).
pub const BARE_TRACE_ID: &str = "trace_id";
pub const BARE_SPAN_ID: &str = "span_id";
pub const BARE_TRACE_FLAGS: &str = "trace_flags";

/// Every metadata key the envelope owns; `write_metadata` is authoritative for these.
pub const KEYS: [&str; 8] = [
    TRACEPARENT,
    TRACESTATE,
    THREAD_ID,
    CORRELATION_ID,
    REPLY_TO,
    SENDER,
    TTL,
    HOP,
];

/// The W3C spec caps tracestate at 32 list members; 512 bytes is the size every vendor must
/// accept, and a longer value is dropped rather than truncated (truncation could cut a member).
pub const MAX_TRACESTATE_LEN: usize = 512;

/// Sampled bit of the W3C trace flags.
pub const FLAG_SAMPLED: u8 = 0x01;

/// A parsed, valid W3C `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub flags: u8,
}

impl TraceParent {
    /// `None` for an all-zero trace or span id, which W3C says to ignore.
    fn valid(trace_id: [u8; 16], span_id: [u8; 8], flags: u8) -> Option<TraceParent> {
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            flags,
        })
    }

    pub fn sampled(&self) -> bool {
        self.flags & FLAG_SAMPLED != 0
    }
}

fn hex_val(c: u8) -> Option<u8> {
    // Only lowercase: the spec makes uppercase hex invalid in traceparent.
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Exactly `2 * N` lowercase hex digits as bytes.
pub(crate) fn decode_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != N * 2 {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
    }
    Some(out)
}

/// The two lowercase hex digits of every byte value: encoding is then one table load per byte
/// instead of two nibble lookups and two capacity-checked `String::push`es, which showed up in
/// profiles of every publish.
const HEX_PAIRS: [[u8; 2]; 256] = {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    table
};

/// Writes the hex of `bytes` into `out`, which is exactly twice as long.
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    debug_assert_eq!(out.len(), bytes.len() * 2);
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*b)]);
    }
}

/// Lowercase hex of `bytes`.
pub fn to_hex(bytes: &[u8]) -> String {
    let mut buf = vec![0u8; bytes.len() * 2];
    hex_into(&mut buf, bytes);
    String::from_utf8(buf).expect("hex digits are ASCII")
}

/// Parses a W3C `traceparent`; `None` for every form the spec says to ignore.
///
/// Version `00` must be exactly 55 characters. Higher versions (except the forbidden `ff`) may
/// carry more fields after a `-`, and are read as version 00 as the spec asks of parsers.
pub fn parse_traceparent(value: &str) -> Option<TraceParent> {
    // Header values may carry optional whitespace around them (RFC 9110 OWS).
    let b = value.trim_matches([' ', '\t']).as_bytes();
    if b.len() < 55 {
        return None;
    }
    let version = decode_hex::<1>(&b[0..2])?[0];
    if version == 0xff {
        return None;
    }
    if b[2] != b'-' || b[35] != b'-' || b[52] != b'-' {
        return None;
    }
    if version == 0 && b.len() != 55 {
        return None;
    }
    if b.len() > 55 && b[55] != b'-' {
        return None;
    }
    let trace_id = decode_hex::<16>(&b[3..35])?;
    let span_id = decode_hex::<8>(&b[36..52])?;
    let flags = decode_hex::<1>(&b[53..55])?[0];
    TraceParent::valid(trace_id, span_id, flags)
}

/// Length of a version-00 `traceparent`.
pub const TRACEPARENT_LEN: usize = 55;

/// Formats a version-00 `traceparent`.
pub fn format_traceparent(tp: &TraceParent) -> String {
    let mut s = String::with_capacity(TRACEPARENT_LEN);
    write_traceparent(&mut s, tp);
    s
}

/// Replaces `out`'s contents with the `traceparent` of `tp`, reusing its buffer.
pub fn write_traceparent(out: &mut String, tp: &TraceParent) {
    let mut buf = [b'-'; TRACEPARENT_LEN];
    buf[..2].copy_from_slice(b"00");
    hex_into(&mut buf[3..35], &tp.trace_id);
    hex_into(&mut buf[36..52], &tp.span_id);
    buf[53..].copy_from_slice(&HEX_PAIRS[usize::from(tp.flags)]);
    out.clear();
    out.push_str(std::str::from_utf8(&buf).expect("hex digits and dashes are ASCII"));
}

/// Parsed view of an event's (or action call's) metadata.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Envelope {
    pub thread_id: Option<String>,
    pub correlation_id: Option<String>,
    pub reply_to: Option<String>,
    pub sender: Option<String>,
    pub ttl: Option<u32>,
    pub hop: Option<u32>,
    /// 32 lowercase hex characters; set only from a valid `traceparent`.
    pub trace_id: Option<String>,
    /// 16 lowercase hex characters: the span that is the parent of the receiver's span.
    pub span_id: Option<String>,
    pub trace_flags: Option<u8>,
    pub tracestate: Option<String>,
}

fn non_empty(md: &HashMap<String, String>, key: &str) -> Option<String> {
    md.get(key).filter(|v| !v.is_empty()).cloned()
}

/// `md[key]`, else upstream's bare form of it (`loom.sender` → `sender`), as upstream loom-py
/// reads them: its writers use the `loom.` prefix, but bare keys exist in the wild.
fn non_empty_or_bare(md: &HashMap<String, String>, key: &str) -> Option<String> {
    non_empty(md, key).or_else(|| {
        let bare = key.strip_prefix("loom.")?;
        non_empty(md, bare)
    })
}

/// The trace context `md` carries: its `traceparent` when the key is present (valid or not: a
/// writer that speaks W3C decides alone), else upstream's bare `trace_id` / `span_id` /
/// `trace_flags`, checked as strictly as a `traceparent` (32 and 16 lowercase hex digits, not
/// all zero; flags two lowercase hex digits, absent meaning `00`). Anything invalid reads as
/// absent.
pub fn trace_parent_of(md: &HashMap<String, String>) -> Option<TraceParent> {
    if md.is_empty() {
        return None;
    }
    if let Some(tp) = md.get(TRACEPARENT) {
        return parse_traceparent(tp);
    }
    let trace_id = decode_hex::<16>(md.get(BARE_TRACE_ID)?.trim_matches([' ', '\t']).as_bytes())?;
    let span_id = decode_hex::<8>(md.get(BARE_SPAN_ID)?.trim_matches([' ', '\t']).as_bytes())?;
    let flags = match md.get(BARE_TRACE_FLAGS) {
        None => 0,
        Some(f) => decode_hex::<1>(f.trim_matches([' ', '\t']).as_bytes())?[0],
    };
    TraceParent::valid(trace_id, span_id, flags)
}

fn number(md: &HashMap<String, String>, key: &str) -> Option<u32> {
    md.get(key).and_then(|v| v.trim().parse::<u32>().ok())
}

/// `md`'s `tracestate`, trimmed; absent when empty or longer than the spec's limit.
fn tracestate_of(md: &HashMap<String, String>) -> Option<&str> {
    md.get(TRACESTATE)
        .map(|s| s.trim_matches([' ', '\t']))
        .filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE_LEN)
}

impl Envelope {
    /// Reads the envelope keys of `md`; unknown keys are ignored, invalid values read as absent.
    pub fn from_metadata(md: &HashMap<String, String>) -> Envelope {
        let mut env = Envelope {
            thread_id: non_empty_or_bare(md, THREAD_ID),
            correlation_id: non_empty_or_bare(md, CORRELATION_ID),
            reply_to: non_empty_or_bare(md, REPLY_TO),
            sender: non_empty_or_bare(md, SENDER),
            ttl: number(md, TTL),
            hop: number(md, HOP),
            ..Envelope::default()
        };
        if let Some(tp) = trace_parent_of(md) {
            env.set_traceparent(&tp);
            // tracestate without a valid traceparent is meaningless (W3C: discard it).
            env.tracestate = tracestate_of(md)
                .filter(|_| md.contains_key(TRACEPARENT))
                .map(str::to_owned);
        }
        env
    }

    pub fn from_event(ev: &Event) -> Envelope {
        Envelope::from_metadata(&ev.metadata)
    }

    /// The trace context as a parsed `traceparent`, if the trace fields form a valid one.
    pub fn trace_parent(&self) -> Option<TraceParent> {
        let trace_id = decode_hex::<16>(self.trace_id.as_deref()?.as_bytes())?;
        let span_id = decode_hex::<8>(self.span_id.as_deref()?.as_bytes())?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceParent {
            trace_id,
            span_id,
            flags: self.trace_flags.unwrap_or(0),
        })
    }

    /// The `traceparent` value this envelope writes, if its trace fields are valid.
    pub fn traceparent(&self) -> Option<String> {
        self.trace_parent().map(|tp| format_traceparent(&tp))
    }

    pub fn set_traceparent(&mut self, tp: &TraceParent) {
        self.trace_id = Some(to_hex(&tp.trace_id));
        self.span_id = Some(to_hex(&tp.span_id));
        self.trace_flags = Some(tp.flags);
    }

    /// Forgets the trace context (all four trace fields).
    pub fn clear_trace_context(&mut self) {
        self.trace_id = None;
        self.span_id = None;
        self.trace_flags = None;
        self.tracestate = None;
    }

    /// Writes the envelope into `md`. The envelope is authoritative for its keys: a field that is
    /// `None` or empty removes its key, so stale trace context never survives a re-injection.
    pub fn write_metadata(&self, md: &mut HashMap<String, String>) {
        fn put(md: &mut HashMap<String, String>, key: &str, value: Option<&str>) {
            match value.filter(|v| !v.is_empty()) {
                Some(v) => {
                    md.insert(key.to_owned(), v.to_owned());
                }
                None => {
                    md.remove(key);
                }
            }
        }
        let traceparent = self.traceparent();
        put(md, TRACEPARENT, traceparent.as_deref());
        let tracestate = traceparent.as_ref().and(self.tracestate.as_deref());
        put(
            md,
            TRACESTATE,
            tracestate.filter(|s| s.len() <= MAX_TRACESTATE_LEN),
        );
        put(md, THREAD_ID, self.thread_id.as_deref());
        put(md, CORRELATION_ID, self.correlation_id.as_deref());
        put(md, REPLY_TO, self.reply_to.as_deref());
        put(md, SENDER, self.sender.as_deref());
        put(md, TTL, self.ttl.map(|v| v.to_string()).as_deref());
        put(md, HOP, self.hop.map(|v| v.to_string()).as_deref());
    }

    pub fn to_metadata(&self) -> HashMap<String, String> {
        let mut md = HashMap::new();
        self.write_metadata(&mut md);
        md
    }

    pub fn attach_to_event(&self, ev: &mut Event) {
        self.write_metadata(&mut ev.metadata);
    }
}

#[cfg(feature = "runtime")]
mod otel {
    //! The OpenTelemetry side of the envelope: inject the current span, extract a remote parent.
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };
    use opentelemetry::Context;
    use tracing_opentelemetry::OpenTelemetrySpanExt;

    use std::collections::HashMap;

    use super::{
        to_hex, trace_parent_of, tracestate_of, Envelope, TraceParent, MAX_TRACESTATE_LEN,
        TRACEPARENT,
    };

    /// `tp` with `state` (unparsable: none) as a remote span context.
    fn remote_span_context(tp: &TraceParent, state: Option<&str>) -> SpanContext {
        SpanContext::new(
            TraceId::from_bytes(tp.trace_id),
            SpanId::from_bytes(tp.span_id),
            TraceFlags::new(tp.flags),
            true,
            state
                .and_then(|s| s.parse::<TraceState>().ok())
                .unwrap_or_default(),
        )
    }

    impl Envelope {
        /// Takes the trace context of the current `tracing` span (via tracing-opentelemetry).
        pub fn inject_trace_context(&mut self) {
            self.inject_context(&tracing::Span::current().context());
        }

        /// Takes the trace context of `cx`'s span; clears it when that span context is invalid.
        pub fn inject_context(&mut self, cx: &Context) {
            self.set_span_context(cx.span().span_context());
        }

        /// Takes the trace context `sc`; clears it when `sc` is invalid.
        pub fn set_span_context(&mut self, sc: &SpanContext) {
            if !sc.is_valid() {
                self.clear_trace_context();
                return;
            }
            self.trace_id = Some(to_hex(&sc.trace_id().to_bytes()));
            self.span_id = Some(to_hex(&sc.span_id().to_bytes()));
            self.trace_flags = Some(sc.trace_flags().to_u8());
            let state = sc.trace_state().header();
            self.tracestate =
                Some(state).filter(|s| !s.is_empty() && s.len() <= MAX_TRACESTATE_LEN);
        }

        /// The remote span this envelope names, as the parent context for a new span.
        pub fn remote_span_context(&self) -> Option<SpanContext> {
            Some(remote_span_context(
                &self.trace_parent()?,
                self.tracestate.as_deref(),
            ))
        }

        /// The remote parent that `md`'s `traceparent`/`tracestate` (or, without a `traceparent`,
        /// upstream's bare trace keys) name, read straight from the map (no `Envelope` built):
        /// for hot paths that only need the parent.
        pub fn remote_parent(md: &HashMap<String, String>) -> Option<Context> {
            let tp = trace_parent_of(md)?;
            let state = tracestate_of(md).filter(|_| md.contains_key(TRACEPARENT));
            let sc = remote_span_context(&tp, state);
            Some(Context::new().with_remote_span_context(sc))
        }

        /// An OpenTelemetry context whose (remote) span is this envelope's parent span.
        pub fn remote_context(&self) -> Option<Context> {
            self.remote_span_context()
                .map(|sc| Context::new().with_remote_span_context(sc))
        }

        /// Makes the remote context the parent of `tracing::Span::current()`.
        ///
        /// Returns false when the envelope has no valid trace context, or when the current span
        /// can no longer take a parent (it already started its OpenTelemetry span, e.g. because
        /// someone read its context; Loom's layer defers the start so "enter, then extract" works).
        pub fn extract_trace_context(&self) -> bool {
            self.set_parent_of(&tracing::Span::current())
        }

        /// As [`Envelope::extract_trace_context`], for a given span.
        pub fn set_parent_of(&self, span: &tracing::Span) -> bool {
            match self.remote_context() {
                Some(cx) => span.set_parent(cx).is_ok(),
                None => false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TP: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn traceparent_hex_matches_the_formatter_for_every_byte() {
        let mut out = "a longer value that must be replaced entirely".repeat(2);
        for b in 0..=255u8 {
            let tp = TraceParent {
                trace_id: [b; 16],
                span_id: [b.wrapping_add(1); 8],
                flags: b,
            };
            let want = format!(
                "00-{}-{}-{b:02x}",
                format!("{b:02x}").repeat(16),
                format!("{:02x}", b.wrapping_add(1)).repeat(8)
            );
            write_traceparent(&mut out, &tp);
            assert_eq!(out, want);
            assert_eq!(format_traceparent(&tp), want);
            assert_eq!(to_hex(&[b]), format!("{b:02x}"));
        }
    }

    #[test]
    fn parses_the_spec_example() {
        let tp = parse_traceparent(TP).expect("valid");
        assert_eq!(to_hex(&tp.trace_id), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(to_hex(&tp.span_id), "00f067aa0ba902b7");
        assert_eq!(tp.flags, 1);
        assert!(tp.sampled());
        assert_eq!(format_traceparent(&tp), TP);
    }

    #[test]
    fn accepts_valid_variants() {
        // Not sampled, other flag bits, future version with extra fields, surrounding whitespace.
        for v in [
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-ff",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds",
            " 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\t",
        ] {
            assert!(parse_traceparent(v).is_some(), "should accept {v:?}");
        }
        let future = parse_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-x")
            .expect("future version");
        assert_eq!(future.flags, 9);
    }

    #[test]
    fn rejects_invalid_forms() {
        for v in [
            "",
            "garbage",
            "\u{1F600}",
            // version ff is forbidden; non-hex or uppercase versions.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "0A-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // all-zero ids.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // uppercase / non-hex ids and flags.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473z-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            // wrong lengths and separators.
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47366-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b77-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            // a future version must still separate extra fields with '-'.
            "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
        ] {
            assert_eq!(parse_traceparent(v), None, "should reject {v:?}");
        }
    }

    fn md(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn metadata_round_trip_keeps_every_field() {
        let env = Envelope {
            thread_id: Some("t-1".into()),
            correlation_id: Some("c-9".into()),
            reply_to: Some("replies.a".into()),
            sender: Some("sensor".into()),
            ttl: Some(30),
            hop: Some(2),
            trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736".into()),
            span_id: Some("00f067aa0ba902b7".into()),
            trace_flags: Some(1),
            tracestate: Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7".into()),
        };
        let m = env.to_metadata();
        assert_eq!(m[TRACEPARENT], TP);
        assert_eq!(m[HOP], "2");
        assert_eq!(Envelope::from_metadata(&m), env);
    }

    #[test]
    fn empty_fields_are_not_written() {
        let env = Envelope {
            thread_id: Some(String::new()),
            sender: Some("a".into()),
            ..Envelope::default()
        };
        let m = env.to_metadata();
        assert_eq!(m, md(&[(SENDER, "a")]));
    }

    #[test]
    fn invalid_trace_context_reads_as_absent_and_drops_tracestate() {
        let m = md(&[
            (
                TRACEPARENT,
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            ),
            (TRACESTATE, "rojo=1"),
            (THREAD_ID, "t"),
            (TTL, "not-a-number"),
        ]);
        let env = Envelope::from_metadata(&m);
        assert_eq!(env.trace_id, None);
        assert_eq!(env.tracestate, None);
        assert_eq!(env.ttl, None);
        assert_eq!(env.thread_id.as_deref(), Some("t"));
    }

    #[test]
    fn write_removes_stale_trace_keys_and_keeps_foreign_keys() {
        let mut m = md(&[(TRACEPARENT, TP), (TRACESTATE, "a=b"), ("app.key", "v")]);
        Envelope::default().write_metadata(&mut m);
        assert_eq!(m, md(&[("app.key", "v")]));
    }

    #[test]
    fn oversized_tracestate_is_dropped() {
        let long = format!("k={}", "x".repeat(MAX_TRACESTATE_LEN));
        let env = Envelope::from_metadata(&md(&[(TRACEPARENT, TP), (TRACESTATE, &long)]));
        assert!(env.trace_id.is_some());
        assert_eq!(env.tracestate, None);
    }

    #[test]
    fn hand_set_invalid_ids_are_not_written() {
        let env = Envelope {
            trace_id: Some("XYZ".into()),
            span_id: Some("00f067aa0ba902b7".into()),
            ..Envelope::default()
        };
        assert_eq!(env.traceparent(), None);
        assert!(!env.to_metadata().contains_key(TRACEPARENT));
    }

    #[test]
    fn event_attach_and_read_back() {
        let mut ev = Event::default();
        let tp = parse_traceparent(TP).expect("valid");
        let mut env = Envelope::default();
        env.set_traceparent(&tp);
        env.attach_to_event(&mut ev);
        assert_eq!(Envelope::from_event(&ev).trace_parent(), Some(tp));
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const SPAN: &str = "00f067aa0ba902b7";

    #[test]
    fn upstream_bare_trace_keys_continue_the_trace_without_a_traceparent() {
        let m = md(&[
            (BARE_TRACE_ID, TRACE),
            (BARE_SPAN_ID, SPAN),
            (BARE_TRACE_FLAGS, "01"),
            ("sender", "sensor-agent"),
            ("thread_id", "t-7"),
            ("correlation_id", "c-1"),
            ("reply_to", "agent.sensor-agent.replies"),
        ]);
        let env = Envelope::from_metadata(&m);
        assert_eq!(env.traceparent().as_deref(), Some(TP));
        assert_eq!(env.sender.as_deref(), Some("sensor-agent"));
        assert_eq!(env.thread_id.as_deref(), Some("t-7"));
        assert_eq!(env.correlation_id.as_deref(), Some("c-1"));
        assert_eq!(env.reply_to.as_deref(), Some("agent.sensor-agent.replies"));
        assert_eq!(trace_parent_of(&m), parse_traceparent(TP));
        // Written back in W3C form only: the bare keys are read, never produced.
        let out = env.to_metadata();
        assert_eq!(out[TRACEPARENT], TP);
        assert!(!out.contains_key(BARE_TRACE_ID));
        assert_eq!(out[SENDER], "sensor-agent");
        // Absent flags read as 00 (not sampled), as upstream's reader does.
        let unsampled = md(&[(BARE_TRACE_ID, TRACE), (BARE_SPAN_ID, SPAN)]);
        assert_eq!(trace_parent_of(&unsampled).map(|tp| tp.flags), Some(0));
    }

    #[test]
    fn prefixed_and_w3c_keys_win_over_bare_ones() {
        let other = "11111111111111111111111111111111";
        let m = md(&[
            (TRACEPARENT, TP),
            (BARE_TRACE_ID, other),
            (BARE_SPAN_ID, SPAN),
            (SENDER, "native"),
            ("sender", "bare"),
        ]);
        let env = Envelope::from_metadata(&m);
        assert_eq!(env.trace_id.as_deref(), Some(TRACE));
        assert_eq!(env.sender.as_deref(), Some("native"));
        // A present but invalid traceparent is the writer's word: no fallback to bare keys.
        let broken = md(&[
            (TRACEPARENT, "garbage"),
            (BARE_TRACE_ID, TRACE),
            (BARE_SPAN_ID, SPAN),
        ]);
        assert_eq!(trace_parent_of(&broken), None);
        assert_eq!(Envelope::from_metadata(&broken).trace_id, None);
    }

    #[test]
    fn invalid_bare_trace_keys_are_ignored() {
        for (t, s, f) in [
            ("4BF92F3577B34DA6A3CE929D0E0E4736", SPAN, Some("01")),
            (TRACE, "00F067AA0BA902B7", Some("01")),
            ("00000000000000000000000000000000", SPAN, Some("01")),
            (TRACE, "0000000000000000", Some("01")),
            ("4bf92f3577b34da6a3ce929d0e0e473", SPAN, Some("01")),
            (TRACE, "00f067aa0ba902b77", Some("01")),
            (TRACE, SPAN, Some("1")),
            (TRACE, SPAN, Some("0x")),
            (TRACE, SPAN, Some("")),
            ("", SPAN, Some("01")),
            ("\u{1F600}", SPAN, None),
            (TRACE, "zzzzzzzzzzzzzzzz", None),
        ] {
            let mut m = md(&[(BARE_TRACE_ID, t), (BARE_SPAN_ID, s), (TRACESTATE, "a=b")]);
            if let Some(f) = f {
                m.insert(BARE_TRACE_FLAGS.into(), f.into());
            }
            assert_eq!(trace_parent_of(&m), None, "should ignore {t:?} {s:?} {f:?}");
            let env = Envelope::from_metadata(&m);
            assert_eq!((env.trace_id, env.tracestate), (None, None));
        }
        // Only one of the two ids: nothing.
        assert_eq!(trace_parent_of(&md(&[(BARE_TRACE_ID, TRACE)])), None);
        assert_eq!(trace_parent_of(&md(&[(BARE_SPAN_ID, SPAN)])), None);
    }

    #[cfg(feature = "runtime")]
    #[test]
    fn remote_parent_reads_bare_keys_as_the_bridge_does() {
        use opentelemetry::trace::TraceContextExt;
        let m = md(&[
            (BARE_TRACE_ID, TRACE),
            (BARE_SPAN_ID, SPAN),
            (BARE_TRACE_FLAGS, "01"),
            (TRACESTATE, "a=b"),
        ]);
        let cx = Envelope::remote_parent(&m).expect("parent from bare keys");
        let span = cx.span();
        let sc = span.span_context();
        assert_eq!(to_hex(&sc.trace_id().to_bytes()), TRACE);
        assert_eq!(to_hex(&sc.span_id().to_bytes()), SPAN);
        assert!(sc.is_sampled() && sc.is_remote());
        // tracestate travels only with a traceparent.
        assert_eq!(sc.trace_state().header(), "");
        assert!(Envelope::remote_parent(&md(&[(BARE_TRACE_ID, TRACE)])).is_none());
    }
}
