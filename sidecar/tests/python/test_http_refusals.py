"""OTLP/HTTP refusals a plain HTTP/1.1 client can read: a body over `max_request_body_size`, a
missing token and a wrong content type are answered (413 / 401 / 415) and the rest of the body
is drained, so Python's `urllib`, `requests` and the official OTLP HTTP exporter read the status
instead of a connection reset; the exporter then drops the batch rather than retrying it.

Every test prints its figures (run pytest with -s to see them)."""

from __future__ import annotations

import logging
import os
import time
import urllib.error
import urllib.request

import pytest
import requests
from google.rpc import status_pb2
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sidecar_harness import base_config, metric

pytestmark = pytest.mark.timeout(60)

LIMIT = 1024 * 1024
# Several times the limit and larger than loopback socket buffers: without draining, the sidecar
# closes while the client is still writing and the client sees a reset.
BIG = 6 * LIMIT
TOKEN = "tok-" + os.urandom(12).hex()
REFUSED = 'loom_sidecar_receiver_refused_spans_total{receiver="otlp",transport="http",reason="%s"}'


def config(out, auth: bool = False) -> str:
    receivers = ("grpc: { endpoint: 127.0.0.1:0 }\n"
                 f"      http: {{ endpoint: 127.0.0.1:0, max_request_body_size: {LIMIT} }}")
    text = base_config(f'  file: {{ path: "{out}" }}', "file", receivers=receivers)
    if auth:
        text = text.replace("  otlp:\n    protocols:", f'  otlp:\n    auth: {{ bearer_token: "{TOKEN}" }}\n    protocols:')
    return text


def urllib_post(addr: str, body: bytes, ctype: str, headers: dict = None):
    """(status, headers, body) of a urllib POST; an HTTPError is an answer, a reset raises."""
    req = urllib.request.Request(f"http://{addr}/v1/traces", data=body, method="POST",
                                 headers={"Content-Type": ctype, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=20) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def test_urllib_and_requests_read_413_for_a_body_over_the_limit(sidecars, tmp_path) -> None:
    sc = sidecars(config(tmp_path / "out.jsonl"))
    t0 = time.monotonic()
    status, headers, body = urllib_post(sc.http, b"\x0a" * BIG, "application/x-protobuf")
    took = time.monotonic() - t0
    print(f"urllib: {BIG >> 20} MiB over a {LIMIT >> 20} MiB limit -> {status} in {took * 1000:.0f} ms")
    assert status == 413
    assert headers["Content-Type"] == "application/x-protobuf"
    st = status_pb2.Status.FromString(body)
    assert st.code == 8 and f"exceeds {LIMIT} bytes" in st.message  # RESOURCE_EXHAUSTED

    # `requests` (what the OTLP exporter uses underneath), JSON this time.
    r = requests.post(f"http://{sc.http}/v1/traces", data=b"{" * BIG,
                      headers={"Content-Type": "application/json"}, timeout=20)
    assert r.status_code == 413 and r.json()["code"] == 8, r.text
    # Both refusals were counted, and the sidecar still answers.
    m = sc.metrics_with(REFUSED % "too_large" + " 2")
    assert metric(m, REFUSED % "too_large") == 2


def test_the_official_exporter_reads_413_and_does_not_retry(sidecars, tmp_path, caplog) -> None:
    sc = sidecars(config(tmp_path / "out.jsonl"))
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("refusals")
    for i in range(12):
        with tracer.start_as_current_span(f"big-{i}") as s:
            s.set_attribute("blob", "x" * (LIMIT // 2))
    spans = memory.get_finished_spans()
    exporter = HttpExporter(endpoint=f"http://{sc.http}/v1/traces", timeout=10)
    t0 = time.monotonic()
    with caplog.at_level(logging.DEBUG):
        result = exporter.export(spans)
    took = time.monotonic() - t0
    # Let any retry the exporter might still make reach the sidecar before counting.
    time.sleep(1.5)
    attempts = metric(sc.metrics(), REFUSED % "too_large")
    print(f"exporter: ~{12 * LIMIT // 2 >> 20} MiB batch -> {result.name} in {took * 1000:.0f} ms, {attempts} request(s)")
    assert result == SpanExportResult.FAILURE
    said = [r.getMessage() for r in caplog.records]
    assert any("code: 413" in m for m in said), said
    assert attempts == 1, "a 413 is final: the exporter must not resend it"
    assert took < 5.0, f"the exporter spent {took:.1f}s: it retried instead of reading 413"
    exporter.shutdown()


def test_401_and_415_are_readable_and_in_the_requests_encoding(sidecars, tmp_path) -> None:
    sc = sidecars(config(tmp_path / "out.jsonl", auth=True))
    # No token, body over the limit: refused before the body is read, drained, answered.
    for ctype, proto in [("application/x-protobuf", True), ("application/protobuf", True),
                         ("Application/X-Protobuf; charset=binary", True), ("application/json", False)]:
        status, headers, body = urllib_post(sc.http, b"\x0a" * BIG, ctype)
        assert status == 401, (ctype, status)
        assert headers["WWW-Authenticate"] == "Bearer"
        if proto:
            assert headers["Content-Type"] == "application/x-protobuf", ctype
            assert status_pb2.Status.FromString(body).code == 16  # UNAUTHENTICATED
        else:
            assert headers["Content-Type"] == "application/json"
    good = {"Authorization": f"Bearer {TOKEN}"}
    status, headers, body = urllib_post(sc.http, b"x" * (LIMIT - 1), "text/plain", good)
    assert status == 415 and b"unsupported content type" in body, (status, body)
    # With the token, a body over the limit is still refused with a readable 413.
    status, _, _ = urllib_post(sc.http, b"\x0a" * BIG, "application/x-protobuf", good)
    assert status == 413
    m = sc.metrics()
    print(f"401s: {metric(m, REFUSED % 'unauthenticated')}, 415s: {metric(m, REFUSED % 'unsupported_media_type')}")
    assert metric(m, REFUSED % "unauthenticated") == 4
