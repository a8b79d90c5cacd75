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

/// Every metric the sidecar exports. Names, kinds and help text are exhaustive matches, so a
/// new metric cannot ship without its HELP/TYPE lines, and a typo is a compile error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    ReceiverAcceptedSpans,
    ReceiverRefusedSpans,
    SamplerDroppedSpans,
    SamplerKeptSpans,
    ExporterSentSpans,
    ExporterSendFailedSpans,
    ExporterRejectedSpans,
    ExporterRetries,
    ExporterQueueSize,
    ExporterQueueBytes,
    ExporterQueueCorruptRecords,
    ExporterQueueReplayedRecords,
    BatchSize,
    MemoryInUseBytes,
    ProcessRssBytes,
    TraceStoreEvictedTraces,
    TraceStoreRefusedSpans,
    TraceStoreTraces,
    TraceStoreBytes,
    TailSamplingPolicyDecisions,
    TailSamplingTraces,
    TailSamplingOverflowTraces,
    TailSamplingLateSpans,
    TailSamplingForwardFailedSpans,
    TailSamplingBufferedTraces,
    TailSamplingBufferedBytes,
    LoadBalancingRoutedSpans,
    LoadBalancingBackends,
    LoadBalancingResolveFailures,
    ConfigReloads,
    ConfigReloadLastTimestamp,
    ConfigReloadLastSuccess,
}

/// A metric's Prometheus type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

impl Metric {
    pub const ALL: [Metric; 32] = [
        Metric::ReceiverAcceptedSpans,
        Metric::ReceiverRefusedSpans,
        Metric::SamplerDroppedSpans,
        Metric::SamplerKeptSpans,
        Metric::ExporterSentSpans,
        Metric::ExporterSendFailedSpans,
        Metric::ExporterRejectedSpans,
        Metric::ExporterRetries,
        Metric::ExporterQueueSize,
        Metric::ExporterQueueBytes,
        Metric::ExporterQueueCorruptRecords,
        Metric::ExporterQueueReplayedRecords,
        Metric::BatchSize,
        Metric::MemoryInUseBytes,
        Metric::ProcessRssBytes,
        Metric::TraceStoreEvictedTraces,
        Metric::TraceStoreRefusedSpans,
        Metric::TraceStoreTraces,
        Metric::TraceStoreBytes,
        Metric::TailSamplingPolicyDecisions,
        Metric::TailSamplingTraces,
        Metric::TailSamplingOverflowTraces,
        Metric::TailSamplingLateSpans,
        Metric::TailSamplingForwardFailedSpans,
        Metric::TailSamplingBufferedTraces,
        Metric::TailSamplingBufferedBytes,
        Metric::LoadBalancingRoutedSpans,
        Metric::LoadBalancingBackends,
        Metric::LoadBalancingResolveFailures,
        Metric::ConfigReloads,
        Metric::ConfigReloadLastTimestamp,
        Metric::ConfigReloadLastSuccess,
    ];

    /// The exported name (dashboards and tests read these: never rename one).
    pub fn name(self) -> &'static str {
        match self {
            Metric::ReceiverAcceptedSpans => "loom_sidecar_receiver_accepted_spans_total",
            Metric::ReceiverRefusedSpans => "loom_sidecar_receiver_refused_spans_total",
            Metric::SamplerDroppedSpans => "loom_sidecar_sampler_dropped_spans_total",
            Metric::SamplerKeptSpans => "loom_sidecar_sampler_kept_spans_total",
            Metric::ExporterSentSpans => "loom_sidecar_exporter_sent_spans_total",
            Metric::ExporterSendFailedSpans => "loom_sidecar_exporter_send_failed_spans_total",
            Metric::ExporterRejectedSpans => "loom_sidecar_exporter_rejected_spans_total",
            Metric::ExporterRetries => "loom_sidecar_exporter_retries_total",
            Metric::ExporterQueueSize => "loom_sidecar_exporter_queue_size",
            Metric::ExporterQueueBytes => "loom_sidecar_exporter_queue_bytes",
            Metric::ExporterQueueCorruptRecords => {
                "loom_sidecar_exporter_queue_corrupt_records_total"
            }
            Metric::ExporterQueueReplayedRecords => {
                "loom_sidecar_exporter_queue_replayed_records_total"
            }
            Metric::BatchSize => "loom_sidecar_batch_size",
            Metric::MemoryInUseBytes => "loom_sidecar_memory_in_use_bytes",
            Metric::ProcessRssBytes => "loom_sidecar_process_rss_bytes",
            Metric::TraceStoreEvictedTraces => "loom_sidecar_trace_store_evicted_traces_total",
            Metric::TraceStoreRefusedSpans => "loom_sidecar_trace_store_refused_spans_total",
            Metric::TraceStoreTraces => "loom_sidecar_trace_store_traces",
            Metric::TraceStoreBytes => "loom_sidecar_trace_store_bytes",
            Metric::TailSamplingPolicyDecisions => {
                "loom_sidecar_tail_sampling_policy_decisions_total"
            }
            Metric::TailSamplingTraces => "loom_sidecar_tail_sampling_traces_total",
            Metric::TailSamplingOverflowTraces => {
                "loom_sidecar_tail_sampling_overflow_traces_total"
            }
            Metric::TailSamplingLateSpans => "loom_sidecar_tail_sampling_late_spans_total",
            Metric::TailSamplingForwardFailedSpans => {
                "loom_sidecar_tail_sampling_forward_failed_spans_total"
            }
            Metric::TailSamplingBufferedTraces => "loom_sidecar_tail_sampling_buffered_traces",
            Metric::TailSamplingBufferedBytes => "loom_sidecar_tail_sampling_buffered_bytes",
            Metric::LoadBalancingRoutedSpans => "loom_sidecar_loadbalancing_routed_spans_total",
            Metric::LoadBalancingBackends => "loom_sidecar_loadbalancing_backends",
            Metric::LoadBalancingResolveFailures => {
                "loom_sidecar_loadbalancing_resolve_failures_total"
            }
            Metric::ConfigReloads => "loom_sidecar_config_reload_total",
            Metric::ConfigReloadLastTimestamp => {
                "loom_sidecar_config_reload_last_timestamp_seconds"
            }
            Metric::ConfigReloadLastSuccess => "loom_sidecar_config_reload_last_success",
        }
    }

    pub fn kind(self) -> Kind {
        match self {
            Metric::ReceiverAcceptedSpans
            | Metric::ReceiverRefusedSpans
            | Metric::SamplerDroppedSpans
            | Metric::SamplerKeptSpans
            | Metric::ExporterSentSpans
            | Metric::ExporterSendFailedSpans
            | Metric::ExporterRejectedSpans
            | Metric::ExporterRetries
            | Metric::ExporterQueueCorruptRecords
            | Metric::ExporterQueueReplayedRecords
            | Metric::TraceStoreEvictedTraces
            | Metric::TraceStoreRefusedSpans
            | Metric::TailSamplingPolicyDecisions
            | Metric::TailSamplingTraces
            | Metric::TailSamplingOverflowTraces
            | Metric::TailSamplingLateSpans
            | Metric::TailSamplingForwardFailedSpans
            | Metric::LoadBalancingRoutedSpans
            | Metric::LoadBalancingResolveFailures
            | Metric::ConfigReloads => Kind::Counter,
            Metric::ExporterQueueSize
            | Metric::ExporterQueueBytes
            | Metric::MemoryInUseBytes
            | Metric::ProcessRssBytes
            | Metric::TraceStoreTraces
            | Metric::TraceStoreBytes
            | Metric::TailSamplingBufferedTraces
            | Metric::TailSamplingBufferedBytes
            | Metric::LoadBalancingBackends
            | Metric::ConfigReloadLastTimestamp
            | Metric::ConfigReloadLastSuccess => Kind::Gauge,
            Metric::BatchSize => Kind::Histogram,
        }
    }

    pub fn help(self) -> &'static str {
        match self {
            Metric::ReceiverAcceptedSpans => "Spans accepted by a receiver.",
            Metric::ReceiverRefusedSpans => {
                "Spans refused by a receiver (memory limit, queue full, bad request)."
            }
            Metric::SamplerDroppedSpans => {
                "Spans dropped by the sampler, per rule (`default` when no rule matched)."
            }
            Metric::SamplerKeptSpans => "Spans kept by the sampler, per rule.",
            Metric::ExporterSentSpans => "Spans an exporter delivered.",
            Metric::ExporterSendFailedSpans => "Spans an exporter gave up on, by reason.",
            Metric::ExporterRejectedSpans => {
                "Spans a backend reported as rejected in partial_success."
            }
            Metric::ExporterRetries => "Export attempts retried after a retryable failure.",
            Metric::ExporterQueueSize => {
                "Batches (in memory) or records (on disk) waiting in an exporter's sending queue."
            }
            Metric::ExporterQueueBytes => "Bytes of an exporter's persistent queue files.",
            Metric::ExporterQueueCorruptRecords => {
                "Damaged records found in a persistent queue (skipped with the rest of their segment)."
            }
            Metric::ExporterQueueReplayedRecords => {
                "Records found in a persistent queue at start, to be sent again."
            }
            Metric::BatchSize => "Spans per batch sent to the exporters.",
            Metric::MemoryInUseBytes => "Bytes of span data held by the pipeline.",
            Metric::ProcessRssBytes => "Resident set size of the sidecar process.",
            Metric::TraceStoreEvictedTraces => {
                "Traces a trace_store evicted, by reason (max_bytes, max_traces, ttl)."
            }
            Metric::TraceStoreRefusedSpans => {
                "Spans a trace_store did not keep (trace_too_large, bad_trace_id)."
            }
            Metric::TraceStoreTraces => "Traces held by a trace_store.",
            Metric::TraceStoreBytes => "Bytes held by a trace_store (span bytes and index).",
            Metric::TailSamplingPolicyDecisions => "Traces each tail_sampling policy voted on, by verdict (sampled, not_sampled).",
            Metric::TailSamplingTraces => "Traces tail_sampling decided, by final verdict.",
            Metric::TailSamplingOverflowTraces => "Undecided traces tail_sampling let go before decision_wait, by reason (max_bytes, num_traces) and action (decided_early, dropped).",
            Metric::TailSamplingLateSpans => "Spans that arrived after their trace was decided and followed the cached verdict.",
            Metric::TailSamplingForwardFailedSpans => "Sampled spans the rest of the pipeline refused after tail_sampling, by reason.",
            Metric::TailSamplingBufferedTraces => "Undecided traces tail_sampling holds.",
            Metric::TailSamplingBufferedBytes => "Bytes of undecided spans tail_sampling holds (bounded by max_bytes).",
            Metric::LoadBalancingRoutedSpans => "Spans the loadbalancing exporter queued for a backend.",
            Metric::LoadBalancingBackends => "Backends in the loadbalancing exporter's ring.",
            Metric::LoadBalancingResolveFailures => "DNS look-ups of the loadbalancing resolver that failed (the last set is kept).",
            Metric::ConfigReloads => {
                "Configuration reloads (SIGHUP or file watch), by result (success, failed)."
            }
            Metric::ConfigReloadLastTimestamp => "Unix time of the last configuration reload.",
            Metric::ConfigReloadLastSuccess => {
                "1 when the last configuration reload was applied, 0 when it failed."
            }
        }
    }

    /// The metric of an exported name, for the string-named shim.
    pub fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }
}

// By name, so `/metrics` lists metrics in the same (alphabetical) order as before.
impl Ord for Metric {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.name().cmp(other.name())
    }
}

impl PartialOrd for Metric {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// The registry. Cheap to share (`Arc`).
#[derive(Default)]
pub struct Metrics {
    counters: Mutex<BTreeMap<(Metric, Labels), u64>>,
    gauges: Mutex<BTreeMap<(Metric, Labels), i64>>,
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

    /// Adds `v` to a counter.
    pub fn count(&self, metric: Metric, labels: &[(&'static str, &str)], v: u64) {
        debug_assert_eq!(metric.kind(), Kind::Counter, "{}", metric.name());
        if v == 0 {
            return;
        }
        *self.counters.lock().entry(key(metric, labels)).or_insert(0) += v;
    }

    /// Sets a gauge.
    pub fn gauge(&self, metric: Metric, labels: &[(&'static str, &str)], v: i64) {
        debug_assert_eq!(metric.kind(), Kind::Gauge, "{}", metric.name());
        self.gauges.lock().insert(key(metric, labels), v);
    }

    /// The current value of a counter (0 when never incremented); for tests and logs.
    pub fn counter(&self, metric: Metric, labels: &[(&'static str, &str)]) -> u64 {
        self.counters
            .lock()
            .get(&key(metric, labels))
            .copied()
            .unwrap_or(0)
    }

    /// The current value of a gauge (None when never set); for tests.
    pub fn gauge_value(&self, metric: Metric, labels: &[(&'static str, &str)]) -> Option<i64> {
        self.gauges.lock().get(&key(metric, labels)).copied()
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
        let mut last = None;
        let mut header = |out: &mut String, m: Metric| {
            if last != Some(m) {
                let name = m.name();
                let _ = writeln!(out, "# HELP {name} {}", m.help());
                let _ = writeln!(out, "# TYPE {name} {}", m.kind().as_str());
                last = Some(m);
            }
        };
        for ((m, labels), v) in self.counters.lock().iter() {
            header(&mut out, *m);
            let _ = writeln!(out, "{}{} {v}", m.name(), fmt_labels(labels));
        }
        for ((m, labels), v) in self.gauges.lock().iter() {
            header(&mut out, *m);
            let _ = writeln!(out, "{}{} {v}", m.name(), fmt_labels(labels));
        }
        if let Some(mem) = self.memory.lock().as_ref() {
            header(&mut out, Metric::MemoryInUseBytes);
            let _ = writeln!(out, "{} {}", Metric::MemoryInUseBytes.name(), mem.in_use());
            mem.sample_rss();
            header(&mut out, Metric::ProcessRssBytes);
            let _ = writeln!(out, "{} {}", Metric::ProcessRssBytes.name(), mem.rss());
        }
        let h = self.batch_sizes.lock();
        header(&mut out, Metric::BatchSize);
        let name = Metric::BatchSize.name();
        for (i, le) in BATCH_BUCKETS.iter().enumerate() {
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {}", h.buckets[i]);
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}", h.count);
        let _ = writeln!(out, "{name}_sum {}", h.sum);
        let _ = writeln!(out, "{name}_count {}", h.count);
        out
    }
}

fn key(metric: Metric, labels: &[(&'static str, &str)]) -> (Metric, Labels) {
    (
        metric,
        labels.iter().map(|(k, v)| (*k, (*v).to_owned())).collect(),
    )
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
        let grpc = [("receiver", "otlp"), ("transport", "grpc")];
        m.count(Metric::ReceiverAcceptedSpans, &grpc, 5);
        m.count(Metric::ReceiverAcceptedSpans, &grpc, 2);
        m.count(
            Metric::ExporterSendFailedSpans,
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
        assert_eq!(m.counter(Metric::ReceiverAcceptedSpans, &grpc), 7);
    }

    /// The exact text the string-keyed registry rendered before metrics were typed: Python
    /// tests and dashboards parse it, so names, order, HELP and TYPE lines must not move.
    #[test]
    fn text_output_is_unchanged() {
        let m = Metrics::new();
        m.count(
            Metric::SamplerKeptSpans,
            &[("processor", "sampler"), ("rule", "default")],
            3,
        );
        m.count(
            Metric::ReceiverAcceptedSpans,
            &[("receiver", "otlp"), ("transport", "http")],
            3,
        );
        m.count(Metric::ExporterSentSpans, &[("exporter", "debug")], 3);
        m.gauge(Metric::ExporterQueueSize, &[("exporter", "debug")], 0);
        m.observe_batch(3);
        let want = "\
# HELP loom_sidecar_exporter_sent_spans_total Spans an exporter delivered.
# TYPE loom_sidecar_exporter_sent_spans_total counter
loom_sidecar_exporter_sent_spans_total{exporter=\"debug\"} 3
# HELP loom_sidecar_receiver_accepted_spans_total Spans accepted by a receiver.
# TYPE loom_sidecar_receiver_accepted_spans_total counter
loom_sidecar_receiver_accepted_spans_total{receiver=\"otlp\",transport=\"http\"} 3
# HELP loom_sidecar_sampler_kept_spans_total Spans kept by the sampler, per rule.
# TYPE loom_sidecar_sampler_kept_spans_total counter
loom_sidecar_sampler_kept_spans_total{processor=\"sampler\",rule=\"default\"} 3
# HELP loom_sidecar_exporter_queue_size Batches (in memory) or records (on disk) waiting in an exporter's sending queue.
# TYPE loom_sidecar_exporter_queue_size gauge
loom_sidecar_exporter_queue_size{exporter=\"debug\"} 0
# HELP loom_sidecar_batch_size Spans per batch sent to the exporters.
# TYPE loom_sidecar_batch_size histogram
loom_sidecar_batch_size_bucket{le=\"1\"} 0
loom_sidecar_batch_size_bucket{le=\"10\"} 1
loom_sidecar_batch_size_bucket{le=\"100\"} 1
loom_sidecar_batch_size_bucket{le=\"500\"} 1
loom_sidecar_batch_size_bucket{le=\"1000\"} 1
loom_sidecar_batch_size_bucket{le=\"5000\"} 1
loom_sidecar_batch_size_bucket{le=\"10000\"} 1
loom_sidecar_batch_size_bucket{le=\"50000\"} 1
loom_sidecar_batch_size_bucket{le=\"+Inf\"} 1
loom_sidecar_batch_size_sum 3
loom_sidecar_batch_size_count 1
";
        assert_eq!(m.render(), want);
    }

    #[test]
    fn every_metric_has_a_unique_prefixed_name_and_help() {
        let mut names = std::collections::HashSet::new();
        for m in Metric::ALL {
            assert!(m.name().starts_with("loom_sidecar_"), "{m:?}");
            assert!(!m.help().is_empty(), "{m:?}");
            assert_eq!(
                m.kind() == Kind::Counter,
                m.name().ends_with("_total"),
                "{m:?}"
            );
            assert!(names.insert(m.name()), "{} twice", m.name());
            assert_eq!(Metric::from_name(m.name()), Some(m));
        }
    }
}
