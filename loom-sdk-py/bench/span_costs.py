"""Where a traced Python agent hop spends its time: each piece of the OpenTelemetry Python path
that `agent.emit` / `agent.on_event` take, timed alone in one process, in µs per span.

Run: .venv/bin/python loom-sdk-py/bench/span_costs.py [OTLP_ENDPOINT]
With an endpoint (a running loom-sidecar, e.g. the one `bench_agents.py` starts), the gRPC export
of an encoded batch is timed too.
"""

from __future__ import annotations

import sys
import time
from typing import Callable, List

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

N = 20000
BATCH = 512


class Keep(SpanExporter):
    def __init__(self) -> None:
        self.spans: List[ReadableSpan] = []

    def export(self, spans):  # type: ignore[no-untyped-def]
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

    def bare() -> None:
        with tracer.start_as_current_span("x"):
            pass

    def inject() -> None:
        with tracer.start_as_current_span("x") as s:
            env.inject_trace_context(s)

    rows = []
    rows.append(("span start + 7 attributes + end (start_span)", per_call(span_only)))
    rows.append(("same, as current span (start_as_current_span)", per_call(span_as_current)))
    rows.append(("context attach + detach", per_call(attach_detach)))
    rows.append(("trace.get_tracer (as loom.tracing.get_tracer calls it per span)", per_call(lambda: provider.get_tracer(lt.TRACER_NAME))))
    rows.append(("extract parent context from an Envelope", per_call(extract_parent)))
    rows.append(("inject trace context into an Envelope", per_call(inject) - per_call(bare)))
    keep.spans.clear()
    for _ in range(BATCH):
        span_only()
    batch = keep.spans[:BATCH]

    def py_encode() -> None:
        encode_spans(batch).SerializeToString()

    def py_build() -> None:
        encode_spans(batch)

    def native_encode() -> None:
        _native.encode_spans(batch)

    rows.append(("OTLP encode, SDK encoder (build messages)", per_call(py_build, 20) / BATCH))
    rows.append(("OTLP encode, SDK encoder (build + serialize)", per_call(py_encode, 20) / BATCH))
    rows.append(("OTLP encode, loom._native.encode_spans", per_call(native_encode, 20) / BATCH))
    if endpoint:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exp = OTLPSpanExporter(endpoint=endpoint, insecure=True)
        native = lt.native_otlp_exporter(endpoint=endpoint, insecure=True)
        rows.append(("OTLP/gRPC export with SDK encoder (export())", per_call(lambda: exp.export(batch), 20) / BATCH))
        rows.append(("OTLP/gRPC export with native encoder (export())", per_call(lambda: native.export(batch), 20) / BATCH))
        exp.shutdown()
        native.shutdown()
    print(f"OpenTelemetry Python path, µs per span ({N} spans; encoding in batches of {BATCH})")
    print("| component | µs/span |")
    print("|---|---:|")
    for name, us in rows:
        print(f"| {name} | {us:.1f} |")


if __name__ == "__main__":
    main()
