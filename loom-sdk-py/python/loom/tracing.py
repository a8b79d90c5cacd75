"""Telemetry set-up for Python agents: the official OpenTelemetry SDK exporting OTLP/gRPC.

Environment (docs/contracts.md §3): ``OTEL_SERVICE_NAME``, ``OTEL_EXPORTER_OTLP_ENDPOINT``,
``OTEL_TRACES_SAMPLER`` (standard, wins) / ``OTEL_TRACE_SAMPLER`` and their ``_ARG``,
``OTEL_BSP_*`` (queue size, batch size, schedule delay, export timeout), ``LOOM_TELEMETRY_AUTO=0``
to keep agents from installing anything, ``LOOM_SPAN_ENCODER=python`` for the OpenTelemetry
SDK's own batch processor and (slower) Python OTLP encoder instead of ``loom._native``'s pipeline.

The provider Loom installs is the SDK's ``TracerProvider``; its span processor is
:class:`NativeSpanProcessor`, one bounded queue in ``loom._native`` that batches and encodes spans
off the GIL. The SDK's per-event spans (``agent.emit``, ``agent.on_event``) are started straight
in that pipeline as ``loom._native.Span`` objects (an ``opentelemetry.trace.Span``) unless the
provider has other processors or a sampler object was passed in; every other span (user code,
instrumentation libraries) goes through the SDK's tracer into the same queue.
"""

from __future__ import annotations

import logging
import os
import threading
import uuid
import weakref
from typing import Any, Callable, Dict, Optional, Sequence

from opentelemetry import context as context_api
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanKind, Status, StatusCode

from loom import _native

log = logging.getLogger("loom.tracing")

TRACER_NAME = "loom"
DEFAULT_ENDPOINT = "http://localhost:4317"
# The OpenTelemetry SDK's own default (docs/contracts.md §3), not `always_on`: with that an agent
# that receives an event of an unsampled trace would record spans whose parents were never
# exported (orphans). parentbased_always_on samples every root and follows the parent otherwise.
DEFAULT_SAMPLER = _native.DEFAULT_SAMPLER
SAMPLER_NAMES = tuple(_native.SAMPLER_NAMES)

# Span names and attribute keys (docs/contracts.md §5).
SPAN_EMIT = "agent.emit"
SPAN_ON_EVENT = "agent.on_event"
SPAN_CAPABILITY = "agent.capability"
SPAN_CALL = "agent.call"
ATTR_AGENT_ID = "loom.agent.id"
ATTR_TOPIC = "loom.topic"
ATTR_EVENT_ID = "loom.event.id"
ATTR_EVENT_TYPE = "loom.event.type"
ATTR_THREAD_ID = "loom.thread_id"
ATTR_CORRELATION_ID = "loom.correlation_id"
ATTR_CAPABILITY = "loom.capability"

_lock = threading.Lock()
_provider: Optional[TracerProvider] = None


class TelemetryConfigError(ValueError):
    """A telemetry environment variable has a value that cannot be used."""


def sampler_from_env(env: Optional[Dict[str, str]] = None) -> Sampler:
    """The sampler the environment asks for; ``TelemetryConfigError`` for unknown names or ratios.

    The variables are read by loom-core's parser (``_native.parse_sampler_env``), the one the
    Rust processes and the sidecar use, so a value gets the same verdict everywhere.
    """
    env = dict(os.environ) if env is None else env
    try:
        name, ratio = _native.parse_sampler_env(dict(env))
    except ValueError as e:
        raise TelemetryConfigError(str(e)) from None
    if name == "always_on":
        return ALWAYS_ON
    if name == "always_off":
        return ALWAYS_OFF
    if name == "parentbased_always_on":
        return ParentBased(ALWAYS_ON)
    if name == "parentbased_always_off":
        return ParentBased(ALWAYS_OFF)
    if ratio is None:
        raise AssertionError(f"loom._native gave {name!r} without a ratio")
    if name == "traceidratio":
        return TraceIdRatioBased(ratio)
    if name == "parentbased_traceidratio":
        return ParentBased(TraceIdRatioBased(ratio))
    raise AssertionError(f"loom._native gave an unknown sampler {name!r}")


def native_sampler_of(sampler: Sampler) -> Optional[tuple]:
    """(name, ratio) of an SDK sampler ``loom._native`` implements the same way, else None (then
    Loom's own spans go through the SDK's tracer). The SDK's stock samplers only: a subclass or
    a ParentBased with other delegates may decide differently."""
    if sampler is ALWAYS_ON:
        return ("always_on", None)
    if sampler is ALWAYS_OFF:
        return ("always_off", None)
    if type(sampler) is TraceIdRatioBased:
        return ("traceidratio", sampler.rate)
    if isinstance(sampler, ParentBased):
        delegates = (getattr(sampler, "_remote_parent_sampled", None), getattr(sampler, "_remote_parent_not_sampled", None),
                     getattr(sampler, "_local_parent_sampled", None), getattr(sampler, "_local_parent_not_sampled", None))
        if delegates != (ALWAYS_ON, ALWAYS_OFF, ALWAYS_ON, ALWAYS_OFF):
            return None
        root = native_sampler_of(getattr(sampler, "_root", None))  # type: ignore[arg-type]
        if root is not None:
            return ("parentbased_" + root[0], root[1])
    return None


_EXPORT_METHOD = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


class _EncodedTraceServiceStub:
    """The OTLP TraceService stub for a request that is already serialized (bytes)."""

    def __init__(self, channel: Any) -> None:
        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse

        self.Export = channel.unary_unary(
            _EXPORT_METHOD,
            request_serializer=bytes,
            response_deserializer=ExportTraceServiceResponse.FromString,
        )


def native_otlp_exporter(**kwargs: Any) -> SpanExporter:
    """The OpenTelemetry SDK's OTLP/gRPC span exporter with spans encoded by ``loom._native``.

    Encoding is where the SDK's exporter spends its time (a protobuf object per span, attribute
    and value, built in Python on the batch thread that shares the GIL with the agent). Everything
    else (channel, retries and backoff, headers, compression, TLS, the OTEL_EXPORTER_OTLP_*
    variables) stays the SDK's: only the request serialization is swapped.
    """
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    class NativeOTLPSpanExporter(OTLPSpanExporter):
        def __init__(self, **kw: Any) -> None:
            super().__init__(**kw)
            # The mixin rebuilds the client from `_stub` when it reconnects.
            self._stub = _EncodedTraceServiceStub
            self._client = _EncodedTraceServiceStub(self._channel)

        def _translate_data(self, data: Sequence[ReadableSpan]) -> bytes:  # type: ignore[override]
            if isinstance(data, EncodedBatch):
                return data.payload
            return _native.encode_spans(data)

    return NativeOTLPSpanExporter(**kwargs)


def otlp_exporter(**kwargs: Any) -> SpanExporter:
    """The exporter ``init_telemetry`` installs: native encoding unless ``LOOM_SPAN_ENCODER=python``."""
    encoder = os.environ.get("LOOM_SPAN_ENCODER", "native").strip().lower()
    if encoder == "python":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter(**kwargs)
    if encoder != "native":
        raise TelemetryConfigError(f"LOOM_SPAN_ENCODER: {encoder!r} is not one of native, python")
    return native_otlp_exporter(**kwargs)


class EncodedBatch(Sequence[ReadableSpan]):
    """A batch ``loom._native.SpanPipeline`` already serialized: what the exporter sends as is.
    Its length is the span count (the SDK's exporter counts spans with ``len``)."""

    __slots__ = ("payload", "count")

    def __init__(self, payload: bytes, count: int) -> None:
        self.payload = payload
        self.count = count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, i: Any) -> Any:
        raise TypeError("an encoded batch has no span objects")


def _env_int(name: str, default: int, *, minimum: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise TelemetryConfigError(f"{name}: {raw!r} is not an integer") from None
    if value < minimum:
        raise TelemetryConfigError(f"{name}: {value} is below {minimum}")
    return value


class NativeSpanProcessor(SpanProcessor):
    """The span processor of the provider Loom installs: ``loom._native.SpanPipeline`` (one
    bounded queue for native and SDK spans, batched and encoded off the GIL) plus a worker thread
    that sends each encoded batch with ``exporter`` (the SDK's OTLP exporter). Honors
    ``OTEL_BSP_MAX_QUEUE_SIZE`` / ``_MAX_EXPORT_BATCH_SIZE`` / ``_SCHEDULE_DELAY`` (2048 / 512 /
    5000 ms, the SDK's defaults). Full queue: the span is dropped and counted (:meth:`drops`)."""

    def __init__(self, exporter: SpanExporter, resource: Resource, native_sampler: Optional[tuple]) -> None:
        self._exporter = exporter
        self._args = dict(
            max_queue_size=_env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048, minimum=1),
            max_export_batch_size=_env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512, minimum=1),
            schedule_delay_millis=_env_int("OTEL_BSP_SCHEDULE_DELAY", 5000, minimum=0),
            scope_name=TRACER_NAME,
        )
        # Read with the others: a bad value is refused at start-up, not at exit.
        self._shutdown_flush_s = _env_int("OTEL_BSP_EXPORT_TIMEOUT", 30000, minimum=0) / 1000.0
        if self._args["max_export_batch_size"] > self._args["max_queue_size"]:
            raise TelemetryConfigError(
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE must not exceed OTEL_BSP_MAX_QUEUE_SIZE "
                f"({self._args['max_export_batch_size']} > {self._args['max_queue_size']})"
            )
        self._resource = resource
        self._sampler = native_sampler
        self._closed = False
        # The Rust sender when the SDK's exporter is one it can stand in for, else a Python worker
        # thread that sends each encoded batch through the SDK's exporter.
        self._rust_export = _rust_export_settings(exporter)
        self.pipeline = self._new_pipeline()
        self._worker = self._start_worker()
        if hasattr(os, "register_at_fork"):
            # Weak: a hook must not keep a shut-down processor (and its exporter) alive.
            ref = weakref.WeakMethod(self._after_fork_in_child)

            def _hook() -> None:
                method = ref()
                if method is not None:
                    method()

            os.register_at_fork(after_in_child=_hook)

    @property
    def transport(self) -> str:
        """``rust`` (the pipeline's own gRPC sender) or ``python`` (the SDK's exporter)."""
        return "rust" if self._rust_export is not None else "python"

    def _new_pipeline(self) -> "_native.SpanPipeline":
        name, ratio = self._sampler if self._sampler is not None else (None, None)
        return _native.SpanPipeline(self._resource, SpanLimits(), sampler=name, ratio=ratio, **self._args)

    def _start_worker(self) -> Optional[threading.Thread]:
        if self._rust_export is not None:
            self.pipeline.start_export(**self._rust_export)
            return None
        t = threading.Thread(target=self._run, args=(self.pipeline,), name="loom-span-export", daemon=True)
        t.start()
        return t

    def _run(self, pipeline: "_native.SpanPipeline") -> None:
        while True:
            got = pipeline.next_batch(1.0)
            if got is None:
                if self._closed or pipeline is not self.pipeline:
                    return
                continue
            payload, count = got
            try:
                ok = self._exporter.export(EncodedBatch(payload, count)) is SpanExportResult.SUCCESS
            except Exception:  # noqa: BLE001 - an exporter bug must not end span export
                log.exception("exporting %d spans failed", count)
                ok = False
            pipeline.batch_done(count, ok)

    def _after_fork_in_child(self) -> None:
        # The parent's queue and worker do not exist here: start afresh (the parent exports
        # what was queued before the fork).
        global _native_pipeline
        if self._closed:
            return
        old = self.pipeline
        old.abandon_after_fork()
        self.pipeline = self._new_pipeline()
        if _native_pipeline is old:
            _native_pipeline = self.pipeline if self.pipeline.native else None
        self._worker = self._start_worker()

    def on_start(self, span: Any, parent_context: Optional[context_api.Context] = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        self.pipeline.submit(span)

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return bool(self.pipeline.flush(timeout_millis / 1000.0))

    def shutdown(self) -> None:
        if self._closed:
            return
        self.pipeline.flush(self._shutdown_flush_s)
        self._closed = True
        self.pipeline.close()
        if self._worker is not None:
            self._worker.join(timeout=5.0)
        else:
            self.pipeline.join_export()
        self._exporter.shutdown()

    def drops(self) -> Dict[str, int]:
        d = dict(self.pipeline.drops())
        d.pop("exported", None)
        return d


def _rust_export_settings(exporter: SpanExporter) -> Optional[Dict[str, Any]]:
    """What the pipeline's Rust sender needs to send as ``exporter`` would, read from what the
    SDK's gRPC exporter parsed (its arguments and ``OTEL_EXPORTER_OTLP_*``); None when only the
    SDK's exporter can: TLS, compression, another exporter class, or ``LOOM_SPAN_TRANSPORT=python``."""
    choice = os.environ.get("LOOM_SPAN_TRANSPORT", "rust").strip().lower()
    if choice not in ("rust", "python"):
        raise TelemetryConfigError(f"LOOM_SPAN_TRANSPORT: {choice!r} is not one of rust, python")
    if choice == "python" or type(exporter).__name__ != "NativeOTLPSpanExporter":
        return None
    from grpc import Compression

    try:
        insecure, compression = exporter._insecure, exporter._compression  # type: ignore[attr-defined]
        endpoint, headers = exporter._endpoint, exporter._headers  # type: ignore[attr-defined]
        timeout, retryable = exporter._timeout, exporter._retryable_error_codes  # type: ignore[attr-defined]
    except AttributeError:
        return None  # another SDK version: its exporter it is
    if not insecure or compression not in (None, Compression.NoCompression):
        return None
    return {
        "endpoint": str(endpoint),
        "headers": [(str(k), str(v)) for k, v in (headers or ())],
        "timeout_s": float(timeout),
        "retryable": sorted(int(code.value[0]) for code in retryable),
    }


class LoomTracerProvider(TracerProvider):
    """The SDK's TracerProvider as Loom installs it. A span processor added by the user must see
    every span, so adding one turns native spans off (they would bypass it)."""

    def add_span_processor(self, span_processor: SpanProcessor) -> None:
        global _native_pipeline
        if not isinstance(span_processor, NativeSpanProcessor):
            _native_pipeline = None
        super().add_span_processor(span_processor)


class _CountingExporter(SpanExporter):
    """Counts the spans of batches its exporter gave up on (after the exporter's own retries)."""

    def __init__(self, inner: SpanExporter) -> None:
        self.inner = inner
        self.failed = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        result = self.inner.export(spans)
        if result is not SpanExportResult.SUCCESS:
            self.failed += len(spans)
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return self.inner.force_flush(timeout_millis)


class CountingBatchSpanProcessor(BatchSpanProcessor):
    """The SDK's BatchSpanProcessor (bounded queue, OTEL_BSP_* settings) that also counts what it
    drops: spans refused because the queue was full, and spans of batches whose export failed."""

    def __init__(self, exporter: SpanExporter, **kwargs: Any) -> None:
        self._counting = _CountingExporter(exporter)
        super().__init__(self._counting, **kwargs)
        self.queue_full = 0
        # The SDK keeps the queue (a bounded deque) on its shared BatchProcessor; without it
        # (another SDK version) drops are still made, only not counted here.
        self._queue = getattr(getattr(self, "_batch_processor", None), "_queue", None)

    def on_end(self, span: ReadableSpan) -> None:
        q = self._queue
        if q is not None and q.maxlen is not None and len(q) >= q.maxlen and span.context.trace_flags.sampled:
            self.queue_full += 1
        super().on_end(span)

    def drops(self) -> Dict[str, int]:
        return {
            "queue_full": self.queue_full,
            "export_failed": self._counting.failed,
            "queued": len(self._queue) if self._queue is not None else 0,
        }


_processor: Optional[SpanProcessor] = None
# The pipeline Loom's own spans start in; None when they go through the SDK's tracer.
_native_pipeline: Optional["_native.SpanPipeline"] = None


def span_drops() -> Dict[str, int]:
    """Spans the provider Loom installed has dropped so far: ``queue_full`` (refused by the
    bounded queue while the exporter could not keep up), ``export_failed`` (batches the exporter
    gave up on), plus ``queued`` (waiting now). All zero when Loom installed no provider."""
    processor = _processor
    if processor is None:
        return {"queue_full": 0, "export_failed": 0, "queued": 0}
    return processor.drops()  # type: ignore[attr-defined, no-any-return]


def _has_sdk_provider() -> bool:
    """True when someone already installed a real TracerProvider (not the API's proxy/no-op)."""
    current = trace.get_tracer_provider()
    return isinstance(current, TracerProvider) or type(current).__name__ not in (
        "ProxyTracerProvider",
        "NoOpTracerProvider",
    )


def init_telemetry(
    service_name: Optional[str] = None,
    endpoint: Optional[str] = None,
    *,
    agent_id: Optional[str] = None,
    sampler: Optional[Sampler] = None,
) -> Optional[TracerProvider]:
    """Installs a global TracerProvider exporting OTLP/gRPC with a BatchSpanProcessor.

    ``OTEL_SERVICE_NAME`` wins over ``service_name``; ``OTEL_EXPORTER_OTLP_ENDPOINT`` is used when
    ``endpoint`` is None. An already-configured global provider is respected, never replaced:
    then nothing is installed and None is returned.
    """
    global _provider, _processor, _native_pipeline
    with _lock:
        if _provider is not None:
            return _provider
        if _has_sdk_provider():
            log.debug("a TracerProvider is already installed; Loom leaves it in place")
            return None
        name = os.environ.get("OTEL_SERVICE_NAME") or service_name or (f"agent-{agent_id}" if agent_id else "loom-agent")
        attrs = {"service.name": name, "service.instance.id": str(uuid.uuid4())}
        if agent_id:
            attrs[ATTR_AGENT_ID] = agent_id
        endpoint = endpoint or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or DEFAULT_ENDPOINT
        insecure = not endpoint.startswith("https://")
        if sampler is None:
            sampler = sampler_from_env()
        native_sampler = native_sampler_of(sampler)
        resource = Resource.create(attrs)
        encoder = os.environ.get("LOOM_SPAN_ENCODER", "native").strip().lower()
        exporter = otlp_exporter(endpoint=endpoint, insecure=insecure)
        provider = LoomTracerProvider(resource=resource, sampler=sampler)
        processor: SpanProcessor
        if encoder == "python":
            processor = CountingBatchSpanProcessor(exporter)
        else:
            processor = NativeSpanProcessor(exporter, provider.resource, native_sampler)
        provider.add_span_processor(processor)
        trace.set_tracer_provider(provider)
        _provider, _processor = provider, processor
        if isinstance(processor, NativeSpanProcessor) and processor.pipeline.native:
            _native_pipeline = processor.pipeline
        log.debug("telemetry: service.name=%s endpoint=%s", name, endpoint)
        return provider


def auto_init(agent_id: str) -> Optional[TracerProvider]:
    """What an Agent does on construction: init_telemetry unless ``LOOM_TELEMETRY_AUTO=0``."""
    if os.environ.get("LOOM_TELEMETRY_AUTO", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    return init_telemetry(agent_id=agent_id)


def shutdown_telemetry(timeout_s: float = 10.0) -> None:
    """Flushes and shuts down the provider Loom installed (no-op otherwise)."""
    global _provider, _native_pipeline
    with _lock:
        provider, _provider = _provider, None
        _native_pipeline = None
    if provider is not None:
        provider.force_flush(int(timeout_s * 1000))
        provider.shutdown()


def force_flush(timeout_s: float = 10.0) -> None:
    """Flushes whatever global provider is installed, Loom's or the user's."""
    provider = trace.get_tracer_provider()
    flush: Optional[Callable[..., object]] = getattr(provider, "force_flush", None)
    if flush is not None:
        flush(int(timeout_s * 1000))


_tracer: Optional[trace.Tracer] = None


def get_tracer() -> trace.Tracer:
    """Loom's tracer, looked up once: `trace.get_tracer` builds a Tracer and its scope on every
    call (about a tenth of a span's cost). Before a provider is installed the API hands out a
    proxy that delegates to the provider once there is one, so caching it early is safe."""
    global _tracer
    tracer = _tracer
    if tracer is None:
        tracer = _tracer = trace.get_tracer(TRACER_NAME)
    return tracer


class SpanScope:
    """What ``tracer.start_as_current_span(...)`` does with a started span: current inside the
    ``with``, ended at its exit; an ``Exception`` escaping it is recorded and sets ERROR status
    when ``record_exception``. A plain class: the SDK's two nested generator context managers
    cost about as much as the span's seven attributes on the agent's per-event path."""

    __slots__ = ("span", "_record", "_token")

    def __init__(self, span: trace.Span, record_exception: bool) -> None:
        self.span = span
        self._record = record_exception
        self._token: Optional[object] = None

    def __enter__(self) -> trace.Span:
        self._token = context_api.attach(trace.set_span_in_context(self.span))
        return self.span

    def __exit__(self, typ: Any, exc: Any, tb: Any) -> bool:
        span = self.span
        try:
            context_api.detach(self._token)  # type: ignore[arg-type]
            if self._record and isinstance(exc, Exception) and span.is_recording():
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        finally:
            span.end()
        return False


def start_current_span(
    name: str,
    *,
    kind: SpanKind,
    attributes: Dict[str, Any],
    context: Optional[context_api.Context] = None,
    envelope: Optional[_native.Envelope] = None,
    record_exception: bool = True,
) -> SpanScope:
    """``get_tracer().start_as_current_span(...)`` for the SDK's per-event spans, cheaper: a
    native span when Loom's pipeline takes them. The parent is ``envelope``'s trace context when
    it has one, else the current span of ``context`` (default: the current context)."""
    pipeline = _native_pipeline
    if pipeline is not None:
        span: trace.Span = pipeline.start_span(name, kind.value, attributes, trace.get_current_span(context), envelope)
        return SpanScope(span, record_exception)
    if envelope is not None:
        parent = envelope.parent_context()  # type: ignore[attr-defined]
        if parent is not None:
            context = parent
    return SpanScope(get_tracer().start_span(name, context=context, kind=kind, attributes=attributes), record_exception)


def event_attributes(
    agent_id: str, topic: str, event_id: str, event_type: str, env: Any, operation: str
) -> Dict[str, Any]:
    """The attributes of a span about one event (docs/contracts.md §5), in the order
    ``SpanPipeline.start_event_span`` writes them."""
    attrs: Dict[str, Any] = {
        ATTR_AGENT_ID: agent_id,
        ATTR_TOPIC: topic,
        ATTR_EVENT_ID: event_id,
        "messaging.system": "loom",
        "messaging.destination.name": topic,
        "messaging.message.id": event_id,
        "messaging.operation.type": operation,
    }
    if event_type:
        attrs[ATTR_EVENT_TYPE] = event_type
    if env.thread_id:
        attrs[ATTR_THREAD_ID] = env.thread_id
    if env.correlation_id:
        attrs[ATTR_CORRELATION_ID] = env.correlation_id
    return attrs


def start_event_span(
    name: str,
    *,
    kind: SpanKind,
    agent_id: str,
    topic: str,
    event_id: str,
    event_type: str,
    env: Any,
    operation: str,
    envelope: Optional[_native.Envelope] = None,
    record_exception: bool = True,
) -> SpanScope:
    """:func:`start_current_span` for a span about one event (``agent.emit``, ``agent.on_event``)
    with :func:`event_attributes`; a native span builds them in Rust without a dict. ``env`` is
    the event's Envelope (thread and correlation ids), ``envelope`` the parent's as there."""
    pipeline = _native_pipeline
    if pipeline is not None:
        span: trace.Span = pipeline.start_event_span(
            name, kind.value, agent_id, topic, event_id, event_type, env, operation, trace.get_current_span(), envelope
        )
        return SpanScope(span, record_exception)
    attrs = event_attributes(agent_id, topic, event_id, event_type, env, operation)
    return start_current_span(name, kind=kind, attributes=attrs, envelope=envelope, record_exception=record_exception)


def has_valid_context(span: trace.Span) -> bool:
    """``span.get_span_context().is_valid`` without building a SpanContext for a native span
    (always valid)."""
    return type(span) is _native.Span or span.get_span_context().is_valid


# A native span is an OpenTelemetry span for every `isinstance` check of user code and libraries.
trace.Span.register(_native.Span)
