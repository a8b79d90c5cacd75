//! The sidecar's own metrics, rendered as Prometheus text on `/metrics`.
//!
//! Counters are keyed by name and label set; updates happen per request or batch, never per
//! span, so a mutex-protected map costs nothing that matters.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::memory::MemoryTracker;

type Labels = Vec<(&'static str, String)>;

/// Upper bounds of the batch-size histogram buckets, in spans.
const BATCH_BUCKETS: [f64; 8] = [1.0, 10.0, 100.0, 500.0, 1000.0, 5000.0, 10000.0, 50000.0];

#[derive(Default)]
struct Histogram {
    buckets: [u64; BATCH_BUCKETS.len()],
    count: u64,
    sum: f64,
}

struct Help {
    kind: &'static str,
    text: &'static str,
}

fn help(name: &str) -> Help {
    let (kind, text) = match name {
        "loom_sidecar_receiver_accepted_spans_total" => {
            ("counter", "Spans accepted by a receiver.")
        }
        "loom_sidecar_receiver_refused_spans_total" => (
            "counter",
            "Spans refused by a receiver (memory limit, queue full, bad request).",
        ),
        "loom_sidecar_sampler_dropped_spans_total" => (
            "counter",
            "Spans dropped by the sampler, per rule (`default` when no rule matched).",
        ),
        "loom_sidecar_sampler_kept_spans_total" => {
            ("counter", "Spans kept by the sampler, per rule.")
        }
        "loom_sidecar_exporter_sent_spans_total" => ("counter", "Spans an exporter delivered."),
        "loom_sidecar_exporter_send_failed_spans_total" => {
            ("counter", "Spans an exporter gave up on, by reason.")
        }
        "loom_sidecar_exporter_rejected_spans_total" => (
            "counter",
            "Spans a backend reported as rejected in partial_success.",
        ),
        "loom_sidecar_exporter_retries_total" => (
            "counter",
            "Export attempts retried after a retryable failure.",
        ),
        "loom_sidecar_exporter_queue_size" => (
            "gauge",
            "Batches (in memory) or records (on disk) waiting in an exporter's sending queue.",
        ),
        "loom_sidecar_exporter_queue_bytes" => {
            ("gauge", "Bytes of an exporter's persistent queue files.")
        }
        "loom_sidecar_exporter_queue_corrupt_records_total" => (
            "counter",
            "Damaged records found in a persistent queue (skipped with the rest of their segment).",
        ),
        "loom_sidecar_exporter_queue_replayed_records_total" => (
            "counter",
            "Records found in a persistent queue at start, to be sent again.",
        ),
        "loom_sidecar_batch_size" => ("histogram", "Spans per batch sent to the exporters."),
        "loom_sidecar_memory_in_use_bytes" => ("gauge", "Bytes of span data held by the pipeline."),
        "loom_sidecar_process_rss_bytes" => ("gauge", "Resident set size of the sidecar process."),
        _ => ("counter", ""),
    };
    Help { kind, text }
}

/// The registry. Cheap to share (`Arc`).
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(&'static str, Labels), u64>>,
    gauges: Mutex<BTreeMap<(&'static str, Labels), i64>>,
    batch_sizes: Mutex<Histogram>,
    memory: Mutex<Option<Arc<MemoryTracker>>>,
}

impl Metrics {
    pub fn new() -> Arc<Metrics> {
        Arc::new(Metrics::default())
    }

    pub fn attach_memory(&self, tracker: Arc<MemoryTracker>) {
        *self.memory.lock() = Some(tracker);
    }

    pub fn add(&self, name: &'static str, labels: &[(&'static str, &str)], v: u64) {
        if v == 0 {
            return;
        }
        let key = (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        );
        *self.counters.lock().entry(key).or_insert(0) += v;
    }

    pub fn set(&self, name: &'static str, labels: &[(&'static str, &str)], v: i64) {
        let key = (
            name,
            labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
        );
        self.gauges.lock().insert(key, v);
    }

    /// The current value of a counter (0 when never incremented); for tests and logs.
    pub fn get(&self, name: &'static str, labels: &[(&'static str, &str)]) -> u64 {
        let key = (
            name,
            labels
                .iter()
                .map(|(k, v)| (*k, (*v).to_owned()))
                .collect::<Labels>(),
        );
        self.counters.lock().get(&key).copied().unwrap_or(0)
    }

    pub fn observe_batch(&self, spans: usize) {
        let mut h = self.batch_sizes.lock();
        for (i, le) in BATCH_BUCKETS.iter().enumerate() {
            if spans as f64 <= *le {
                h.buckets[i] += 1;
            }
        }
        h.count += 1;
        h.sum += spans as f64;
    }

    /// Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let mut last = "";
        let mut header = |out: &mut String, name: &'static str| {
            if name != last {
                let h = help(name);
                let _ = writeln!(out, "# HELP {name} {}", h.text);
                let _ = writeln!(out, "# TYPE {name} {}", h.kind);
                last = name;
            }
        };
        for ((name, labels), v) in self.counters.lock().iter() {
            header(&mut out, name);
            let _ = writeln!(out, "{name}{} {v}", fmt_labels(labels));
        }
        for ((name, labels), v) in self.gauges.lock().iter() {
            header(&mut out, name);
            let _ = writeln!(out, "{name}{} {v}", fmt_labels(labels));
        }
        if let Some(mem) = self.memory.lock().as_ref() {
            header(&mut out, "loom_sidecar_memory_in_use_bytes");
            let _ = writeln!(out, "loom_sidecar_memory_in_use_bytes {}", mem.in_use());
            mem.sample_rss();
            header(&mut out, "loom_sidecar_process_rss_bytes");
            let _ = writeln!(out, "loom_sidecar_process_rss_bytes {}", mem.rss());
        }
        let h = self.batch_sizes.lock();
        header(&mut out, "loom_sidecar_batch_size");
        for (i, le) in BATCH_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "loom_sidecar_batch_size_bucket{{le=\"{le}\"}} {}",
                h.buckets[i]
            );
        }
        let _ = writeln!(
            out,
            "loom_sidecar_batch_size_bucket{{le=\"+Inf\"}} {}",
            h.count
        );
        let _ = writeln!(out, "loom_sidecar_batch_size_sum {}", h.sum);
        let _ = writeln!(out, "loom_sidecar_batch_size_count {}", h.count);
        out
    }
}

fn fmt_labels(labels: &Labels) -> String {
    if labels.is_empty() {
        return String::new();
    }
    let inner: Vec<String> = labels
        .iter()
        .map(|(k, v)| {
            let v = v
                .replace('\\', "\\\\")
                .replace('"', "\\\"")
                .replace('\n', "\\n");
            format!("{k}=\"{v}\"")
        })
        .collect();
    format!("{{{}}}", inner.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_histogram_and_escapes_labels() {
        let m = Metrics::new();
        m.add(
            "loom_sidecar_receiver_accepted_spans_total",
            &[("receiver", "otlp"), ("transport", "grpc")],
            5,
        );
        m.add(
            "loom_sidecar_receiver_accepted_spans_total",
            &[("receiver", "otlp"), ("transport", "grpc")],
            2,
        );
        m.add(
            "loom_sidecar_exporter_send_failed_spans_total",
            &[("exporter", "otlp"), ("reason", "a\"b")],
            1,
        );
        m.observe_batch(7);
        let text = m.render();
        assert!(text.contains("loom_sidecar_receiver_accepted_spans_total{receiver=\"otlp\",transport=\"grpc\"} 7"), "{text}");
        assert!(text.contains("reason=\"a\\\"b\""), "{text}");
        assert!(
            text.contains("loom_sidecar_batch_size_bucket{le=\"10\"} 1"),
            "{text}"
        );
        assert!(text.contains("# TYPE loom_sidecar_batch_size histogram"));
        assert_eq!(
            m.get(
                "loom_sidecar_receiver_accepted_spans_total",
                &[("receiver", "otlp"), ("transport", "grpc")]
            ),
            7
        );
    }
}
