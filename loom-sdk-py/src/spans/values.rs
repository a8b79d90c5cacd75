//! Attribute maps with the OpenTelemetry Python SDK's rules (`BoundedAttributes`), stored as OTLP.
//!
//! A native span keeps its attributes already in their wire form, so ending it builds nothing.
//! What goes in must come out as the SDK would have exported it: same cleaning (string
//! truncation; sequences, mappings and `str()` of other objects through the SDK's own cleaner),
//! same key rules, same order (a re-set key moves to the end), same eviction of the oldest pair
//! when full, and the same dropped count. Values are converted before the span's lock is taken:
//! the SDK's cleaner may run arbitrary `__str__` code.

use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyBytes, PyDict, PyFloat, PyInt, PyString};

use crate::span_export::any_value as encode_value;

/// One converted `key = value`; `None` for a value the exporter's encoder would leave out (the
/// SDK keeps it in the span, taking a slot, and its encoder skips it).
pub(crate) type Entry = (String, Option<AnyValue>);

/// Attributes converted and ready to apply, with how many the SDK would have refused outright.
#[derive(Debug, Default)]
pub(crate) struct Prepared {
    pub(crate) entries: Vec<Entry>,
    pub(crate) refused: u32,
}

/// A bounded attribute map in insertion order, as `BoundedAttributes` keeps it.
#[derive(Debug, Default, Clone)]
pub(crate) struct Attrs {
    list: Vec<(String, Option<AnyValue>)>,
    pub(crate) dropped: u32,
}

impl Attrs {
    /// `BoundedAttributes._setitem_locked` for each entry: a present key moves to the end; when
    /// full, the oldest pair makes room and counts as dropped.
    pub(crate) fn apply(&mut self, max: Option<usize>, prepared: Prepared) {
        self.dropped = self.dropped.saturating_add(prepared.refused);
        for (key, value) in prepared.entries {
            if max == Some(0) {
                self.dropped = self.dropped.saturating_add(1);
                continue;
            }
            if let Some(i) = self.list.iter().position(|(k, _)| *k == key) {
                self.list.remove(i);
            }
            if let Some(max) = max {
                if self.list.len() >= max {
                    self.list.remove(0);
                    self.dropped = self.dropped.saturating_add(1);
                }
            }
            self.list.push((key, value));
        }
    }

    /// The OTLP attributes, leaving out what the encoder cannot encode.
    pub(crate) fn into_otlp(self) -> Vec<KeyValue> {
        self.list
            .into_iter()
            .filter_map(|(key, value)| {
                value.map(|v| KeyValue {
                    key,
                    value: Some(v),
                    ..KeyValue::default()
                })
            })
            .collect()
    }
}

/// The limits of one attribute map and the SDK's value cleaner.
pub(crate) struct Rules<'a, 'py> {
    pub(crate) max_len: Option<usize>,
    /// `opentelemetry.attributes._clean_attribute_value`.
    pub(crate) clean: &'a Bound<'py, PyAny>,
}

impl<'py> Rules<'_, 'py> {
    /// `attrs[key] = value` (`BoundedAttributes.__setitem__`): a key that is not a non-empty str
    /// is refused.
    pub(crate) fn one(
        &self,
        key: &Bound<'py, PyAny>,
        value: &Bound<'py, PyAny>,
    ) -> PyResult<Prepared> {
        let mut out = Prepared::default();
        match key.cast::<PyString>() {
            Ok(k) if !k.to_cow()?.is_empty() => {
                out.entries
                    .push((k.to_cow()?.into_owned(), self.value(value)?));
            }
            _ => out.refused = 1,
        }
        Ok(out)
    }

    /// `BoundedAttributes._set_items` (initial attributes, `set_attributes`, an event's or a
    /// link's attributes).
    pub(crate) fn items(&self, items: &Bound<'py, PyAny>) -> PyResult<Prepared> {
        let mut out = Prepared::default();
        if items.is_none() {
            return Ok(out);
        }
        // The common case, a dict with non-empty str keys, in one pass with no mapping-level
        // cleaning; any other key sends the whole mapping through the SDK's cleaner, which drops
        // or stringifies it.
        if let Ok(d) = items.cast::<PyDict>() {
            out.entries.reserve(d.len());
            let mut plain = true;
            for (k, v) in d.iter() {
                match k.cast::<PyString>() {
                    Ok(k) if !k.to_cow()?.is_empty() => {
                        out.entries
                            .push((k.to_cow()?.into_owned(), self.value(&v)?));
                    }
                    _ => {
                        plain = false;
                        break;
                    }
                }
            }
            if plain {
                return Ok(out);
            }
            out.entries.clear();
        }
        let given = items.len()?;
        let cleaned = self.clean.call1((items, self.max_len))?;
        out.refused = u32::try_from(given.saturating_sub(cleaned.len()?)).unwrap_or(u32::MAX);
        for kv in cleaned
            .call_method0(pyo3::intern!(items.py(), "items"))?
            .try_iter()?
        {
            let (k, v): (Bound<'py, PyAny>, Bound<'py, PyAny>) = kv?.extract()?;
            let one = self.one(&k, &v)?;
            out.refused = out.refused.saturating_add(one.refused);
            out.entries.extend(one.entries);
        }
        Ok(out)
    }

    /// A string value as the SDK stores it (truncated to the length limit).
    pub(crate) fn string(&self, s: String) -> AnyValue {
        let s = match self.max_len {
            Some(n) if s.chars().nth(n).is_some() => s.chars().take(n).collect(),
            _ => s,
        };
        AnyValue {
            value: Some(any_value::Value::StringValue(s)),
        }
    }

    /// A value as the SDK stores it (cleaned) and its exporter encodes it.
    fn value(&self, v: &Bound<'py, PyAny>) -> PyResult<Option<AnyValue>> {
        if let Ok(s) = v.cast::<PyString>() {
            return Ok(Some(self.string(s.to_cow()?.into_owned())));
        }
        if v.is_none()
            || v.is_instance_of::<PyBool>()
            || v.is_instance_of::<PyInt>()
            || v.is_instance_of::<PyFloat>()
            || v.is_instance_of::<PyBytes>()
        {
            return Ok(encode_value(v));
        }
        let cleaned = self.clean.call1((v, self.max_len))?;
        Ok(encode_value(&cleaned))
    }
}
