"""Interop with the official OpenTelemetry Python SDK and exporters: spans sent through the
real sidecar arrive at three backends (gRPC, HTTP, file) with every field intact."""

from __future__ import annotations

import base64
import time

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
import grpc
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Link, SpanContext, SpanKind, Status, StatusCode, TraceFlags, TraceState

from sidecar_harness import base_config, read_file_spans

pytestmark = pytest.mark.timeout(60)

ATTRS = {
    "str": "hello", "empty": "", "unicode": "ünïcødé ✓ 漢字", "bool_t": True, "bool_f": False,
    "int": 42, "neg": -7, "big": 2**62, "float": 3.25, "zero": 0.0,
    "str_arr": ("a", "b", ""), "bool_arr": (True, False), "int_arr": (1, -2, 3), "float_arr": (0.5, 1.5),
}


def make_spans(provider: TracerProvider) -> None:
    tracer = provider.get_tracer("interop.scope", "1.2.3")
    linked = SpanContext(trace_id=0x0AF7651916CD43DD8448EB211C80319C, span_id=0xB7AD6B7169203331,
                         is_remote=True, trace_flags=TraceFlags(1), trace_state=TraceState([("congo", "t61rcWkgMzE")]))
    with tracer.start_as_current_span("root", kind=SpanKind.SERVER, attributes=ATTRS,
                                      links=[Link(linked, {"link.attr": "x", "n": 1})]) as root:
        root.add_event("ev.plain")
        root.add_event("ev.attrs", {"k": "v", "i": 3, "arr": (1, 2)}, timestamp=time.time_ns() - 1000)
        for kind in (SpanKind.CLIENT, SpanKind.PRODUCER, SpanKind.CONSUMER, SpanKind.INTERNAL):
            with tracer.start_as_current_span(f"child.{kind.name.lower()}", kind=kind) as c:
                c.set_attribute("kind", kind.name)
        with tracer.start_as_current_span("failing") as f:
            f.set_status(Status(StatusCode.ERROR, "it broke: ✗"))
        root.set_status(Status(StatusCode.OK))


def any_value(v):
    """A protobuf AnyValue as a Python value."""
    which = v.WhichOneof("value")
    if which == "array_value":
        return tuple(any_value(x) for x in v.array_value.values)
    if which == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, which) if which else None


def json_value(v: dict):
    """An OTLP/JSON AnyValue as a Python value (64-bit ints are strings in OTLP/JSON)."""
    if "arrayValue" in v:
        return tuple(json_value(x) for x in v["arrayValue"].get("values", []))
    if "intValue" in v:
        return int(v["intValue"])
    for k in ("stringValue", "boolValue", "doubleValue"):
        if k in v:
            return v[k]
    return None


def normalize_pb(resource, scope, span) -> dict:
    return {
        "trace_id": span.trace_id.hex(), "span_id": span.span_id.hex(), "parent": span.parent_span_id.hex(),
        "name": span.name, "kind": span.kind, "start": span.start_time_unix_nano, "end": span.end_time_unix_nano,
        "attrs": {kv.key: any_value(kv.value) for kv in span.attributes},
        "events": [(e.name, e.time_unix_nano, {kv.key: any_value(kv.value) for kv in e.attributes}) for e in span.events],
        "links": [(l.trace_id.hex(), l.span_id.hex(), l.trace_state, {kv.key: any_value(kv.value) for kv in l.attributes}) for l in span.links],
        "status": (span.status.code, span.status.message),
        "resource": {kv.key: any_value(kv.value) for kv in resource.attributes},
        "scope": (scope.name, scope.version),
    }


def hexid(v: str) -> str:
    if not v:
        return ""
    if len(v) in (16, 32) and all(c in "0123456789abcdef" for c in v):
        return v
    return base64.b64decode(v).hex()


def normalize_json(resource, scope, span) -> dict:
    attrs = lambda items: {kv["key"]: json_value(kv.get("value", {})) for kv in items or []}  # noqa: E731
    return {
        "trace_id": hexid(span["traceId"]), "span_id": hexid(span["spanId"]), "parent": hexid(span.get("parentSpanId", "")),
        "name": span["name"], "kind": span.get("kind", 0),
        "start": int(span["startTimeUnixNano"]), "end": int(span["endTimeUnixNano"]),
        "attrs": attrs(span.get("attributes")),
        "events": [(e["name"], int(e["timeUnixNano"]), attrs(e.get("attributes"))) for e in span.get("events", [])],
        "links": [(hexid(l["traceId"]), hexid(l["spanId"]), l.get("traceState", ""), attrs(l.get("attributes"))) for l in span.get("links", [])],
        "status": (span.get("status", {}).get("code", 0), span.get("status", {}).get("message", "")),
        "resource": attrs(resource.get("attributes")),
        "scope": (scope.get("name", ""), scope.get("version", "")),
    }


def normalize_sdk(span) -> dict:
    """What the SDK itself recorded, in the same shape."""
    def val(v):
        return tuple(v) if isinstance(v, (list, tuple)) else v
    return {
        "trace_id": f"{span.context.trace_id:032x}", "span_id": f"{span.context.span_id:016x}",
        "parent": f"{span.parent.span_id:016x}" if span.parent else "",
        "name": span.name, "kind": span.kind.value + 1, "start": span.start_time, "end": span.end_time,
        "attrs": {k: val(v) for k, v in span.attributes.items()},
        "events": [(e.name, e.timestamp, {k: val(v) for k, v in e.attributes.items()}) for e in span.events],
        "links": [(f"{l.context.trace_id:032x}", f"{l.context.span_id:016x}", l.context.trace_state.to_header(),
                   {k: val(v) for k, v in l.attributes.items()}) for l in span.links],
        "status": ({StatusCode.UNSET: 0, StatusCode.OK: 1, StatusCode.ERROR: 2}[span.status.status_code],
                   span.status.description or ""),
        "resource": {k: val(v) for k, v in span.resource.attributes.items()},
        "scope": (span.instrumentation_scope.name, span.instrumentation_scope.version or ""),
    }


def assert_same(got: list, expected: list, backend: str) -> None:
    """Field-by-field comparison with a message naming the span, field and backend."""
    assert [g["span_id"] for g in got] == [e["span_id"] for e in expected], f"{backend}: span ids"
    for g, e in zip(got, expected):
        for key in e:
            assert g[key] == e[key], f"{backend}: span {e['name']} field {key}: {g[key]!r} != {e[key]!r}"


@pytest.mark.parametrize("transport", ["grpc", "http-gzip"])
def test_every_field_survives_the_sidecar_to_three_backends(transport, sidecars, grpc_capture, http_capture, tmp_path) -> None:
    out_file = tmp_path / "spans.jsonl"
    exporters = f"""  otlp/capture: {{ endpoint: "http://127.0.0.1:{grpc_capture.port}", compression: gzip, retry_on_failure: {{ initial_interval: 100ms, max_interval: 200ms }} }}
  otlphttp/capture: {{ endpoint: "http://127.0.0.1:{http_capture.port}", compression: none, retry_on_failure: {{ initial_interval: 100ms, max_interval: 200ms }} }}
  file: {{ path: "{out_file}" }}"""
    sc = sidecars(base_config(exporters, "otlp/capture, otlphttp/capture, file"))

    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({
        "service.name": "interop-svc", "deployment.environment": "test", "res.int": 7, "res.bool": True,
        "res.float": 0.5, "res.arr": ("x", "y"),
    }))
    if transport == "grpc":
        otlp = GrpcExporter(endpoint=f"http://{sc.grpc}", insecure=True)
    else:
        otlp = HttpExporter(endpoint=f"http://{sc.http}/v1/traces", compression=Compression.Gzip)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(SimpleSpanProcessor(otlp))
    make_spans(provider)
    provider.shutdown()

    finished = memory.get_finished_spans()
    sent = {s.context.span_id: normalize_sdk(s) for s in finished}
    assert len(sent) == 6
    # What the SDK's exporter put on the wire, decoded: the exact expectation for every backend.
    wire = encode_spans(finished)
    expected = sorted((normalize_pb(rs.resource, ss.scope, sp) for rs in wire.resource_spans
                       for ss in rs.scope_spans for sp in ss.spans), key=lambda d: d["span_id"])
    # ...and it is what the SDK recorded, except that the Python encoder leaves out a link's
    # trace state (an upstream limitation; test_link_trace_state_is_carried covers ours).
    recorded = sorted(sent.values(), key=lambda d: d["span_id"])
    strip = lambda d: {**d, "links": [l[:2] + l[3:] for l in d["links"]]}  # noqa: E731
    assert [strip(d) for d in expected] == [strip(d) for d in recorded]

    via_grpc = sorted((normalize_pb(*t) for t in grpc_capture.spans(len(sent))), key=lambda d: d["span_id"])
    assert_same(via_grpc, expected, "otlp (gRPC) backend")

    http_spans = []
    deadline = time.monotonic() + 20
    while len(http_spans) < len(sent) and time.monotonic() < deadline:
        path, headers, body, _ = http_capture.requests.get(timeout=20)
        assert path == "/v1/traces" and headers["content-type"] == "application/x-protobuf"
        req = trace_service_pb2.ExportTraceServiceRequest.FromString(body)
        http_spans += [(rs.resource, ss.scope, s) for rs in req.resource_spans for ss in rs.scope_spans for s in ss.spans]
    assert_same(sorted((normalize_pb(*t) for t in http_spans), key=lambda d: d["span_id"]), expected, "otlphttp backend")

    deadline = time.monotonic() + 20
    while len(read_file_spans(out_file)) < len(sent) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert_same(sorted((normalize_json(*t) for t in read_file_spans(out_file)), key=lambda d: d["span_id"]), expected, "file exporter")

    want = [f'loom_sidecar_receiver_accepted_spans_total{{receiver="otlp",transport="{transport.split("-")[0]}"}} 6']
    want += [f'loom_sidecar_exporter_sent_spans_total{{exporter="{exp}"}} 6' for exp in ("otlp/capture", "otlphttp/capture", "file")]
    metrics = sc.metrics_with(*want)
    for w in want:
        assert w in metrics


def test_link_trace_state_and_flags_are_carried(sidecars, grpc_capture, tmp_path) -> None:
    """Fields the Python encoder never sets, sent as raw protobuf: they must pass unchanged."""
    out_file = tmp_path / "spans.jsonl"
    exporters = f"""  otlp/capture: {{ endpoint: "http://127.0.0.1:{grpc_capture.port}" }}
  file: {{ path: "{out_file}" }}"""
    sc = sidecars(base_config(exporters, "otlp/capture, file"))
    span = trace_pb2.Span(
        trace_id=bytes.fromhex("0af7651916cd43dd8448eb211c80319c"), span_id=bytes.fromhex("b7ad6b7169203331"),
        name="raw", kind=trace_pb2.Span.SPAN_KIND_CLIENT, start_time_unix_nano=1, end_time_unix_nano=2,
        trace_state="congo=t61rcWkgMzE", flags=0x301,
        links=[trace_pb2.Span.Link(trace_id=bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736"),
                                   span_id=bytes.fromhex("00f067aa0ba902b7"), trace_state="rojo=1", flags=0x101)],
        dropped_attributes_count=3,
    )
    req = trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(scope_spans=[trace_pb2.ScopeSpans(spans=[span])])])
    with grpc.insecure_channel(sc.grpc) as ch:
        trace_service_pb2_grpc.TraceServiceStub(ch).Export(req, timeout=10)
    (_, _, got), = grpc_capture.spans(1)
    assert got == span
    deadline = time.monotonic() + 10
    while not read_file_spans(out_file) and time.monotonic() < deadline:
        time.sleep(0.05)
    (_, _, js), = read_file_spans(out_file)
    assert js["traceState"] == "congo=t61rcWkgMzE" and js["flags"] == 0x301 and js["droppedAttributesCount"] == 3
    assert js["links"][0]["traceState"] == "rojo=1" and js["links"][0]["flags"] == 0x101
