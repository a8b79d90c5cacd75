//! The compact record a sampled hot-path span keeps instead of an SDK span.
//!
//! It becomes `SpanData` only on the span sink's export thread.

use std::time::SystemTime;

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_sdk::trace::{SpanData, SpanEvents, SpanLinks};

/// The sources of [`super::event_span_attributes`]: the strings those attributes are built from,
/// copied into one buffer. On the publishing thread this is a few copies (no allocation for a
/// usual event) where the `KeyValue`s cost seven to eleven `String`s; the attributes are built
/// from it on the export thread, in the same order and with the same values.
#[derive(Debug, Clone)]
pub(crate) struct EventFields {
    buf: Buf,
    /// End offsets in `buf` of each [`Field`], in declaration order; an absent value is an empty
    /// range.
    ends: [u32; Field::COUNT],
    operation: &'static str,
    /// `loom.agent.id` came from the caller (the bridge) and goes first, even when empty; else
    /// it is the event's sender, last and only when non-empty, as the envelope keys are.
    agent_given: bool,
}

/// Bytes kept inline: a usual event's topic, UUID, type and sender fit. Allocating the buffer
/// instead cost more than it saves: the export thread frees it, and glibc's free of another
/// thread's chunk takes that thread's arena lock, which the publisher then waits on (profiled:
/// a third of a sampled publish in malloc/free and futex wake-ups).
const INLINE: usize = 160;

#[derive(Debug, Clone)]
enum Buf {
    Inline { len: usize, bytes: [u8; INLINE] },
    Heap(String),
}

impl Buf {
    fn from_parts(parts: &[&str]) -> Buf {
        let total: usize = parts.iter().map(|p| p.len()).sum();
        if total > INLINE {
            return Buf::Heap(parts.concat());
        }
        let mut bytes = [0u8; INLINE];
        let mut len = 0;
        for p in parts {
            bytes[len..len + p.len()].copy_from_slice(p.as_bytes());
            len += p.len();
        }
        Buf::Inline { len, bytes }
    }

    /// `start..end` of the concatenation; whole parts only, so always UTF-8 (empty if not).
    fn get(&self, start: usize, end: usize) -> &str {
        match self {
            Buf::Inline { len, bytes } => bytes
                .get(start..end.min(*len))
                .and_then(|b| std::str::from_utf8(b).ok())
                .unwrap_or_default(),
            Buf::Heap(s) => s.get(start..end).unwrap_or_default(),
        }
    }
}

#[derive(Clone, Copy)]
enum Field {
    Topic,
    Id,
    Type,
    Thread,
    Correlation,
    Agent,
}

impl Field {
    const COUNT: usize = 6;
}

impl EventFields {
    pub(crate) fn new(
        topic: &str,
        event: &crate::proto::Event,
        agent: Option<&str>,
        operation: &'static str,
    ) -> EventFields {
        use crate::envelope::{CORRELATION_ID, SENDER, THREAD_ID};
        let meta = |key: &str| event.metadata.get(key).map(String::as_str).unwrap_or("");
        let agent_value = match agent {
            Some(agent) => agent,
            None => meta(SENDER),
        };
        let values = [
            topic,
            event.id.as_str(),
            event.r#type.as_str(),
            meta(THREAD_ID),
            meta(CORRELATION_ID),
            agent_value,
        ];
        let mut ends = [0u32; Field::COUNT];
        let mut at = 0usize;
        for (end, value) in ends.iter_mut().zip(values) {
            at += value.len();
            // Event strings are bounded far below 4 GiB by the bridge's payload and metadata
            // limits; saturating keeps a pathological one from wrapping into another field.
            *end = u32::try_from(at).unwrap_or(u32::MAX);
        }
        let buf = Buf::from_parts(&values);
        EventFields {
            buf,
            ends,
            operation,
            agent_given: agent.is_some(),
        }
    }

    fn get(&self, field: Field) -> &str {
        let i = field as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.buf.get(start, self.ends[i] as usize)
    }

    /// The attributes, in the order docs/contracts.md §5 lists them.
    pub(crate) fn key_values(&self) -> Vec<KeyValue> {
        let mut attrs = Vec::with_capacity(11);
        let topic = self.get(Field::Topic);
        let id = self.get(Field::Id);
        if self.agent_given {
            attrs.push(KeyValue::new(
                "loom.agent.id",
                self.get(Field::Agent).to_owned(),
            ));
        }
        attrs.extend([
            KeyValue::new("loom.topic", topic.to_owned()),
            KeyValue::new("loom.event.id", id.to_owned()),
            KeyValue::new("messaging.system", "loom"),
            KeyValue::new("messaging.destination.name", topic.to_owned()),
            KeyValue::new("messaging.message.id", id.to_owned()),
            KeyValue::new("messaging.operation.type", self.operation),
        ]);
        let mut optional = |key: &'static str, field: Field| {
            let v = self.get(field);
            if !v.is_empty() {
                attrs.push(KeyValue::new(key, v.to_owned()));
            }
        };
        optional("loom.event.type", Field::Type);
        optional("loom.thread_id", Field::Thread);
        optional("loom.correlation_id", Field::Correlation);
        if !self.agent_given {
            optional("loom.agent.id", Field::Agent);
        }
        attrs
    }
}

/// A recorded hot-path span: what the SDK's `SpanData` would hold, minus what only the export
/// thread needs to build (attribute `KeyValue`s, events, links, status).
#[derive(Debug)]
pub(crate) struct SpanRecord {
    pub(crate) context: SpanContext,
    pub(crate) parent_span_id: SpanId,
    pub(crate) parent_is_remote: bool,
    pub(crate) name: &'static str,
    pub(crate) kind: SpanKind,
    pub(crate) start: SystemTime,
    pub(crate) end: SystemTime,
    /// The sampler's attributes and any set one by one, in the order they came.
    pub(crate) attributes: Vec<KeyValue>,
    pub(crate) event: Option<EventFields>,
    /// Index into the sink's scopes.
    pub(crate) scope: u32,
}

impl SpanRecord {
    /// The `SpanData` the SDK would have built for this span: same fields, status unset, no
    /// events or links (hot paths add none).
    pub(crate) fn into_span_data(self, scopes: &[InstrumentationScope]) -> SpanData {
        let this = self;
        let mut attributes = this.attributes;
        if let Some(event) = &this.event {
            attributes.extend(event.key_values());
        }
        SpanData {
            span_context: this.context,
            parent_span_id: this.parent_span_id,
            parent_span_is_remote: this.parent_is_remote,
            span_kind: this.kind,
            name: this.name.into(),
            start_time: this.start,
            end_time: this.end,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status: Status::Unset,
            // Registered before any record names it; the default is unreachable in practice.
            instrumentation_scope: scopes.get(this.scope as usize).cloned().unwrap_or_default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn event(meta: &[(&str, &str)], ty: &str) -> crate::proto::Event {
        crate::proto::Event {
            id: "ev-1".into(),
            r#type: ty.into(),
            metadata: meta
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect::<HashMap<_, _>>(),
            ..Default::default()
        }
    }

    fn pairs(kvs: Vec<KeyValue>) -> Vec<(String, String)> {
        kvs.into_iter()
            .map(|kv| (kv.key.to_string(), kv.value.as_str().into_owned()))
            .collect()
    }

    #[test]
    fn fields_rebuild_the_attributes_of_every_shape() {
        let full = [
            ("loom.sender", "sensor"),
            ("loom.thread_id", "t-1"),
            ("loom.correlation_id", "c-1"),
        ];
        let cases = [
            (event(&[], ""), None, "send", 6),
            (event(&full, "reading"), None, "send", 10),
            (event(&full, "reading"), Some("proc"), "receive", 10),
            (event(&[("loom.sender", "")], "x"), None, "send", 7),
            (event(&[], ""), Some(""), "send", 7),
        ];
        for (ev, agent, op, n) in cases {
            let got = pairs(EventFields::new("a.b", &ev, agent, op).key_values());
            assert_eq!(got.len(), n, "{got:?}");
            let want = pairs(super::super::event_span_attributes("a.b", &ev, agent, op));
            assert_eq!(got, want);
        }
    }

    #[test]
    fn long_fields_spill_to_the_heap_intact() {
        let long = "x".repeat(300);
        let ev = event(
            &[("loom.sender", &long), ("loom.thread_id", "ü-1")],
            "reading",
        );
        let got = pairs(EventFields::new("a.b", &ev, None, "send").key_values());
        let want = pairs(super::super::event_span_attributes(
            "a.b", &ev, None, "send",
        ));
        assert_eq!(got, want);
        assert!(got.iter().any(|p| p.1 == long));
        assert!(got.iter().any(|p| p.1 == "ü-1"));
    }

    #[test]
    fn sender_goes_last_and_a_given_agent_first() {
        let ev = event(&[("loom.sender", "sensor"), ("loom.thread_id", "t")], "");
        let from_sender = pairs(EventFields::new("a", &ev, None, "send").key_values());
        assert_eq!(
            from_sender.last().map(|p| p.0.as_str()),
            Some("loom.agent.id")
        );
        assert_eq!(from_sender.last().map(|p| p.1.as_str()), Some("sensor"));
        let given = pairs(EventFields::new("a", &ev, Some("proc"), "send").key_values());
        assert_eq!(given[0], ("loom.agent.id".to_owned(), "proc".to_owned()));
        assert_eq!(given.iter().filter(|p| p.0 == "loom.agent.id").count(), 1);
    }
}
