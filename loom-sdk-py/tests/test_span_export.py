"""The native OTLP span encoder (`loom._native.encode_spans`) and the exporter `init_telemetry`
installs with it, against the official OpenTelemetry Python SDK encoder and proto types, a real
gRPC TraceService on loopback and a real loom-bridge."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import threading
from typing import Iterator, List

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from loom import _native
from loom import tracing as lt
from sdk_harness import BIN_DIR, REPO, BridgeProcess, free_port, trace_service

Request = trace_service_pb2.ExportTraceServiceRequest


def sdk_spans() -> List[ReadableSpan]:
    """Spans made through the SDK's public API: every kind, events, links, status, trace state,
    two resources and two scopes (one with version, schema URL and attributes)."""
    out = InMemorySpanExporter()
    providers = []
    for name in ("agent-a", "agent-b"):
        p = TracerProvider(resource=Resource.create({"service.name": name, "n": 1, "tags": ("x", "y")}, "https://schema/1"),
                           sampler=ALWAYS_ON)
        p.add_span_processor(SimpleSpanProcessor(out))
        providers.append(p)
    remote = SpanContext(0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7, is_remote=True,
                         trace_flags=TraceFlags(1), trace_state=TraceState([("vendor", "v1"), ("k", "2")]))
    from opentelemetry import trace as api

    parent_ctx = api.set_span_in_context(api.NonRecordingSpan(remote))
    for p in providers:
        loom_tracer = p.get_tracer("loom")
        lib = p.get_tracer("opentelemetry.instrumentation.openai_v2", "2.4b0", "https://schema/2",
                           attributes={"scope.attr": True})
        for kind in SpanKind:
            with loom_tracer.start_as_current_span(f"s.{kind.name}", context=parent_ctx, kind=kind, attributes={
                "str": "v", "int": -7, "float": 1.5, "bool": False, "ints": [1, 2], "strs": ("a", "b"),
                "floats": [0.5], "bools": [True, False], "empty": "",
            }) as s:
                s.add_event("ev", {"e": 1, "when": "now"}, timestamp=123)
                s.add_event("bare")
                with lib.start_as_current_span("chat model", kind=SpanKind.CLIENT,
                                               links=[Link(remote, {"link.attr": 3}), Link(s.get_span_context())]) as c:
                    c.set_status(Status(StatusCode.ERROR, "boom"))
                    c.record_exception(ValueError("bad input"))
                s.set_status(StatusCode.OK)
    return list(out.get_finished_spans())


def odd_spans() -> List[ReadableSpan]:
    """Spans built directly (as exporters may receive them): values the SDK API would not accept
    (bytes, mappings, None, an int beyond 64 bits, a set), no scope, no parent, unended."""
    ctx = SpanContext(1, 2, is_remote=False)
    attrs = {
        "bytes": b"\x00\xff", "map": {"a": 1, "b": [True, None]}, "none": None, "huge": 2**70,
        "set": {1}, "nested": [[1, "a"], {"k": "v"}], "ok": "kept",
    }
    return [
        ReadableSpan(name="raw", context=ctx, parent=None, attributes=attrs, events=(Event("e", {"bytes": b"z"}, 5),),
                     links=(), kind=SpanKind.INTERNAL, status=Status(StatusCode.UNSET), start_time=10, end_time=None,
                     resource=Resource({}), instrumentation_scope=None),
        ReadableSpan(name="raw2", context=SpanContext(2**128 - 1, 2**64 - 1, is_remote=False),
                     parent=SpanContext(1, 3, is_remote=False), kind=SpanKind.SERVER, start_time=1, end_time=2,
                     resource=Resource({"r": "x"}), instrumentation_scope=InstrumentationScope("lib", None, None)),
    ]


@pytest.mark.parametrize("make", [sdk_spans, odd_spans])
def test_encoding_is_the_sdk_encoders(make) -> None:
    spans = make()
    native = _native.encode_spans(spans)
    sdk = encode_spans(spans)
    decoded = Request.FromString(native)
    assert decoded == sdk, "the decoded request differs from the SDK encoder's"
    assert native == sdk.SerializeToString()
    assert sum(len(ss.spans) for rs in decoded.resource_spans for ss in rs.scope_spans) == len(spans)


def test_grouping_by_resource_then_scope() -> None:
    decoded = Request.FromString(_native.encode_spans(sdk_spans()))
    services = [kv.value.string_value for rs in decoded.resource_spans for kv in rs.resource.attributes if kv.key == "service.name"]
    assert services == ["agent-a", "agent-b"]
    for rs in decoded.resource_spans:
        assert rs.schema_url == "https://schema/1"
        assert [ss.scope.name for ss in rs.scope_spans] == ["opentelemetry.instrumentation.openai_v2", "loom"]
        lib = rs.scope_spans[0]
        assert (lib.scope.version, lib.schema_url) == ("2.4b0", "https://schema/2")
        chat = lib.spans[0]
        assert chat.status.code == chat.status.STATUS_CODE_ERROR and chat.status.message == "boom"
        assert [e.name for e in chat.events] == ["exception"]
        assert chat.links[0].trace_id.hex() == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_empty_batch_and_bad_input() -> None:
    assert Request.FromString(_native.encode_spans([])) == Request()
    with pytest.raises(AttributeError):
        _native.encode_spans([object()])
    with pytest.raises(TypeError):
        _native.encode_spans(5)


class Capture(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self) -> None:
        self.requests: List[bytes] = []
        self.cond = threading.Condition()

    def Export(self, request, context):  # noqa: N802 - the gRPC method name
        with self.cond:
            self.requests.append(request.SerializeToString())
            self.cond.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list:
        return [s for raw in self.requests for rs in Request.FromString(raw).resource_spans for ss in rs.scope_spans for s in ss.spans]


@pytest.fixture
def collector() -> Iterator[tuple]:
    cap = Capture()
    with trace_service(cap) as url:
        yield cap, url


def test_native_exporter_sends_what_the_sdk_exporter_sends(collector) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    cap, url = collector
    spans = sdk_spans()
    for exp in (lt.native_otlp_exporter(endpoint=url, insecure=True), OTLPSpanExporter(endpoint=url, insecure=True)):
        assert exp.export(spans) == SpanExportResult.SUCCESS
        exp.shutdown()
    assert len(cap.requests) == 2
    assert cap.requests[0] == cap.requests[1]


def test_encoder_choice(monkeypatch) -> None:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    monkeypatch.setenv("LOOM_SPAN_ENCODER", "python")
    assert type(lt.otlp_exporter(endpoint="http://127.0.0.1:9", insecure=True)) is OTLPSpanExporter
    monkeypatch.setenv("LOOM_SPAN_ENCODER", "native")
    assert type(lt.otlp_exporter(endpoint="http://127.0.0.1:9", insecure=True)).__name__ == "NativeOTLPSpanExporter"
    monkeypatch.setenv("LOOM_SPAN_ENCODER", "rust")
    with pytest.raises(lt.TelemetryConfigError, match="LOOM_SPAN_ENCODER: 'rust'"):
        lt.otlp_exporter(endpoint="http://127.0.0.1:9", insecure=True)


def _scoped(use_sdk: bool, record: bool, raise_: "BaseException | None") -> None:
    from opentelemetry import trace as api

    tracer = lt.get_tracer()
    attrs = {"k": "v"}
    cm = (tracer.start_as_current_span("s", kind=SpanKind.PRODUCER, attributes=attrs, record_exception=record,
                                       set_status_on_exception=record)
          if use_sdk else lt.start_current_span("s", kind=SpanKind.PRODUCER, attributes=attrs, record_exception=record))
    try:
        with cm as span:
            assert api.get_current_span() is span
            with tracer.start_as_current_span("child"):
                pass
            if raise_ is not None:
                raise raise_
    except BaseException as e:  # noqa: BLE001 - the raised one comes back out unchanged
        assert e is raise_
    assert api.get_current_span() is api.INVALID_SPAN


@pytest.mark.parametrize("record", [True, False])
@pytest.mark.parametrize("raise_", [None, ValueError("bad"), KeyboardInterrupt()])
def test_span_scope_does_what_start_as_current_span_does(spans, record, raise_) -> None:
    def shape(s: ReadableSpan) -> tuple:
        return (s.name, s.kind, dict(s.attributes or {}), s.status.status_code, s.status.description,
                [(e.name, dict(e.attributes or {})) for e in s.events], s.parent is not None, s.end_time is not None)

    got = []
    for use_sdk in (True, False):
        spans.clear()
        _scoped(use_sdk, record, raise_)
        done = spans.get_finished_spans()
        child, parent = done
        assert child.parent.span_id == parent.context.span_id
        got.append([shape(s) for s in done])
    assert got[0][1][0] == "s"
    # exception.stacktrace text differs by the frames in between; the rest must not.
    for sdk_s, ours in zip(*got):
        strip = lambda sh: sh[:5] + ([(n, {k: v for k, v in a.items() if k != "exception.stacktrace"}) for n, a in sh[5]],) + sh[6:]  # noqa: E731
        assert strip(sdk_s) == strip(ours)


def run_script(body: str, **env: str) -> dict:
    """Runs `body` in a fresh interpreter (the global TracerProvider is set once per process)."""
    full_env = {**os.environ, "PYTHONPATH": str(REPO / "loom-sdk-py" / "tests"), **env}
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(body)], capture_output=True, text=True, timeout=120, env=full_env)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not (BIN_DIR / "loom-bridge").is_file(), reason="needs a built loom-bridge")
def test_user_and_library_spans_nest_under_on_event_through_the_default_exporter(collector) -> None:
    cap, url = collector
    bridge = BridgeProcess().start()
    try:
        run_script(f"""
            import asyncio, json
            from opentelemetry import trace
            import loom

            async def on_event(ctx, topic, msg):
                with trace.get_tracer("user-code").start_as_current_span("user.work"):
                    lib = trace.get_tracer("opentelemetry.instrumentation.openai_v2", "2.4b0")
                    with lib.start_as_current_span("chat gpt-4o-mini", kind=trace.SpanKind.CLIENT):
                        pass
                done.set()

            async def main():
                global done
                done = asyncio.Event()
                b = loom.Agent("nest-b", topics=["nest.*"], on_event=on_event, bridge_addr="{bridge.url}")
                a = loom.Agent("nest-a", bridge_addr="{bridge.url}")
                async with b, a:
                    await a.context.emit("nest.x", b"hi")
                    await asyncio.wait_for(done.wait(), 20)
            asyncio.run(main())
            loom.shutdown_telemetry()
            print(json.dumps({{}}))
        """, OTEL_EXPORTER_OTLP_ENDPOINT=url, OTEL_TRACES_SAMPLER="always_on", LOOM_SPAN_ENCODER="native")
    finally:
        bridge.stop()
    spans = {s.name: s for s in cap.spans()}
    on_event, user, chat = spans["agent.on_event"], spans["user.work"], spans["chat gpt-4o-mini"]
    assert user.parent_span_id == on_event.span_id
    assert chat.parent_span_id == user.span_id
    assert chat.trace_id == user.trace_id == on_event.trace_id == spans["agent.emit"].trace_id


def test_flood_with_collector_down_stays_bounded_and_counts_drops() -> None:
    dead = free_port()
    out = run_script(f"""
        import json, resource, time
        from opentelemetry import trace
        from opentelemetry.sdk.trace.sampling import ALWAYS_ON
        from loom import tracing

        tracing.init_telemetry("flood", "http://127.0.0.1:{dead}", sampler=ALWAYS_ON)
        tracer = trace.get_tracer("flood")
        def flood(n):
            for i in range(n):
                with tracer.start_as_current_span("s", attributes={{"i": i, "payload": "x" * 200}}):
                    pass
        flood(20000)
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        flood(100000)
        rss2 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        drops = tracing.span_drops()
        print(json.dumps({{"rss1_kib": rss1, "rss2_kib": rss2, **drops}}))
    """, OTEL_EXPORTER_OTLP_TIMEOUT="1")
    # 100 000 more spans of ~0.5 KiB each would be ~50 MiB if kept; the queue holds 2048.
    assert out["rss2_kib"] - out["rss1_kib"] < 16 * 1024, out
    assert out["queued"] <= 2048, out
    assert out["queue_full"] > 50000, out
    # Every span is accounted for, but for at most one batch (512) in the exporter's hands.
    assert 120000 - 512 <= out["queue_full"] + out["export_failed"] + out["queued"] <= 120000, out
