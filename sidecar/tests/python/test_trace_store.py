"""trace_store end to end: spans from the official OpenTelemetry Python SDK's OTLP exporters come
back from the sidecar's Jaeger api_v3-shaped query API with every field intact (and through
`loom traces --query-url`); a flood of ten times `max_bytes` keeps the store and the process
bounded and counts its evictions."""

from __future__ import annotations

import io
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from contextlib import redirect_stdout

import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from otlp_gen import kv
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from sidecar_harness import base_config, metric
from test_interop import assert_same, make_spans, normalize_json, normalize_pb

pytestmark = pytest.mark.timeout(120)


def get(url: str):
    """(status, JSON body) of a GET."""
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def api_spans(doc: dict) -> list:
    return [(rs.get("resource", {}), ss.get("scope", {}), sp) for rs in doc["result"]["resourceSpans"]
            for ss in rs.get("scopeSpans", []) for sp in ss.get("spans", [])]


def window(now: float) -> str:
    fmt = lambda t: time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))  # noqa: E731
    return urllib.parse.urlencode({"query.start_time_min": fmt(now - 600), "query.start_time_max": fmt(now + 600)})


def test_python_sdk_spans_come_back_from_the_query_api(sidecars) -> None:
    sc = sidecars(base_config("  trace_store: { endpoint: 127.0.0.1:0 }", "trace_store"))
    api = f"http://{sc.addrs['trace_store/http']}"

    # One trace from two services: the SDK's gRPC exporter for one, its HTTP exporter for the other.
    memory = InMemorySpanExporter()
    front = TracerProvider(resource=Resource.create({"service.name": "front", "res.int": 7}))
    front.add_span_processor(SimpleSpanProcessor(memory))
    front.add_span_processor(SimpleSpanProcessor(GrpcExporter(endpoint=f"http://{sc.grpc}", insecure=True)))
    back = TracerProvider(resource=Resource.create({"service.name": "back"}))
    back.add_span_processor(SimpleSpanProcessor(memory))
    back.add_span_processor(SimpleSpanProcessor(HttpExporter(endpoint=f"http://{sc.http}/v1/traces")))
    make_spans(front)  # six spans of every kind, attributes, events, links, status
    root = [s for s in memory.get_finished_spans() if s.name == "root"][0]
    from opentelemetry import trace as otel_trace
    ctx = otel_trace.set_span_in_context(otel_trace.NonRecordingSpan(root.context))
    with back.get_tracer("back.scope").start_as_current_span("handle", context=ctx, kind=SpanKind.SERVER):
        pass
    front.shutdown()
    back.shutdown()

    finished = memory.get_finished_spans()
    trace_id = f"{root.context.trace_id:032x}"
    assert {f"{s.context.trace_id:032x}" for s in finished} == {trace_id}
    wire = encode_spans(finished)
    expected = sorted((normalize_pb(rs.resource, ss.scope, sp) for rs in wire.resource_spans
                       for ss in rs.scope_spans for sp in ss.spans), key=lambda d: d["span_id"])
    assert len(expected) == 7

    deadline = time.monotonic() + 20
    while True:
        status, doc = get(f"{api}/api/v3/traces/{trace_id}")
        if status == 200 and len(api_spans(doc)) == len(expected) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert status == 200, doc
    got = sorted((normalize_json(*t) for t in api_spans(doc)), key=lambda d: d["span_id"])
    assert_same(got, expected, "trace_store GET /api/v3/traces/{id}")

    status, doc = get(f"{api}/api/v3/traces/{'0' * 31}1")
    assert (status, doc["error"]["message"]) == (404, "No traces found")
    status, doc = get(f"{api}/api/v3/traces/not-hex")
    assert status == 400 and "trace_id" in doc["error"]["message"]

    now = time.time()
    status, doc = get(f"{api}/api/v3/traces?query.service_name=back&{window(now)}&query.num_traces=5")
    assert status == 200
    # A search returns whole traces: the front's spans come with the back's.
    assert {normalize_json(*t)["span_id"] for t in api_spans(doc)} == {e["span_id"] for e in expected}
    status, doc = get(f"{api}/api/v3/traces?query.service_name=front&{window(now - 7200)}")
    assert status == 404, "outside the time window"
    status, doc = get(f"{api}/api/v3/traces?query.service_name=front&query.start_time_min=noon&query.start_time_max=later")
    assert status == 400 and "query.start_time_min" in doc["error"]["message"]

    assert get(f"{api}/api/v3/services") == (200, {"services": ["back", "front"]})
    status, doc = get(f"{api}/api/v3/operations?service=front")
    assert status == 200
    assert {(o["name"], o["spanKind"]) for o in doc["operations"]} == {
        ("root", "server"), ("child.client", "client"), ("child.producer", "producer"),
        ("child.consumer", "consumer"), ("child.internal", "internal"), ("failing", "internal")}

    # `loom traces --query-url` reads the same trace (the SDK's reader, not a copy of it).
    from loom import cli
    from loom._traces import read_spans_from_api
    spans = read_spans_from_api(api)
    assert sorted(s.span_id for s in spans) == sorted(e["span_id"] for e in expected)
    handle = [s for s in spans if s.name == "handle"][0]
    assert handle.parent_span_id == f"{root.context.span_id:016x}" and handle.service == "back"
    out = io.StringIO()
    with redirect_stdout(out):
        assert cli.main(["traces", "--query-url", api, "--trace-id", trace_id]) == 0
    text = out.getvalue()
    assert f"trace {trace_id}  (7 spans)" in text
    assert "handle [SERVER] (back)" in text and "root [SERVER] (front)" in text


def test_a_flood_of_ten_times_max_bytes_stays_bounded(sidecars) -> None:
    max_bytes = 4 * 1024 * 1024
    sc = sidecars(base_config(f"  trace_store: {{ endpoint: 127.0.0.1:0, max_bytes: {max_bytes} }}", "trace_store"))
    api = f"http://{sc.addrs['trace_store/http']}"
    rss_before = metric(sc.metrics(), "loom_sidecar_process_rss_bytes")

    # 100 traces of 100 spans per request, ~850 bytes a span: ~8 MB a request, 24 requests: ~200 MB,
    # 48 times max_bytes. Kept unbounded, the spans alone would need more than that.
    pad = "x" * 800
    sent = 0
    last_trace = b""
    peak = 0
    for r in range(24):
        spans = []
        for t in range(100):
            last_trace = r.to_bytes(8, "big") + t.to_bytes(8, "big")
            spans += [trace_pb2.Span(trace_id=last_trace, span_id=os.urandom(8), name=f"op-{i % 7}",
                                     start_time_unix_nano=time.time_ns(), end_time_unix_nano=time.time_ns() + 1000,
                                     attributes=[kv("pad", pad)]) for i in range(100)]
        req = trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
            resource=resource_pb2.Resource(attributes=[kv("service.name", "flood")]),
            scope_spans=[trace_pb2.ScopeSpans(spans=spans)])])
        body = req.SerializeToString()
        sent += len(body)
        http = urllib.request.Request(f"http://{sc.http}/v1/traces", data=body,
                                      headers={"Content-Type": "application/x-protobuf"})
        with urllib.request.urlopen(http, timeout=30) as resp:
            assert resp.status == 200
        peak = max(peak, metric(sc.metrics(), "loom_sidecar_process_rss_bytes"))
    assert sent >= 40 * max_bytes

    # The newest trace is served once the pipeline delivered it; the oldest was evicted.
    deadline = time.monotonic() + 30
    while get(f"{api}/api/v3/traces/{last_trace.hex()}")[0] != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    status, doc = get(f"{api}/api/v3/traces/{last_trace.hex()}")
    assert status == 200, (doc, "\n".join(l for l in sc.metrics().splitlines() if "trace_store" in l or "refused" in l))
    assert get(f"{api}/api/v3/traces/{(0).to_bytes(16, 'big').hex()}")[0] == 404

    text = sc.metrics_with('loom_sidecar_exporter_sent_spans_total{exporter="trace_store"} 240000', timeout=60)
    stored = metric(text, 'loom_sidecar_trace_store_bytes{exporter="trace_store"}')
    evicted = metric(text, 'loom_sidecar_trace_store_evicted_traces_total{exporter="trace_store",reason="max_bytes"}')
    traces = metric(text, 'loom_sidecar_trace_store_traces{exporter="trace_store"}')
    assert 0 < stored <= max_bytes
    assert evicted > 0 and evicted + traces == 2400, (evicted, traces)
    # The process holds the store (<= max_bytes) plus the pipeline's transient buffers (an 8 MB
    # request, decoded, batched): measured 43-70 MiB whether 100 or 300 MB were sent. The bound:
    # 64 MiB over the idle process, a third of what was sent.
    peak = max(peak, metric(text, "loom_sidecar_process_rss_bytes"))
    print(f"flood: sent {sent >> 20} MiB, stored {stored >> 10} KiB, evicted {evicted} traces, "
          f"RSS {rss_before >> 20} MiB idle, {peak >> 20} MiB peak")
    assert peak - rss_before < 64 * 1024 * 1024, f"RSS grew {(peak - rss_before) >> 20} MiB"
