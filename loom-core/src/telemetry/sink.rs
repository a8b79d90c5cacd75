//! The process's one bounded span queue, with the thread that exports it in batches.
//!
//! Hot-path records and SDK spans go in; batches of `SpanData` go to the wrapped exporter;
//! drops and failures are counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use opentelemetry::InstrumentationScope;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use parking_lot::{Condvar, Mutex};

use super::record::SpanRecord;

/// How long [`SpanSink::force_flush`] waits for the export thread.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one warning about drops or failed exports per this interval: a collector that is
/// down would otherwise log on every batch.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Queue and batch sizes, read like the SDK's `BatchConfig` from the standard variables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkConfig {
    /// `OTEL_BSP_MAX_QUEUE_SIZE` (2048): spans beyond it are dropped and counted.
    pub max_queue_size: usize,
    /// `OTEL_BSP_MAX_EXPORT_BATCH_SIZE` (512), never above the queue size.
    pub max_export_batch_size: usize,
    /// `OTEL_BSP_SCHEDULE_DELAY` (5000 ms): the longest a span waits while no batch fills.
    pub scheduled_delay: Duration,
}

impl Default for SinkConfig {
    /// The SDK's defaults, ignoring the environment.
    fn default() -> Self {
        use opentelemetry_sdk::trace::{
            OTEL_BSP_MAX_EXPORT_BATCH_SIZE_DEFAULT, OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT,
            OTEL_BSP_SCHEDULE_DELAY_DEFAULT,
        };
        SinkConfig {
            max_queue_size: OTEL_BSP_MAX_QUEUE_SIZE_DEFAULT,
            max_export_batch_size: OTEL_BSP_MAX_EXPORT_BATCH_SIZE_DEFAULT,
            scheduled_delay: OTEL_BSP_SCHEDULE_DELAY_DEFAULT,
        }
    }
}

impl SinkConfig {
    /// The defaults overridden by the `OTEL_BSP_*` variables that parse, as the SDK's batch
    /// processor reads them (an unparsable value is ignored, not an error, there too).
    pub fn from_env() -> SinkConfig {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> SinkConfig {
        use opentelemetry_sdk::trace::{
            OTEL_BSP_MAX_EXPORT_BATCH_SIZE, OTEL_BSP_MAX_QUEUE_SIZE, OTEL_BSP_SCHEDULE_DELAY,
        };
        let num = |k: &str| get(k).and_then(|v| v.trim().parse::<u64>().ok());
        let mut c = SinkConfig::default();
        if let Some(n) = num(OTEL_BSP_MAX_QUEUE_SIZE).and_then(|n| usize::try_from(n).ok()) {
            c.max_queue_size = n;
        }
        if let Some(n) = num(OTEL_BSP_MAX_EXPORT_BATCH_SIZE).and_then(|n| usize::try_from(n).ok()) {
            c.max_export_batch_size = n;
        }
        if let Some(ms) = num(OTEL_BSP_SCHEDULE_DELAY) {
            c.scheduled_delay = Duration::from_millis(ms);
        }
        c.normalised()
    }

    /// A queue of at least one span and batches no larger than the queue (the SDK caps them
    /// the same way), so a batch can always fill.
    fn normalised(mut self) -> SinkConfig {
        self.max_queue_size = self.max_queue_size.max(1);
        self.max_export_batch_size = self.max_export_batch_size.clamp(1, self.max_queue_size);
        self
    }
}

/// Counters of a [`SpanSink`], all since it was built.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    /// Spans handed to the exporter in batches that succeeded.
    pub exported: u64,
    /// Spans dropped because the queue was full (or the sink already shut down).
    pub dropped: u64,
    /// Spans in batches the exporter failed (after its own retries).
    pub export_failed: u64,
}

/// One queued span: a hot path's record, or an SDK span (tracing-opentelemetry and direct SDK
/// users) that already is `SpanData`. Both inline: the queue's slots are their storage, so a
/// recorded span allocates nothing that the export thread frees.
#[derive(Debug)]
pub(crate) enum Queued {
    Record(SpanRecord),
    Sdk(SpanData),
}

impl Queued {
    fn into_span_data(self, scopes: &[InstrumentationScope]) -> SpanData {
        match self {
            Queued::Record(r) => r.into_span_data(scopes),
            Queued::Sdk(d) => d,
        }
    }
}

#[derive(Debug)]
struct State {
    queue: VecDeque<Queued>,
    /// Spans the export thread has taken out of `queue` and not yet exported: they count
    /// against the bound, which holds for all spans in memory, not only those waiting.
    in_flight: usize,
    /// An empty queue with capacity, swapped in when the thread takes the queue's contents: a
    /// take is O(1) under the lock, and the publisher never waits for a batch to be copied.
    spare: VecDeque<Queued>,
    /// Set, under this lock, by the first shutdown: later pushes are dropped and counted, so
    /// whatever was accepted is in the queue the export thread drains last.
    closed: bool,
    flush_waiters: Vec<mpsc::SyncSender<OTelSdkResult>>,
    shutdown_waiter: Option<mpsc::SyncSender<OTelSdkResult>>,
    resource: Option<Resource>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    config: SinkConfig,
    /// Mirror of `State::closed` for the hot path, which starts no span on a closed sink (as the
    /// SDK starts none on a shut-down provider).
    closed: AtomicBool,
    exported: AtomicU64,
    dropped: AtomicU64,
    export_failed: AtomicU64,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Instrumentation scopes of the hot-path layers recording into this sink; records carry
    /// an index. Only grows (a layer per scope name, registered once each).
    scopes: Mutex<Vec<InstrumentationScope>>,
}

/// A bounded span queue with its export thread, shared by every span of the process.
///
/// It is the provider's span processor (`SpanProcessor`, so `tracing` and SDK spans enter it
/// as `SpanData`), and [`super::LoomTracer`] pushes hot-path records into it directly: those
/// become `SpanData` only on the export thread. Batches go to the wrapped exporter (the official
/// OTLP exporter in production) when `max_export_batch_size` spans are queued or every
/// `scheduled_delay`. A full queue drops the new span and counts it ([`SpanSink::stats`]);
/// drops and failed exports are logged at most every 10 s. Flush and shutdown export all that
/// is queued. Clones share the queue.
#[derive(Debug, Clone)]
pub struct SpanSink {
    shared: Arc<Shared>,
}

/// The sink could not start its export thread.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the span export thread: {0}")]
pub struct SinkError(#[from] std::io::Error);

impl SpanSink {
    /// Starts the export thread; `exporter` lives on it. The thread runs until
    /// [`shutdown_with_timeout`](Self::shutdown_with_timeout), which a provider the sink is
    /// installed in calls when it shuts down or is dropped.
    pub fn new<E>(exporter: E, config: SinkConfig) -> Result<SpanSink, SinkError>
    where
        E: SpanExporter + 'static,
    {
        let config = config.normalised();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                // Grows to the bound only if it is ever that full.
                queue: VecDeque::with_capacity(config.max_export_batch_size),
                in_flight: 0,
                spare: VecDeque::new(),
                closed: false,
                flush_waiters: Vec::new(),
                shutdown_waiter: None,
                resource: None,
            }),
            wake: Condvar::new(),
            config,
            closed: AtomicBool::new(false),
            exported: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            export_failed: AtomicU64::new(0),
            thread: Mutex::new(None),
            scopes: Mutex::new(Vec::new()),
        });
        let for_thread = shared.clone();
        let handle = std::thread::Builder::new()
            .name("loom-span-export".into())
            .spawn(move || export_loop(&for_thread, exporter))?;
        *shared.thread.lock() = Some(handle);
        Ok(SpanSink { shared })
    }

    pub fn config(&self) -> SinkConfig {
        self.shared.config
    }

    /// Exported, dropped and failed span counts. Benchmarks print `dropped` next to their
    /// throughput so that no figure is flattered by spans that never left the process.
    pub fn stats(&self) -> SinkStats {
        SinkStats {
            exported: self.shared.exported.load(Ordering::Relaxed),
            dropped: self.shared.dropped.load(Ordering::Relaxed),
            export_failed: self.shared.export_failed.load(Ordering::Relaxed),
        }
    }

    /// Spans dropped so far because the queue was full or the sink closed.
    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    /// Spans queued or being exported now (what the bound applies to).
    pub fn queued(&self) -> usize {
        let state = self.shared.state.lock();
        state.queue.len() + state.in_flight
    }

    /// The index records of `scope` carry; the same scope gets the same index.
    pub(crate) fn register_scope(&self, scope: &InstrumentationScope) -> u32 {
        let mut scopes = self.shared.scopes.lock();
        let i = match scopes.iter().position(|s| s == scope) {
            Some(i) => i,
            None => {
                scopes.push(scope.clone());
                scopes.len() - 1
            }
        };
        u32::try_from(i).unwrap_or(u32::MAX)
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.shared.closed.load(Ordering::Relaxed)
    }

    /// Queues `span`, or drops and counts it when the queue is full. Never blocks on the
    /// exporter: the critical section is one bounds check and a move.
    pub(crate) fn push(&self, span: Queued) {
        let shared = &*self.shared;
        let mut state = shared.state.lock();
        if state.closed || state.queue.len() + state.in_flight >= shared.config.max_queue_size {
            drop(state);
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            // Freed outside the lock (an SDK span's `SpanData` owns strings and vectors).
            drop(span);
            return;
        }
        state.queue.push_back(span);
        let len = state.queue.len();
        drop(state);
        // Only the push that completes a batch wakes the thread; it re-checks under the lock
        // before sleeping, so a wake-up sent while it was exporting is not lost.
        if len == shared.config.max_export_batch_size {
            shared.wake.notify_one();
        }
    }

    /// Exports everything queued now and waits for it (up to 5 s).
    pub fn force_flush(&self) -> OTelSdkResult {
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut state = self.shared.state.lock();
            if state.closed {
                return Err(OTelSdkError::AlreadyShutdown);
            }
            state.flush_waiters.push(tx);
        }
        self.shared.wake.notify_one();
        match rx.recv_timeout(FLUSH_TIMEOUT) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => Err(OTelSdkError::Timeout(FLUSH_TIMEOUT)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(OTelSdkError::InternalFailure(
                "span export thread ended".into(),
            )),
        }
    }

    /// Closes the queue, exports all it holds, shuts the exporter down and ends the thread.
    /// Spans ended afterwards are dropped and counted.
    pub fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        let (tx, rx) = mpsc::sync_channel(1);
        {
            let mut state = self.shared.state.lock();
            if state.closed {
                return Err(OTelSdkError::AlreadyShutdown);
            }
            state.closed = true;
            self.shared.closed.store(true, Ordering::Relaxed);
            state.shutdown_waiter = Some(tx);
        }
        self.shared.wake.notify_one();
        let result = match rx.recv_timeout(timeout) {
            Ok(result) => result,
            Err(mpsc::RecvTimeoutError::Timeout) => return Err(OTelSdkError::Timeout(timeout)),
            Err(mpsc::RecvTimeoutError::Disconnected) => Err(OTelSdkError::InternalFailure(
                "span export thread ended".into(),
            )),
        };
        let handle = self.shared.thread.lock().take();
        // Skipped on the export thread itself (an exporter shutting its provider down): a
        // thread cannot join itself, and it is ending anyway.
        if let Some(h) = handle.filter(|h| h.thread().id() != std::thread::current().id()) {
            let _ = h.join();
        }
        result
    }

    fn set_resource(&self, resource: &Resource) {
        self.shared.state.lock().resource = Some(resource.clone());
        self.shared.wake.notify_one();
    }
}

impl SpanProcessor for SpanSink {
    fn on_start(&self, _span: &mut opentelemetry_sdk::trace::Span, _cx: &opentelemetry::Context) {}

    fn on_end(&self, span: SpanData) {
        // As the SDK's processors: a span recorded but not sampled is not exported.
        if span.span_context.is_sampled() {
            self.push(Queued::Sdk(span));
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        SpanSink::force_flush(self)
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        SpanSink::shutdown_with_timeout(self, timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        SpanSink::set_resource(self, resource);
    }
}

/// What woke the export thread.
struct Wake {
    resource: Option<Resource>,
    flush_waiters: Vec<mpsc::SyncSender<OTelSdkResult>>,
    shutdown_waiter: Option<mpsc::SyncSender<OTelSdkResult>>,
    /// The schedule delay ran out: a partial batch goes too.
    timer: bool,
}

fn wait_for_work(shared: &Shared, deadline: Instant) -> Wake {
    let mut state = shared.state.lock();
    loop {
        let timer = Instant::now() >= deadline;
        let due = timer
            || state.queue.len() >= shared.config.max_export_batch_size
            || !state.flush_waiters.is_empty()
            || state.shutdown_waiter.is_some()
            || state.resource.is_some();
        if due {
            return Wake {
                resource: state.resource.take(),
                flush_waiters: std::mem::take(&mut state.flush_waiters),
                shutdown_waiter: state.shutdown_waiter.take(),
                timer,
            };
        }
        shared.wake.wait_until(&mut state, deadline);
    }
}

fn export_loop<E: SpanExporter>(shared: &Shared, mut exporter: E) {
    // Spans the exporter's own transport might make must not come back into this queue.
    let _suppressed = opentelemetry::Context::enter_telemetry_suppressed_scope();
    let config = shared.config;
    let batch_size = config.max_export_batch_size;
    let mut deadline = Instant::now() + config.scheduled_delay;
    let mut warned = Warned::default();
    loop {
        let wake = wait_for_work(shared, deadline);
        if let Some(resource) = &wake.resource {
            exporter.set_resource(resource);
        }
        let export_now = wake.timer
            || !wake.flush_waiters.is_empty()
            || wake.shutdown_waiter.is_some()
            || shared.state.lock().queue.len() >= batch_size;
        let mut failure: Option<String> = None;
        if export_now {
            // Everything queued now, in batches: a flush exports what was queued when it was
            // asked for, and the timer or a full batch exports the rest along.
            let mut taken = {
                let mut state = shared.state.lock();
                let spare = std::mem::take(&mut state.spare);
                let taken = std::mem::replace(&mut state.queue, spare);
                state.in_flight = taken.len();
                taken
            };
            while !taken.is_empty() {
                let n = taken.len().min(batch_size);
                let batch: Vec<SpanData> = {
                    let scopes = shared.scopes.lock();
                    taken
                        .drain(..n)
                        .map(|q| q.into_span_data(&scopes))
                        .collect()
                };
                if let Err(e) = export_batch(shared, &exporter, batch) {
                    failure = Some(e.to_string());
                }
                shared.state.lock().in_flight = taken.len();
            }
            // Keep the capacity for the next take, unless a bigger one already came back.
            let mut state = shared.state.lock();
            if state.spare.capacity() < taken.capacity() {
                state.spare = taken;
            }
            drop(state);
            deadline = Instant::now() + config.scheduled_delay;
        }
        warned.maybe_warn(shared, failure.as_deref());
        let result = || match &failure {
            None => Ok(()),
            Some(e) => Err(OTelSdkError::InternalFailure(e.clone())),
        };
        for waiter in wake.flush_waiters {
            let _ = waiter.send(result());
        }
        if let Some(waiter) = wake.shutdown_waiter {
            let shut = exporter.shutdown();
            let _ = waiter.send(result().and(shut));
            return;
        }
    }
}

fn export_batch<E: SpanExporter>(
    shared: &Shared,
    exporter: &E,
    spans: Vec<SpanData>,
) -> OTelSdkResult {
    let n = spans.len() as u64;
    // As the SDK's BatchSpanProcessor: the exporter's future runs to completion here; the
    // tonic exporter's connection itself lives on the runtime it was built in.
    let result = futures::executor::block_on(exporter.export(spans));
    match &result {
        Ok(()) => shared.exported.fetch_add(n, Ordering::Relaxed),
        Err(_) => shared.export_failed.fetch_add(n, Ordering::Relaxed),
    };
    result
}

/// The last counts a warning reported, and when.
#[derive(Default)]
struct Warned {
    at: Option<Instant>,
    dropped: u64,
    failed: u64,
}

impl Warned {
    fn maybe_warn(&mut self, shared: &Shared, failure: Option<&str>) {
        let dropped = shared.dropped.load(Ordering::Relaxed);
        let failed = shared.export_failed.load(Ordering::Relaxed);
        if dropped == self.dropped && failed == self.failed {
            return;
        }
        if self.at.is_some_and(|t| t.elapsed() < WARN_EVERY) {
            return;
        }
        tracing::warn!(
            spans_dropped_total = dropped,
            spans_dropped_new = dropped - self.dropped,
            spans_export_failed_total = failed,
            max_queue_size = shared.config.max_queue_size,
            last_error = failure.unwrap_or(""),
            "span queue: spans dropped (queue full) or failed to export"
        );
        *self = Warned {
            at: Some(Instant::now()),
            dropped,
            failed,
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_reads_the_bsp_variables_like_the_sdk() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(key, _)| *key == k)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert_eq!(SinkConfig::from_lookup(env(&[])), SinkConfig::default());
        let c = SinkConfig::from_lookup(env(&[
            ("OTEL_BSP_MAX_QUEUE_SIZE", "100"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "512"),
            ("OTEL_BSP_SCHEDULE_DELAY", "250"),
        ]));
        assert_eq!(c.max_queue_size, 100);
        assert_eq!(c.max_export_batch_size, 100, "capped at the queue size");
        assert_eq!(c.scheduled_delay, Duration::from_millis(250));
        let bad = SinkConfig::from_lookup(env(&[("OTEL_BSP_MAX_QUEUE_SIZE", "lots")]));
        assert_eq!(bad.max_queue_size, 2048);
    }
}
