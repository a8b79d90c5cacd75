"""Where a traced Python agent hop spends its time: each piece of the OpenTelemetry Python path
that `agent.emit` / `agent.on_event` take, timed alone in one process, in µs per span.

Run: .venv/bin/python loom-sdk-py/bench/span_costs.py [OTLP_ENDPOINT]
With an endpoint (a running loom-sidecar, e.g. the one `bench_agents.py` starts), the gRPC export
of an encoded batch is timed too.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, List, Tuple

from opentelemetry import context as otel_context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import SpanKind

from loom import _native
from loom import tracing as lt
from loom.envelope import Envelope

N = 5000
ROUNDS = 5
BATCH = 512


class Keep(SpanExporter):
    """Keeps spans only when asked: a growing list would slow later rows by its GC scans."""

    def __init__(self) -> None:
        self.spans: List[ReadableSpan] = []
        self.keeping = False

    def export(self, spans):  # type: ignore[no-untyped-def]
        if self.keeping:
            self.spans.extend(spans)
        return SpanExportResult.SUCCESS


def per_call(fn: Callable[[], object], n: int = N) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    endpoint = sys.argv[1] if len(sys.argv) > 1 else None
    resource = Resource.create({"service.name": "bench", "service.instance.id": "x", lt.ATTR_AGENT_ID: "a"})
    keep = Keep()
    provider = TracerProvider(resource=resource, sampler=ALWAYS_ON)
    # Simple processor into a list: span creation, attributes and end, without the batch thread.
    provider.add_span_processor(SimpleSpanProcessor(keep))
    tracer = provider.get_tracer(lt.TRACER_NAME)
    attrs = {
        lt.ATTR_AGENT_ID: "bench-b",
        lt.ATTR_TOPIC: "bench.data",
        lt.ATTR_EVENT_ID: "8d4f5bde-3b4c-4d0e-9b7e-2a1f0c9d8e7f",
        "messaging.system": "loom",
        "messaging.destination.name": "bench.data",
        "messaging.message.id": "8d4f5bde-3b4c-4d0e-9b7e-2a1f0c9d8e7f",
        "messaging.operation.type": "process",
    }
    env = Envelope(trace_id="4bf92f3577b34da6a3ce929d0e0e4736", span_id="00f067aa0ba902b7", trace_flags=1)

    def span_only() -> None:
        s = tracer.start_span(lt.SPAN_ON_EVENT, kind=SpanKind.CONSUMER, attributes=attrs)
        s.end()

    def span_as_current() -> None:
        with tracer.start_as_current_span(lt.SPAN_ON_EVENT, kind=SpanKind.CONSUMER, attributes=attrs):
            pass

    def attach_detach() -> None:
        otel_context.detach(otel_context.attach(otel_context.get_current()))

    def extract_parent() -> None:
        env.parent_context()

    def span_scope() -> None:
        with lt.SpanScope(tracer.start_span(lt.SPAN_ON_EVENT, kind=SpanKind.CONSUMER, attributes=attrs), False):
            pass

    made = tracer.start_span("x")

    keep.keeping = True
    for _ in range(BATCH):
        span_only()
    keep.keeping = False
    batch = keep.spans[:BATCH]

    def py_encode() -> None:
        encode_spans(batch).SerializeToString()

    def py_build() -> None:
        encode_spans(batch)

    def native_encode() -> None:
        _native.encode_spans(batch)

    # Native spans: the pipeline `init_telemetry` installs, without its worker (the queue is
    # drained here, so a full queue never turns a row into the cheaper drop path).
    from opentelemetry.sdk.trace import SpanLimits

    pipe = _native.SpanPipeline(resource, SpanLimits(), sampler="always_on", schedule_delay_millis=0,
                                max_queue_size=BATCH * 4)

    def drained(fn: Callable[[], object]) -> Callable[[], object]:
        count = [0]

        def run() -> object:
            out = fn()
            count[0] += 1
            if count[0] % BATCH == 0:
                while pipe.next_batch(0.0) is not None:
                    pass
            return out

        return run

    def native_span() -> None:
        pipe.start_span(lt.SPAN_ON_EVENT, SpanKind.CONSUMER.value, attrs, None, env).end()

    def native_scope() -> None:
        lt._native_pipeline = pipe
        try:
            with lt.start_current_span(lt.SPAN_ON_EVENT, kind=SpanKind.CONSUMER, attributes=attrs, envelope=env,
                                       record_exception=False):
                pass
        finally:
            lt._native_pipeline = None

    def native_event_scope() -> None:
        lt._native_pipeline = pipe
        try:
            with lt.start_event_span(lt.SPAN_ON_EVENT, kind=SpanKind.CONSUMER, agent_id="bench-b", topic="bench.data",
                                     event_id="8d4f5bde-3b4c-4d0e-9b7e-2a1f0c9d8e7f", event_type="", env=env,
                                     operation="process", envelope=env, record_exception=False):
                pass
        finally:
            lt._native_pipeline = None

    native_made = pipe.start_span("x", 0)

    def native_batch() -> None:
        for _ in range(BATCH):
            pipe.start_span(lt.SPAN_ON_EVENT, SpanKind.CONSUMER.value, attrs, None, env).end()

    def native_batch_and_encode() -> None:
        native_batch()
        pipe.next_batch(0.0)

    # (row, function, calls, spans per call)
    cases: List[Tuple[str, Callable[[], object], int, int]] = [
        ("span start + 7 attributes + end (start_span)", span_only, N, 1),
        ("same, as current span (start_as_current_span)", span_as_current, N, 1),
        ("same, through loom.tracing.SpanScope (agent.emit / on_event)", span_scope, N, 1),
        ("trace.get_tracer (loom.tracing.get_tracer called it per span)", lambda: provider.get_tracer(lt.TRACER_NAME), N, 1),
        ("context attach + detach", attach_detach, N, 1),
        ("extract parent context from an Envelope", extract_parent, N, 1),
        ("inject trace context into an Envelope", lambda: env.inject_trace_context(made), N, 1),
        ("OTLP encode, SDK encoder (build messages)", py_build, 20, BATCH),
        ("OTLP encode, SDK encoder (build + serialize)", py_encode, 20, BATCH),
        ("OTLP encode, loom._native.encode_spans", native_encode, 20, BATCH),
        ("native span: start (Envelope parent) + 7 attributes + end", drained(native_span), N, 1),
        ("native span, as current, through loom.tracing.start_current_span", drained(native_scope), N, 1),
        ("native event span, as current, attributes built in Rust (start_event_span: agent.emit / on_event)",
         drained(native_event_scope), N, 1),
        ("inject trace context from a native span", lambda: Envelope().inject_trace_context(native_made), N, 1),
        ("native: 512 spans ended into the queue", native_batch, 20, BATCH),
        ("native: 512 spans ended + batch encoded (off the GIL)", native_batch_and_encode, 20, BATCH),
    ]
    exporters = []
    if endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exp = OTLPSpanExporter(endpoint=endpoint, insecure=True)
        native = lt.native_otlp_exporter(endpoint=endpoint, insecure=True)
        exporters = [exp, native]
        cases.append(("OTLP/gRPC export() with the SDK encoder", lambda: exp.export(batch), 20, BATCH))
        cases.append(("OTLP/gRPC export() with loom._native", lambda: native.export(batch), 20, BATCH))
    # Interleaved rounds, best of each: the machine is shared.
    best = {name: float("inf") for name, *_ in cases}
    for _ in range(ROUNDS):
        for name, fn, n, per in cases:
            best[name] = min(best[name], per_call(fn, n) / per)
    for e in exporters:
        e.shutdown()
    print(f"OpenTelemetry Python path, µs per span (best of {ROUNDS} interleaved rounds; encoding in batches of {BATCH})")
    print("| component | µs/span |")
    print("|---|---:|")
    for name, us in best.items():
        print(f"| {name} | {us:.1f} |")


if __name__ == "__main__":
    main()
