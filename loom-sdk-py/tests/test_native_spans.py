"""Native spans (`loom._native.Span`) and the span pipeline behind Loom's provider
(`loom._native.SpanPipeline`, `loom.tracing.NativeSpanProcessor`), against the official
OpenTelemetry Python SDK (same calls, same exported OTLP) and proto types, and a real gRPC
TraceService on loopback."""

from __future__ import annotations

import os
import time
from typing import Any, Iterator, List, Optional, Tuple

import grpc

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry import trace as api
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from loom import _native
from loom import tracing as lt
from loom.envelope import Envelope
from sdk_harness import free_port, trace_service
from test_span_export import collector, run_script  # noqa: F401 - the fixture is used by name

Request = trace_service_pb2.ExportTraceServiceRequest
RESOURCE = Resource.create({"service.name": "native-test", "n": 3}, "https://schema/r")
REMOTE = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, is_remote=True,
                     trace_flags=TraceFlags(1), trace_state=TraceState([("vendor", "v1")]))
SMALL = dict(max_span_attributes=4, max_events=3, max_links=2, max_event_attributes=2, max_link_attributes=2,
             max_attribute_length=6)


def pipeline(limits: SpanLimits, sampler: str = "always_on", ratio: Optional[float] = None) -> _native.SpanPipeline:
    # No delay: `next_batch(0)` hands out whatever has ended.
    return _native.SpanPipeline(RESOURCE, limits, sampler=sampler, ratio=ratio, schedule_delay_millis=0)


def drain(p: _native.SpanPipeline) -> Request:
    got = p.next_batch(0.0)
    assert got is not None, "nothing was queued"
    payload, count = got
    p.batch_done(count, True)
    return Request.FromString(payload)


class CustomError(Exception):
    """An exception outside builtins: its type is recorded with the module name."""


class Odd:
    """An object the SDK stringifies (custom __str__)."""

    def __str__(self) -> str:
        return "odd!"


scalars = st.one_of(
    st.text(max_size=12), st.integers(-(2**63), 2**63 - 1), st.booleans(), st.none(),
    st.floats(allow_nan=False), st.binary(max_size=6), st.just(Odd()), st.just(object()),
)
values = st.one_of(
    scalars,
    st.lists(st.text(max_size=4), max_size=3), st.lists(st.integers(-5, 5), max_size=3),
    st.tuples(st.booleans(), st.booleans()), st.lists(st.one_of(st.integers(0, 3), st.text(max_size=2)), max_size=3),
    st.dictionaries(st.text(min_size=1, max_size=3), st.integers(0, 9), max_size=2),
)
keys = st.one_of(st.sampled_from(["a", "b", "c", "loom.topic", "x" * 3]), st.text(max_size=3), st.just(5), st.none())
attr_maps = st.dictionaries(st.one_of(st.sampled_from(["a", "b", "c", "d", "e"]), st.just(""), st.just(7)), values,
                            max_size=6)
link_ctx = st.sampled_from([
    SpanContext(0x1, 0x2, is_remote=True, trace_flags=TraceFlags(1)),
    SpanContext(0xABC, 0xDEF, is_remote=False, trace_flags=TraceFlags(0), trace_state=TraceState([("k", "v")])),
    api.INVALID_SPAN_CONTEXT,
])
statuses = st.one_of(
    st.builds(Status, st.sampled_from(list(StatusCode)), st.one_of(st.none(), st.text(max_size=5))),
    st.tuples(st.sampled_from(list(StatusCode)), st.one_of(st.none(), st.text(max_size=5))),
)
ops = st.lists(st.one_of(
    st.tuples(st.just("set_attribute"), keys, values),
    st.tuples(st.just("set_attributes"), attr_maps),
    st.tuples(st.just("add_event"), st.text(max_size=4), st.one_of(st.none(), attr_maps),
              st.one_of(st.none(), st.integers(1, 2**62))),
    st.tuples(st.just("add_link"), link_ctx, st.one_of(st.none(), attr_maps)),
    st.tuples(st.just("set_status"), statuses),
    st.tuples(st.just("update_name"), st.text(max_size=6)),
    st.tuples(st.just("record_exception"), st.sampled_from([ValueError("bad"), KeyError("k"), CustomError]),
              st.one_of(st.none(), attr_maps), st.one_of(st.none(), st.integers(1, 2**62)), st.booleans()),
    st.tuples(st.just("end")),
), max_size=14)


def apply(span: Any, op: Tuple) -> None:
    name, *args = op
    if name == "set_status":
        (status,) = args
        if isinstance(status, Status):
            span.set_status(status)
        else:
            span.set_status(*status)
    elif name == "record_exception":
        exc, attrs, ts, escaped = args
        span.record_exception(exc() if isinstance(exc, type) else exc, attrs, ts, escaped)
    else:
        getattr(span, name)(*args)


def normalized(req: Request) -> Request:
    """Only what differs by construction is zeroed: span ids and the clock's times (an event's
    explicit timestamp is kept)."""
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                s.span_id = b""
                s.start_time_unix_nano = 0
                s.end_time_unix_nano = 0
                for e in s.events:
                    if e.time_unix_nano > 2**62 or e.time_unix_nano > 10**18:
                        e.time_unix_nano = 0
    return req


def both(limits: SpanLimits, name: str, kind: SpanKind, attributes: Any, steps: List[Tuple]) -> Tuple[Request, Request]:
    """The same calls on an SDK span (exported by the SDK's own encoder) and on a native span."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE, sampler=ALWAYS_ON, span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    parent = api.NonRecordingSpan(REMOTE)
    sdk = provider.get_tracer("loom").start_span(name, context=api.set_span_in_context(parent), kind=kind,
                                                  attributes=attributes)
    p = pipeline(limits)
    native = p.start_span(name, kind.value, attributes, parent, None)
    for step in steps:
        apply(sdk, step)
        apply(native, step)
    sdk.end()
    native.end()
    return normalized(encode_spans(exporter.get_finished_spans())), normalized(drain(p))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=ops, attributes=st.one_of(st.none(), attr_maps), small=st.booleans(),
       kind=st.sampled_from(list(SpanKind)))
def test_native_span_exports_what_the_sdk_exports_for_the_same_calls(steps, attributes, small, kind) -> None:
    limits = SpanLimits(**SMALL) if small else SpanLimits()
    want, got = both(limits, "op", kind, attributes, steps)
    assert got == want


def test_a_rich_span_field_by_field() -> None:
    """A readable instance of the property above: what a reviewer checks by eye."""
    steps = [
        ("set_attribute", "loom.topic", "orders"), ("set_attribute", "n", 3), ("set_attribute", "n", 4),
        ("set_attributes", {"f": 1.5, "tags": ["a", "b"], "flag": True}),
        ("add_event", "retry", {"attempt": 2}, 1234),
        ("add_link", SpanContext(0x1, 0x2, is_remote=True, trace_flags=TraceFlags(1)), {"why": "fan-in"}),
        ("set_status", (StatusCode.ERROR, "boom")), ("record_exception", ValueError("bad"), None, 99, True),
        ("update_name", "renamed"), ("end",), ("set_attribute", "late", 1),
    ]
    want, got = both(SpanLimits(), "orig", SpanKind.CONSUMER, {"loom.agent.id": "a1"}, steps)
    assert got == want
    span = got.resource_spans[0].scope_spans[0].spans[0]
    assert span.name == "renamed"
    assert span.trace_id == REMOTE.trace_id.to_bytes(16, "big")
    assert span.parent_span_id == REMOTE.span_id.to_bytes(8, "big")
    assert span.trace_state == "vendor=v1"
    assert [kv.key for kv in span.attributes] == ["loom.agent.id", "loom.topic", "n", "f", "tags", "flag"]
    assert span.status.code == 2 and span.status.message == "boom"
    assert [e.name for e in span.events] == ["retry", "exception"]
    assert got.resource_spans[0].resource == want.resource_spans[0].resource
    assert got.resource_spans[0].scope_spans[0].scope.name == "loom"


@pytest.mark.parametrize("sampler,native", [
    (ALWAYS_ON, "always_on"), (ALWAYS_OFF, "always_off"), (TraceIdRatioBased(0.3), "traceidratio"),
    (ParentBased(ALWAYS_ON), "parentbased_always_on"), (ParentBased(ALWAYS_OFF), "parentbased_always_off"),
    (ParentBased(TraceIdRatioBased(0.5)), "parentbased_traceidratio"),
])
def test_native_sampling_decides_as_the_sdk_sampler(sampler: Sampler, native: str) -> None:
    assert lt.native_sampler_of(sampler) == (native, getattr(getattr(sampler, "_root", sampler), "rate", None))
    name, ratio = lt.native_sampler_of(sampler)  # type: ignore[misc]
    p = pipeline(SpanLimits(), name, ratio)
    decided = {True: 0, False: 0}
    for flags in (None, 0, 1):
        for _ in range(400):
            env = None
            if flags is not None:
                env = Envelope()
                env.set_traceparent(f"00-{os.urandom(16).hex()}-{os.urandom(8).hex()}-0{flags}")
            span = p.start_span("s", 0, None, None, env)
            ctx = span.get_span_context()
            parent_ctx = env.parent_context() if env is not None else None
            want = sampler.should_sample(parent_ctx, ctx.trace_id, "s").decision.is_sampled()
            assert span.is_recording() == want == ctx.trace_flags.sampled, (flags, hex(ctx.trace_id))
            decided[want] += 1
            span.end()
    if native in ("traceidratio", "parentbased_traceidratio"):
        assert decided[True] > 100 and decided[False] > 100, decided


def test_an_unsampled_span_propagates_but_exports_nothing() -> None:
    p = pipeline(SpanLimits(), "parentbased_always_on")
    env = Envelope()
    env.set_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
    span = p.start_span("s", 4, {"a": 1}, None, env)
    assert not span.is_recording()
    ctx = span.get_span_context()
    assert ctx.is_valid and not ctx.trace_flags.sampled and ctx.trace_id == REMOTE.trace_id
    out = Envelope()
    out.inject_trace_context(span)
    assert out.traceparent == f"00-{REMOTE.trace_id:032x}-{ctx.span_id:016x}-00"
    span.set_attribute("b", 2)
    span.end()
    assert p.next_batch(0.0) is None


def test_a_native_span_is_an_opentelemetry_span() -> None:
    p = pipeline(SpanLimits())
    span = p.start_span("s", 0, None, None, None)
    assert isinstance(span, api.Span)
    with api.use_span(span, end_on_exit=True):
        assert api.get_current_span() is span
        # A span started by the SDK's tracer under it takes it as parent.
        child = TracerProvider(sampler=ALWAYS_ON).get_tracer("t").start_span("child")
        assert child.parent.span_id == span.get_span_context().span_id
        assert child.parent.is_remote is False
    assert not span.is_recording()
    assert span.get_span_context() is span.get_span_context(), "built once"
    req = drain(p)
    assert [s.name for s in req.resource_spans[0].scope_spans[0].spans] == ["s"]
    span.end()  # a second end does nothing
    assert p.next_batch(0.0) is None


def test_exiting_with_an_exception_records_it_as_the_sdk_span_does() -> None:
    p = pipeline(SpanLimits())
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=RESOURCE, sampler=ALWAYS_ON)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    for span in (provider.get_tracer("loom").start_span("s"), p.start_span("s", 0, None, None, None)):
        with pytest.raises(RuntimeError):
            with span:
                raise RuntimeError("nope")
    want = normalized(encode_spans(exporter.get_finished_spans()))
    got = normalized(drain(p))
    for req in (want, got):
        span = req.resource_spans[0].scope_spans[0].spans[0]
        span.trace_id = b""  # two roots
        for e in span.events:
            e.time_unix_nano = 0
    # The stack trace names the frame that raised, the same in both.
    assert got.resource_spans[0].scope_spans[0].spans[0] == want.resource_spans[0].scope_spans[0].spans[0]


def test_pipeline_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="max_export_batch_size .* must be <= max_queue_size"):
        _native.SpanPipeline(RESOURCE, SpanLimits(), max_queue_size=10, max_export_batch_size=20)
    with pytest.raises(ValueError, match="must be positive"):
        _native.SpanPipeline(RESOURCE, SpanLimits(), max_queue_size=0)
    with pytest.raises(ValueError, match="unknown sampler"):
        _native.SpanPipeline(RESOURCE, SpanLimits(), sampler="sometimes")
    p = _native.SpanPipeline(RESOURCE, SpanLimits())
    assert not p.native
    with pytest.raises(ValueError, match="no native spans"):
        p.start_span("s", 0)


def test_a_full_queue_drops_and_counts() -> None:
    p = _native.SpanPipeline(RESOURCE, SpanLimits(), sampler="always_on", max_queue_size=8, max_export_batch_size=4)
    for _ in range(20):
        p.start_span("s", 0).end()
    assert p.drops() == {"queue_full": 12, "export_failed": 0, "exported": 0, "queued": 8}
    for ok in (True, False):
        payload, count = p.next_batch(0.0)  # type: ignore[misc]
        assert count == 4 and len(Request.FromString(payload).resource_spans[0].scope_spans[0].spans) == 4
        p.batch_done(count, ok)
    assert p.drops() == {"queue_full": 12, "export_failed": 4, "exported": 4, "queued": 0}


def test_bsp_variables_are_checked(monkeypatch) -> None:
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "many")
    with pytest.raises(lt.TelemetryConfigError, match="OTEL_BSP_MAX_QUEUE_SIZE: 'many' is not an integer"):
        lt.NativeSpanProcessor(lt.otlp_exporter(endpoint="http://127.0.0.1:9", insecure=True), RESOURCE, None)
    monkeypatch.setenv("OTEL_BSP_MAX_QUEUE_SIZE", "10")
    monkeypatch.setenv("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "11")
    with pytest.raises(lt.TelemetryConfigError, match="must not exceed OTEL_BSP_MAX_QUEUE_SIZE"):
        lt.NativeSpanProcessor(lt.otlp_exporter(endpoint="http://127.0.0.1:9", insecure=True), RESOURCE, None)


class FlakyCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """A TraceService that answers UNAVAILABLE to its first `fail` calls, and keeps what it got
    with the request headers."""

    def __init__(self, fail: int) -> None:
        self.fail = fail
        self.calls = 0
        self.requests: List[bytes] = []
        self.headers: List[dict] = []

    def Export(self, request, context):  # noqa: N802 - the gRPC method name
        self.calls += 1
        if self.calls <= self.fail:
            context.abort(grpc.StatusCode.UNAVAILABLE, "warming up")
        self.requests.append(request.SerializeToString())
        self.headers.append(dict(context.invocation_metadata()))
        return trace_service_pb2.ExportTraceServiceResponse()


@pytest.fixture
def flaky() -> Iterator[Tuple[FlakyCollector, str]]:
    svc = FlakyCollector(fail=1)
    with trace_service(svc) as url:
        yield svc, url


@pytest.mark.parametrize("transport", ["rust", "python"])
def test_native_and_sdk_spans_share_one_pipeline_to_a_real_collector(flaky, transport: str) -> None:
    """Loom's provider as `init_telemetry` installs it, to a real gRPC TraceService that refuses
    the first call: a native span and a user span under it leave in the same request, under one
    resource, with the configured headers, after one retry; whichever sends it."""
    svc, url = flaky
    out = run_script("""
        import json
        from opentelemetry import trace
        from opentelemetry.trace import SpanKind
        from loom import tracing as lt
        from loom.envelope import Envelope
        lt.init_telemetry("shared", agent_id="a7")
        env = Envelope()
        env.set_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        with lt.start_current_span("agent.on_event", kind=SpanKind.CONSUMER, attributes={"loom.topic": "t"},
                                   envelope=env) as span:
            native = type(span).__name__
            with trace.get_tracer("user-code").start_as_current_span("user.work"):
                pass
        transport = lt._processor.transport
        lt.shutdown_telemetry()
        print(json.dumps({"native": native, "transport": transport, "drops": lt.span_drops()}))
    """, OTEL_EXPORTER_OTLP_ENDPOINT=url, OTEL_TRACES_SAMPLER="parentbased_always_on",
        OTEL_EXPORTER_OTLP_HEADERS="x-tenant=blue,Authorization=Bearer%20t0k", LOOM_SPAN_TRANSPORT=transport)
    assert out["native"] == "Span" and out["transport"] == transport
    assert svc.calls == 2, "refused once, retried once"
    assert len(svc.requests) == 1, "one batch, one request"
    assert svc.headers[0]["x-tenant"] == "blue" and svc.headers[0]["authorization"] == "Bearer t0k"
    req = Request.FromString(svc.requests[0])
    assert len(req.resource_spans) == 1
    rs = req.resource_spans[0]
    attrs = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
    assert attrs["service.name"] == "shared" and attrs["loom.agent.id"] == "a7"
    by_scope = {ss.scope.name: list(ss.spans) for ss in rs.scope_spans}
    (on_event,), (user,) = by_scope["loom"], by_scope["user-code"]
    assert user.parent_span_id == on_event.span_id and user.trace_id == on_event.trace_id
    assert on_event.parent_span_id == bytes.fromhex("00f067aa0ba902b7")
    assert on_event.flags == 0x300, "remote parent, as the SDK flags it"


def test_the_sdk_exporter_sends_what_rust_cannot(monkeypatch) -> None:
    """TLS, compression or an explicit choice keep the SDK's exporter; a bad choice is refused."""
    def transport(**kw: Any) -> str:
        return lt.NativeSpanProcessor(lt.otlp_exporter(**kw), RESOURCE, None).transport

    assert transport(endpoint="http://127.0.0.1:9", insecure=True) == "rust"
    assert transport(endpoint="https://127.0.0.1:9") == "python"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip")
    assert transport(endpoint="http://127.0.0.1:9", insecure=True) == "python"
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_COMPRESSION")
    monkeypatch.setenv("LOOM_SPAN_TRANSPORT", "python")
    assert transport(endpoint="http://127.0.0.1:9", insecure=True) == "python"
    monkeypatch.setenv("LOOM_SPAN_TRANSPORT", "carrier-pigeon")
    with pytest.raises(lt.TelemetryConfigError, match="LOOM_SPAN_TRANSPORT: 'carrier-pigeon'"):
        transport(endpoint="http://127.0.0.1:9", insecure=True)
    p = pipeline(SpanLimits())
    with pytest.raises(ValueError, match='header "bad header" is not a valid gRPC metadata name'):
        p.start_export("127.0.0.1:9", [("bad header", "x")], 1.0, [14])


def test_a_user_span_processor_turns_native_spans_off(collector) -> None:
    """A processor the user adds to Loom's provider must see every span, Loom's own included."""
    cap, url = collector
    out = run_script("""
        import json
        from opentelemetry import trace
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from opentelemetry.trace import SpanKind
        from loom import tracing as lt
        provider = lt.init_telemetry("mine")
        mine = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(mine))
        with lt.start_current_span("agent.emit", kind=SpanKind.PRODUCER, attributes={}) as span:
            kind = type(span).__name__
        lt.shutdown_telemetry()
        print(json.dumps({"kind": kind, "mine": [s.name for s in mine.get_finished_spans()]}))
    """, OTEL_EXPORTER_OTLP_ENDPOINT=url, OTEL_TRACES_SAMPLER="always_on")
    assert out == {"kind": "_Span", "mine": ["agent.emit"]}
    assert [s.name for s in cap.spans()] == ["agent.emit"]


def test_native_flood_with_collector_down_stays_bounded_and_counts_drops() -> None:
    dead = free_port()
    out = run_script(f"""
        import json, resource
        from opentelemetry.trace import SpanKind
        from loom import tracing
        tracing.init_telemetry("flood", "http://127.0.0.1:{dead}")
        def flood(n):
            for i in range(n):
                with tracing.start_current_span("agent.emit", kind=SpanKind.PRODUCER,
                                                attributes={{"i": i, "payload": "x" * 200}}):
                    pass
        flood(20000)
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        flood(200000)
        rss2 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(json.dumps({{"rss1_kib": rss1, "rss2_kib": rss2, **tracing.span_drops()}}))
    """, OTEL_EXPORTER_OTLP_TIMEOUT="1", OTEL_TRACES_SAMPLER="always_on")
    # 200 000 more spans of ~0.4 KiB would be ~80 MiB if kept; the queue holds 2048.
    assert out["rss2_kib"] - out["rss1_kib"] < 16 * 1024, out
    assert out["queued"] <= 2048, out
    assert out["queue_full"] > 150000, out
    # Every span is accounted for, but for at most one batch (512) in the exporter's hands.
    assert 220000 - 512 <= out["queue_full"] + out["export_failed"] + out["queued"] <= 220000, out


def test_a_forked_child_exports_its_own_spans_with_fresh_ids(collector) -> None:
    cap, url = collector
    out = run_script("""
        import json, os
        from opentelemetry.trace import SpanKind
        from loom import tracing as lt
        lt.init_telemetry("forky")
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            with lt.start_current_span("child", kind=SpanKind.INTERNAL, attributes={}) as s:
                os.write(w, s.get_span_context().trace_id.to_bytes(16, "big"))
            lt.shutdown_telemetry()
            os._exit(0)
        with lt.start_current_span("parent", kind=SpanKind.INTERNAL, attributes={}) as s:
            mine = s.get_span_context().trace_id
        theirs = int.from_bytes(os.read(r, 16), "big")
        os.waitpid(pid, 0)
        lt.shutdown_telemetry()
        print(json.dumps({"same": mine == theirs}))
    """, OTEL_EXPORTER_OTLP_ENDPOINT=url, OTEL_TRACES_SAMPLER="always_on")
    assert out == {"same": False}
    assert sorted(s.name for s in cap.spans()) == ["child", "parent"]


@pytest.mark.parametrize("limits", [SpanLimits(), SpanLimits(max_span_attributes=5, max_attribute_length=4)])
@pytest.mark.parametrize("event_type,thread,corr", [("", None, None), ("reading", "th-1", "c-9"), ("", "", "c")])
def test_event_span_attributes_are_the_dicts(limits, event_type, thread, corr) -> None:
    """`start_event_span` builds in Rust what `event_attributes` builds as a dict, limits included."""
    env = Envelope(thread_id=thread, correlation_id=corr)
    args = ("agent-1", "orders.new", "8d4f5bde-3b4c", event_type, env, "send")
    p = pipeline(limits)
    p.start_event_span("agent.emit", SpanKind.PRODUCER.value, *args[:4], env, "send", api.INVALID_SPAN).end()
    p.start_span("agent.emit", SpanKind.PRODUCER.value, lt.event_attributes(*args), api.INVALID_SPAN).end()
    spans = list(drain(p).resource_spans[0].scope_spans[0].spans)
    assert len(spans) == 2
    assert list(spans[0].attributes) == list(spans[1].attributes)
    assert spans[0].dropped_attributes_count == spans[1].dropped_attributes_count
    want = ["loom.agent.id", "loom.topic", "loom.event.id", "messaging.system", "messaging.destination.name",
            "messaging.message.id", "messaging.operation.type"]
    want += [k for k, v in (("loom.event.type", event_type), ("loom.thread_id", thread),
                            ("loom.correlation_id", corr)) if v]
    # A full map drops its oldest pairs.
    assert [kv.key for kv in spans[0].attributes] == want[-limits.max_span_attributes:]


class StalledCollector(trace_service_pb2_grpc.TraceServiceServicer):
    """Accepts the call and never answers in time."""

    def Export(self, request, context):  # noqa: N802 - the gRPC method name
        time.sleep(3)
        return trace_service_pb2.ExportTraceServiceResponse()


def test_shutdown_with_a_stalled_collector_gives_up_instead_of_waiting_per_batch() -> None:
    """Eight batches queued, a collector that never answers within the 1 s export timeout, a 2 s
    flush at shutdown: once the flushes have run out, the first failure while closing ends the
    wait (instead of a full timeout for each batch left), and every span is counted as lost."""
    with trace_service(StalledCollector()) as url:
        out = run_script("""
            import json, time
            from opentelemetry.trace import SpanKind
            from loom import tracing as lt
            lt.init_telemetry("stalled")
            for i in range(4096):
                with lt.start_current_span("s", kind=SpanKind.INTERNAL, attributes={"i": i}):
                    pass
            t0 = time.monotonic()
            lt.shutdown_telemetry(timeout_s=2.0)
            print(json.dumps({"shutdown_s": time.monotonic() - t0, "transport": "rust", **lt.span_drops()}))
        """, OTEL_EXPORTER_OTLP_ENDPOINT=url, OTEL_TRACES_SAMPLER="always_on", OTEL_EXPORTER_OTLP_TIMEOUT="1",
            OTEL_BSP_EXPORT_TIMEOUT="1000", OTEL_BSP_MAX_QUEUE_SIZE="4096", OTEL_BSP_SCHEDULE_DELAY="60000")
    assert out["queue_full"] == 0 and out["queued"] == 0, out
    assert out["export_failed"] == 4096, out
    # The 2 s flush, the processor's own 1 s flush (OTEL_BSP_EXPORT_TIMEOUT), the batch in flight
    # when the pipeline closed: about 4 s; eight batches at 1 s each would take 8 s.
    assert out["shutdown_s"] < 6, out
