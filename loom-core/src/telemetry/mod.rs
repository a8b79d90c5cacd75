//! Telemetry set-up for Loom processes: `tracing` + OpenTelemetry + OTLP export, from the env.
//!
//! Every span of a process set up here (hot-path [`LoomSpan`]s and `tracing` spans alike) goes
//! through one bounded queue, [`SpanSink`], to the official OTLP exporter.
//!
//! Environment (docs/contracts.md §3): `OTEL_SERVICE_NAME`, `OTEL_EXPORTER_OTLP_ENDPOINT`,
//! `OTEL_TRACES_SAMPLER` (standard, wins) / `OTEL_TRACE_SAMPLER`, and their `_ARG` ratio, read
//! by [`crate::sampler_spec`].

mod record;
mod sink;

use std::borrow::Cow;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId};
use opentelemetry::{InstrumentationScope, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SdkTracerProvider, ShouldSample, SpanExporter, Tracer,
    TracerProviderBuilder,
};
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer as _;

pub use crate::sampler_spec::{
    sampler_spec_from, sampler_spec_from_env, SamplerSpec, SamplerSpecError, DEFAULT_SAMPLER,
    SAMPLER_NAMES,
};

pub use sink::{SinkConfig, SinkError, SinkStats, SpanSink};

use record::{EventFields, SpanRecord};
use sink::Queued;

pub const DEFAULT_ENDPOINT: &str = "http://localhost:4317";

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The sampler variables (parsed by [`crate::sampler_spec`]) cannot be used.
    #[error(transparent)]
    Sampler(#[from] SamplerSpecError),
    #[error("cannot build the OTLP exporter for {endpoint}: {message}")]
    Exporter { endpoint: String, message: String },
    #[error("a global tracing subscriber is already installed: {0}")]
    AlreadyInitialised(String),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

impl SamplerSpec {
    pub fn to_sampler(self) -> Sampler {
        match self {
            SamplerSpec::AlwaysOn => Sampler::AlwaysOn,
            SamplerSpec::AlwaysOff => Sampler::AlwaysOff,
            SamplerSpec::TraceIdRatio(r) => Sampler::TraceIdRatioBased(r),
            SamplerSpec::ParentBasedAlwaysOn => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
            SamplerSpec::ParentBasedAlwaysOff => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
            SamplerSpec::ParentBasedTraceIdRatio(r) => {
                Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(r)))
            }
        }
    }
}

/// The sampler the process environment asks for.
pub fn sampler_from_env() -> Result<Sampler, TelemetryError> {
    Ok(sampler_spec_from_env()?.to_sampler())
}

/// The tracing-opentelemetry layer as every Loom process (and test) should build it, paired with
/// a [`LoomTracer`] handle so hot paths can reach the same tracer without a `tracing` span.
///
/// Context activation on enter is off: with it on, entering a span starts its OpenTelemetry
/// span at once, after which a remote parent can no longer be set. Loom extracts the parent
/// after entering (`Envelope::extract_trace_context`), so the start must wait until the span's
/// context is first needed (a child span, an injection, or close).
///
/// The sampler of `tracer`'s provider is unknown here, so hot paths start every span on the SDK;
/// prefer [`LoomProvider::layer`].
pub fn otel_layer<S>(tracer: Tracer) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    layer_with(LoomTracer {
        tracer,
        sample_ahead: None,
        hot: None,
    })
}

/// [`otel_layer`] for a tracer whose provider came from [`provider_builder`]`(spec)`: hot paths
/// run the same sampler ahead of the SDK and build no SDK span for what it drops; what they
/// record is still an SDK span. [`LoomProvider::layer`] records those into the [`SpanSink`]
/// instead; this is the set-up as it was before the sink (benchmarks compare the two).
pub fn otel_layer_for<S>(tracer: Tracer, spec: SamplerSpec) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    layer_with(LoomTracer {
        tracer,
        sample_ahead: Some(spec.to_sampler()),
        hot: None,
    })
}

/// A tracer provider builder with `spec`'s sampler and the id generator that lets a hot path's
/// early sampling decision hold (see [`LoomIdGenerator`]). Add the exporter and resource, build,
/// and install its tracer with [`otel_layer_for`] and the same `spec`; or use [`LoomProvider`],
/// which builds on it.
pub fn provider_builder(spec: SamplerSpec) -> TracerProviderBuilder {
    SdkTracerProvider::builder()
        .with_sampler(spec.to_sampler())
        .with_id_generator(LoomIdGenerator::default())
}

/// A tracer provider whose only span processor is a [`SpanSink`], and the sink itself, so that
/// hot paths ([`start_span`]) record into the same queue as every SDK and `tracing` span.
/// [`otlp_provider`] builds the one Loom processes use. Clones share the provider and sink.
#[derive(Debug, Clone)]
pub struct LoomProvider {
    provider: SdkTracerProvider,
    sink: SpanSink,
    spec: SamplerSpec,
}

impl LoomProvider {
    /// `spec`'s sampler, spans through a new [`SpanSink`] (`config`) to `exporter`, and
    /// `resource` when given (else the SDK's default resource).
    pub fn new<E>(
        spec: SamplerSpec,
        exporter: E,
        config: SinkConfig,
        resource: Option<Resource>,
    ) -> Result<LoomProvider, TelemetryError>
    where
        E: SpanExporter + 'static,
    {
        let sink = SpanSink::new(exporter, config)?;
        let mut builder = provider_builder(spec).with_span_processor(sink.clone());
        if let Some(resource) = resource {
            builder = builder.with_resource(resource);
        }
        Ok(LoomProvider {
            provider: builder.build(),
            sink,
            spec,
        })
    }

    pub fn provider(&self) -> &SdkTracerProvider {
        &self.provider
    }

    pub fn sink(&self) -> &SpanSink {
        &self.sink
    }

    pub fn spec(&self) -> SamplerSpec {
        self.spec
    }

    /// The tracing-opentelemetry layer (as [`otel_layer`] configures it) over a tracer of
    /// instrumentation scope `scope`, with the hot-path handle: spans from [`start_span`] are
    /// sampled ahead with this provider's sampler and recorded into its sink under the same
    /// scope.
    pub fn layer<S>(&self, scope: &'static str) -> impl tracing_subscriber::Layer<S>
    where
        S: tracing::Subscriber + for<'span> LookupSpan<'span>,
    {
        let scope = InstrumentationScope::builder(scope).build();
        let scope_id = self.sink.register_scope(&scope);
        layer_with(LoomTracer {
            tracer: self.provider.tracer_with_scope(scope.clone()),
            sample_ahead: Some(self.spec.to_sampler()),
            hot: Some(HotPath {
                sink: self.sink.clone(),
                scope: scope_id,
            }),
        })
    }

    /// Exports every span queued now (the provider's processors flush, the sink among them).
    pub fn force_flush(&self) -> OTelSdkResult {
        self.provider.force_flush()
    }

    /// Exports what is queued and stops the export thread; later spans are dropped (counted).
    pub fn shutdown(&self) -> OTelSdkResult {
        self.provider.shutdown()
    }
}

fn layer_with<S>(handle: LoomTracer) -> impl tracing_subscriber::Layer<S>
where
    S: tracing::Subscriber + for<'span> LookupSpan<'span>,
{
    let tracer = handle.tracer.clone();
    tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_context_activation(false)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false)
        .with_target(false)
        .and_then(handle)
}

/// A do-nothing layer that carries the OpenTelemetry tracer of its `tracing` subscriber.
///
/// The EventBus publish path is hot: building a `tracing` span costs more than the whole
/// publish, mostly for spans that are then not sampled. It asks the current dispatcher for this
/// handle instead and starts its span straight on the tracer, so the sampler runs first and
/// attributes are only built for spans that record — yet the span still goes to whatever
/// provider the process (or a test) installed, with no global state.
#[derive(Debug, Clone)]
pub struct LoomTracer {
    tracer: Tracer,
    /// The provider's own sampler, when known ([`otel_layer_for`]). The SDK decides only after
    /// it has cloned its tracer into a span and drawn ids; most spans of a busy bus are dropped,
    /// and deciding first skips all of that for them.
    sample_ahead: Option<Sampler>,
    /// The provider's sink, when known ([`LoomProvider::layer`]): a sampled hot-path span is
    /// then a [`SpanRecord`] pushed there at its end, not an SDK span. Profiles put ~800 ns of a
    /// sampled publish in the SDK span (attribute `String`s, `SpanData`, the batch channel),
    /// more than the whole publish with tracing off.
    hot: Option<HotPath>,
}

#[derive(Debug, Clone)]
struct HotPath {
    sink: SpanSink,
    /// The tracer's scope as the sink knows it ([`SpanSink::register_scope`]): an index, not an
    /// `Arc`, because its count would bounce between the publishing core (a clone per span) and
    /// the export thread's (a drop per span).
    scope: u32,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LoomTracer {}

impl LoomTracer {
    /// Starts `name` (of `kind`, no attributes yet) as a child of `parent`.
    ///
    /// With the provider's sampler at hand, it decides first, exactly as the SDK would: same
    /// parent, name, kind and (empty) attributes, and the trace id the span will have: the
    /// parent's, or for a root one drawn here (and, for an SDK span, handed to the SDK through
    /// [`LoomIdGenerator`]).
    pub(crate) fn start(
        &self,
        name: &'static str,
        kind: opentelemetry::trace::SpanKind,
        parent: &opentelemetry::Context,
    ) -> LoomSpan {
        use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _};
        use opentelemetry_sdk::trace::SamplingDecision;
        let sdk_start = || {
            let span = self.tracer.build_with_context(
                self.tracer.span_builder(name).with_kind(kind.clone()),
                parent,
            );
            if span.is_recording() {
                LoomSpan(Started::Sdk(Box::new(span)))
            } else {
                LoomSpan(Started::Dropped(span.span_context().clone()))
            }
        };
        let Some(sampler) = &self.sample_ahead else {
            return sdk_start();
        };
        // As the SDK: no span in a suppressed scope or on a provider that is shut down.
        if parent.is_telemetry_suppressed() || self.hot.as_ref().is_some_and(|h| h.sink.is_closed())
        {
            return LoomSpan(Started::Dropped(SpanContext::empty_context()));
        }
        let parent_span = parent.span();
        let parent_sc = parent_span.span_context();
        let root = !parent_sc.is_valid();
        let ids = RandomIdGenerator::default();
        let trace_id = if root {
            ids.new_trace_id()
        } else {
            parent_sc.trace_id()
        };
        let result = sampler.should_sample(Some(parent), trace_id, name, &kind, &[], &[]);
        let sampled = match result.decision {
            SamplingDecision::Drop => {
                return LoomSpan(Started::Dropped(SpanContext::new(
                    trace_id,
                    ids.new_span_id(),
                    TraceFlags::default(),
                    false,
                    result.trace_state,
                )));
            }
            SamplingDecision::RecordAndSample => true,
            SamplingDecision::RecordOnly => false,
        };
        if let Some(hot) = &self.hot {
            // The SDK's recording span, field for field (`SdkTracer::build_with_context`).
            let (parent_flags, parent_span_id, parent_is_remote) = if root {
                (TraceFlags::default(), SpanId::INVALID, false)
            } else {
                (
                    parent_sc.trace_flags(),
                    parent_sc.span_id(),
                    parent_sc.is_remote(),
                )
            };
            let context = SpanContext::new(
                trace_id,
                ids.new_span_id(),
                parent_flags.with_sampled(sampled),
                false,
                result.trace_state,
            );
            let record = SpanRecord {
                context,
                parent_span_id,
                parent_is_remote,
                name,
                kind,
                start: opentelemetry::time::now(),
                end: std::time::SystemTime::UNIX_EPOCH,
                attributes: result.attributes,
                event: None,
                scope: hot.scope,
            };
            return LoomSpan(Started::Record(Box::new(record), hot.sink.clone()));
        }
        if root {
            NEXT_TRACE_ID.set(Some(trace_id));
        }
        let started = sdk_start();
        // Never left for a later root span, even if the provider did not draw it.
        NEXT_TRACE_ID.set(None);
        started
    }
}

/// A span started straight on the Loom tracer ([`start_span`]), for hot paths where a `tracing`
/// span would cost more than the work it covers. Unsampled, it is only a context: no attribute
/// is built and nothing is recorded. It ends when dropped.
pub struct LoomSpan(Started);

/// Recorded (into the sink, or on the SDK), or only a context because the sampler dropped it.
enum Started {
    /// A compact record, pushed into the sink when the span ends ([`LoomProvider::layer`]).
    /// Boxed: the publish future carries this enum, and moving ~250 bytes inline through every
    /// await showed up in profiles as memcpy, for unsampled spans too.
    Record(Box<SpanRecord>, SpanSink),
    /// An SDK span: the layer knows no sink ([`otel_layer`], [`otel_layer_for`]).
    Sdk(Box<opentelemetry_sdk::trace::Span>),
    /// Not recorded; the context (valid unless telemetry is suppressed) still propagates.
    Dropped(SpanContext),
}

impl Drop for LoomSpan {
    fn drop(&mut self) {
        if let Started::Record(..) = &self.0 {
            let Started::Record(mut record, sink) =
                std::mem::replace(&mut self.0, Started::Dropped(SpanContext::empty_context()))
            else {
                return;
            };
            // Recorded but not sampled (a RecordOnly sampler) is not exported, as in the SDK.
            if record.context.is_sampled() {
                record.end = opentelemetry::time::now();
                // Moved into the queue's slot; the box is freed here, on the thread that
                // allocated it (see `record::INLINE` on freeing across threads).
                sink.push(Queued::Record(*record));
            }
        }
    }
}

impl LoomSpan {
    /// The span's context, to propagate (valid unless telemetry is suppressed).
    pub fn span_context(&self) -> &SpanContext {
        use opentelemetry::trace::Span as _;
        match &self.0 {
            Started::Record(record, _) => &record.context,
            Started::Sdk(span) => span.span_context(),
            Started::Dropped(sc) => sc,
        }
    }

    /// Whether attributes set now will be recorded; build them only then.
    pub fn is_recording(&self) -> bool {
        !matches!(self.0, Started::Dropped(_))
    }

    pub fn set_attributes(&mut self, attributes: impl IntoIterator<Item = KeyValue>) {
        use opentelemetry::trace::Span as _;
        match &mut self.0 {
            Started::Record(record, _) => record.attributes.extend(attributes),
            Started::Sdk(span) => span.set_attributes(attributes),
            Started::Dropped(_) => {}
        }
    }

    /// Records [`event_span_attributes`]`(topic, event, agent, operation)`. On a recorded hot
    /// span only their source strings are copied now; the attributes are built on the export
    /// thread. Nothing is copied when the span is not recording.
    pub fn set_event_attributes(
        &mut self,
        topic: &str,
        event: &crate::proto::Event,
        agent: Option<&str>,
        operation: &'static str,
    ) {
        use opentelemetry::trace::Span as _;
        match &mut self.0 {
            Started::Record(record, _) => {
                record.event = Some(EventFields::new(topic, event, agent, operation));
            }
            Started::Sdk(span) => {
                span.set_attributes(event_span_attributes(topic, event, agent, operation));
            }
            Started::Dropped(_) => {}
        }
    }

    /// A context whose span is this one, as the parent of spans started under it. (The API
    /// calls any bare span context "remote"; the flag the child records is the context's own,
    /// false for a span of this process.)
    pub fn as_parent(&self) -> opentelemetry::Context {
        use opentelemetry::trace::TraceContextExt as _;
        opentelemetry::Context::new().with_remote_span_context(self.span_context().clone())
    }
}

/// Starts `name` (of `kind`) on the Loom tracer of the current `tracing` dispatcher, sampling
/// ahead of the SDK as `event_bus.publish` does. Its parent is `parent` or, when `None`, the
/// current span (as [`with_tracer_and_parent`] finds it). `None` when tracing is off.
pub fn start_span(
    name: &'static str,
    kind: opentelemetry::trace::SpanKind,
    parent: Option<&opentelemetry::Context>,
) -> Option<LoomSpan> {
    match parent {
        Some(parent) => with_tracer(|t| t.start(name, kind, parent)),
        None => with_tracer_and_parent(|t, parent| t.start(name, kind, parent)),
    }
}

/// Runs `f` with the tracer of the current `tracing` dispatcher; `None` when no Loom
/// OpenTelemetry layer is installed.
pub(crate) fn with_tracer<R>(f: impl FnOnce(&LoomTracer) -> R) -> Option<R> {
    let mut f = Some(f);
    tracing::dispatcher::get_default(|d| {
        let tracer = d.downcast_ref::<LoomTracer>()?;
        f.take().map(|f| f(tracer))
    })
}

thread_local! {
    /// The trace id a root span decided ahead of the SDK must get; taken by [`LoomIdGenerator`].
    static NEXT_TRACE_ID: std::cell::Cell<Option<TraceId>> = const { std::cell::Cell::new(None) };
}

/// The SDK's random ids, except that a root span sampled ahead (by [`LoomTracer`]) keeps the
/// trace id its decision was made on: a ratio sampler decides by trace id, and a second draw
/// would make the SDK decide again (sampling ratio² of roots instead of ratio).
#[derive(Debug, Default)]
pub struct LoomIdGenerator {
    random: RandomIdGenerator,
}

impl IdGenerator for LoomIdGenerator {
    fn new_trace_id(&self) -> TraceId {
        NEXT_TRACE_ID
            .take()
            .unwrap_or_else(|| self.random.new_trace_id())
    }

    fn new_span_id(&self) -> SpanId {
        self.random.new_span_id()
    }
}

/// Runs `f` with the tracer of the current `tracing` dispatcher and the OpenTelemetry context a
/// new span should take as parent: the current `tracing` span's or, outside any `tracing` span,
/// the OpenTelemetry API's current context. `None` when no Loom OpenTelemetry layer is installed
/// (tracing off).
///
/// Outside any `tracing` span (a publish from plain code) the dispatcher is borrowed once: each
/// borrow showed up in profiles of unsampled publishes. Inside one, the span's context is read
/// between two borrows, because the dispatcher is not re-entrant and `Span::current()` within a
/// borrow would see no span. `f` runs while the dispatcher is borrowed: `tracing` calls inside
/// it see no subscriber.
pub(crate) fn with_tracer_and_parent<R>(
    f: impl FnOnce(&LoomTracer, &opentelemetry::Context) -> R,
) -> Option<R> {
    use tracing_opentelemetry::OpenTelemetrySpanExt as _;
    enum Step<R> {
        Off,
        Done(R),
        InSpan,
    }
    let mut f = Some(f);
    let step = tracing::dispatcher::get_default(|d| {
        let Some(handle) = d.downcast_ref::<LoomTracer>() else {
            return Step::Off;
        };
        // Peek, not `Span::current()`: that clones (and later closes) a registry handle.
        if d.current_span().id().is_some() {
            return Step::InSpan;
        }
        match f.take() {
            Some(f) => Step::Done(opentelemetry::Context::map_current(|cx| f(handle, cx))),
            None => Step::Off,
        }
    });
    match step {
        Step::Off => None,
        Step::Done(out) => Some(out),
        Step::InSpan => {
            let current = tracing::Span::current();
            let parent = if current.is_none() {
                opentelemetry::Context::current()
            } else {
                current.context()
            };
            tracing::dispatcher::get_default(|d| {
                let handle = d.downcast_ref::<LoomTracer>()?;
                f.take().map(|f| f(handle, &parent))
            })
        }
    }
}

/// The envelope's conversation keys of `metadata` as span attributes: `loom.thread_id`,
/// `loom.correlation_id` and (when `with_sender`) `loom.sender` as `loom.agent.id`. Absent or
/// empty values are skipped.
pub fn envelope_span_fields(
    metadata: &std::collections::HashMap<String, String>,
    with_sender: bool,
) -> impl Iterator<Item = (&'static str, &str)> {
    use crate::envelope::{CORRELATION_ID, SENDER, THREAD_ID};
    const FIELDS: [(&str, &str); 3] = [
        ("loom.thread_id", THREAD_ID),
        ("loom.correlation_id", CORRELATION_ID),
        ("loom.agent.id", SENDER),
    ];
    let n = if with_sender { 3 } else { 2 };
    FIELDS[..n].iter().filter_map(move |(field, key)| {
        metadata
            .get(*key)
            .filter(|v| !v.is_empty())
            .map(|v| (*field, v.as_str()))
    })
}

/// The attributes docs/contracts.md §5 puts on a span about one event: `loom.topic`, `loom.event.id`,
/// `loom.event.type` (when set), the envelope's conversation keys, the messaging conventions with
/// `operation` as `messaging.operation.type`, and `loom.agent.id`: `agent` when given (the
/// bridge knows whose stream it serves), else the event's `loom.sender`.
pub fn event_span_attributes(
    topic: &str,
    event: &crate::proto::Event,
    agent: Option<&str>,
    operation: &'static str,
) -> Vec<KeyValue> {
    let mut attrs = Vec::with_capacity(11);
    if let Some(agent) = agent {
        attrs.push(KeyValue::new("loom.agent.id", agent.to_owned()));
    }
    attrs.extend([
        KeyValue::new("loom.topic", topic.to_owned()),
        KeyValue::new("loom.event.id", event.id.clone()),
        KeyValue::new("messaging.system", "loom"),
        KeyValue::new("messaging.destination.name", topic.to_owned()),
        KeyValue::new("messaging.message.id", event.id.clone()),
        KeyValue::new("messaging.operation.type", operation),
    ]);
    if !event.r#type.is_empty() {
        attrs.push(KeyValue::new("loom.event.type", event.r#type.clone()));
    }
    attrs.extend(
        envelope_span_fields(&event.metadata, agent.is_none())
            .map(|(k, v)| KeyValue::new(k, v.to_owned())),
    );
    attrs
}

/// Records [`envelope_span_fields`] on a `tracing` span, which must declare those fields
/// (`Empty` is fine).
pub fn record_envelope_fields(
    span: &tracing::Span,
    metadata: &std::collections::HashMap<String, String>,
    with_sender: bool,
) {
    for (field, value) in envelope_span_fields(metadata, with_sender) {
        span.record(field, value);
    }
}

/// Which `tracing` spans become OpenTelemetry spans: INFO and above, never the transport's own
/// internals (h2/hyper/tower/tonic emit debug and trace spans per frame; `RUST_LOG=debug` for
/// the logs must not flood the trace backend with them).
pub fn otel_filter() -> tracing_subscriber::filter::Targets {
    use tracing_subscriber::filter::LevelFilter;
    tracing_subscriber::filter::Targets::new()
        .with_default(LevelFilter::INFO)
        .with_target("h2", LevelFilter::OFF)
        .with_target("hyper", LevelFilter::OFF)
        .with_target("hyper_util", LevelFilter::OFF)
        .with_target("tower", LevelFilter::OFF)
        .with_target("tonic", LevelFilter::OFF)
}

/// Flushes and shuts the tracer provider down when dropped: every span the sink accepted is
/// exported (or counted as failed) before the process goes on to exit.
#[must_use = "dropping the guard shuts telemetry down"]
pub struct TelemetryGuard {
    provider: LoomProvider,
}

impl TelemetryGuard {
    pub fn provider(&self) -> &SdkTracerProvider {
        self.provider.provider()
    }

    /// The span queue, for its counters ([`SpanSink::stats`]).
    pub fn sink(&self) -> &SpanSink {
        self.provider.sink()
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        let provider = self.provider.provider();
        if let Err(e) = provider.force_flush() {
            eprintln!("telemetry: flushing spans failed: {e}");
        }
        if let Err(e) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
            eprintln!("telemetry: shutdown failed: {e}");
        }
        let stats = self.provider.sink().stats();
        if stats.dropped > 0 || stats.export_failed > 0 {
            eprintln!(
                "telemetry: {} spans dropped (queue full), {} failed to export, {} exported",
                stats.dropped, stats.export_failed, stats.exported
            );
        }
    }
}

fn env_non_empty(k: &str) -> Option<String> {
    std::env::var(k).ok().filter(|v| !v.trim().is_empty())
}

/// The provider `init_telemetry` installs: `spec`'s sampler, a [`SpanSink`] (`OTEL_BSP_*`
/// sizes) in front of the official OTLP/gRPC exporter to `endpoint`, `service` as
/// `service.name`. Build it inside a Tokio runtime (the tonic exporter's connection lives
/// there). Public so benchmarks measure the real export path.
pub fn otlp_provider(
    spec: SamplerSpec,
    service: &str,
    endpoint: &str,
) -> Result<LoomProvider, TelemetryError> {
    LoomProvider::new(
        spec,
        otlp_exporter(endpoint)?,
        SinkConfig::from_env(),
        Some(service_resource(service)),
    )
}

/// The official OTLP/gRPC (tonic) span exporter to `endpoint`, as [`otlp_provider`] wraps it.
/// Build it inside a Tokio runtime. Public so benchmarks can put the SDK's own batch processor
/// in front of the same exporter.
pub fn otlp_exporter(endpoint: &str) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.to_owned())
        .with_timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| TelemetryError::Exporter {
            endpoint: endpoint.to_owned(),
            message: e.to_string(),
        })
}

/// The resource [`otlp_provider`] gives its spans: `service` as `service.name` and a fresh
/// `service.instance.id`.
pub fn service_resource(service: &str) -> Resource {
    Resource::builder()
        .with_service_name(service.to_owned())
        .with_attribute(KeyValue::new(
            "service.instance.id",
            uuid::Uuid::new_v4().to_string(),
        ))
        .build()
}

/// Installs the global `tracing` subscriber (fmt logs to stderr, `RUST_LOG` filter defaulting to
/// `info`) with an OpenTelemetry layer exporting over OTLP/gRPC, sets the W3C propagator, and
/// returns the guard that flushes on drop. Call it inside a Tokio runtime (the tonic exporter
/// needs one).
pub fn init_telemetry(service_name: &str) -> Result<TelemetryGuard, TelemetryError> {
    let spec = sampler_spec_from_env()?;
    let service: Cow<'_, str> = match env_non_empty("OTEL_SERVICE_NAME") {
        Some(s) => Cow::Owned(s),
        None => Cow::Borrowed(service_name),
    };
    let endpoint = env_non_empty("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| env_non_empty("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .unwrap_or_else(|| DEFAULT_ENDPOINT.to_owned());
    let provider = otlp_provider(spec, &service, &endpoint)?;
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    opentelemetry::global::set_tracer_provider(provider.provider().clone());

    let log_filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_filter(log_filter),
        )
        .with(provider.layer("loom").with_filter(otel_filter()))
        .try_init()
        .map_err(|e| TelemetryError::AlreadyInitialised(e.to_string()))?;
    Ok(TelemetryGuard { provider })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_id_decided_ahead_never_reaches_a_later_root_span() {
        use opentelemetry::trace::SpanKind;
        // A provider without `LoomIdGenerator` never takes the id: `start` must drop it itself.
        let provider = SdkTracerProvider::builder().build();
        let handle = LoomTracer {
            tracer: provider.tracer("t"),
            sample_ahead: Some(Sampler::AlwaysOn),
            hot: None,
        };
        let started = handle.start("x", SpanKind::Internal, &opentelemetry::Context::new());
        assert!(started.is_recording());
        assert!(NEXT_TRACE_ID.get().is_none());

        // `LoomIdGenerator` hands a stashed id out once, then draws again. (That the SDK draws
        // a root's trace id through it, so a ratio decision ahead holds, is checked end to end
        // in tests/event_bus.rs: the share of sampled root publishes.)
        let ids = LoomIdGenerator::default();
        let decided = TraceId::from(0x1234_u128);
        NEXT_TRACE_ID.set(Some(decided));
        assert_eq!(ids.new_trace_id(), decided);
        assert_ne!(ids.new_trace_id(), decided);
        assert!(NEXT_TRACE_ID.get().is_none());
    }
}
