"""Bearer-token authentication on the OTLP receiver, with the official OpenTelemetry Python
exporters (headers) and raw gRPC / HTTP clients: the right token gets through on both
transports, a missing or wrong one gets UNAUTHENTICATED / 401 with nothing leaked, and the token
never shows in print-config or the logs.

Every test prints its figures (run pytest with -s to see them)."""

from __future__ import annotations

import http.client
import os
import subprocess
import time

import grpc
import pytest
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.export import SimpleSpanProcessor

from sidecar_harness import BIN, Sidecar, base_config, metric, read_file_spans
from otlp_gen import request, span

pytestmark = pytest.mark.timeout(60)

TOKEN = "tok-" + os.urandom(12).hex()


def auth_config(out, auth: str = '{ bearer_token: "${env:LOOM_TEST_TOKEN}" }') -> str:
    return base_config(f'  file: {{ path: "{out}" }}', "file").replace(
        "  otlp:\n    protocols:", f"  otlp:\n    auth: {auth}\n    protocols:")


def finished_spans(n: int = 3):
    memory = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("auth-test")
    for i in range(n):
        with tracer.start_as_current_span(f"auth-{i}"):
            pass
    provider.shutdown()
    return memory.get_finished_spans()


def post(addr: str, headers: dict):
    host, p = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(p), timeout=10)
    body = request([span(os.urandom(16))]).SerializeToString()
    conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf", **headers})
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, data


def test_bearer_token_with_the_official_exporters_and_raw_clients(sidecars, tmp_path) -> None:
    out = tmp_path / "out.jsonl"
    sc = sidecars(auth_config(out), env={"LOOM_TEST_TOKEN": TOKEN})
    spans = finished_spans()
    good = {"authorization": f"Bearer {TOKEN}"}
    wrong = {"authorization": f"Bearer {TOKEN[:-1]}x"}
    results = {
        "grpc right": GrpcExporter(endpoint=f"http://{sc.grpc}", insecure=True, headers=good, timeout=5).export(spans),
        "grpc wrong": GrpcExporter(endpoint=f"http://{sc.grpc}", insecure=True, headers=wrong, timeout=5).export(spans),
        "grpc none": GrpcExporter(endpoint=f"http://{sc.grpc}", insecure=True, timeout=5).export(spans),
        "http right": HttpExporter(endpoint=f"http://{sc.http}/v1/traces", headers=good, timeout=5).export(spans),
        "http wrong": HttpExporter(endpoint=f"http://{sc.http}/v1/traces", headers=wrong, timeout=5).export(spans),
        "http none": HttpExporter(endpoint=f"http://{sc.http}/v1/traces", timeout=5).export(spans),
    }
    assert {k: v for k, v in results.items()} == {
        "grpc right": SpanExportResult.SUCCESS, "grpc wrong": SpanExportResult.FAILURE,
        "grpc none": SpanExportResult.FAILURE, "http right": SpanExportResult.SUCCESS,
        "http wrong": SpanExportResult.FAILURE, "http none": SpanExportResult.FAILURE,
    }

    # Raw clients: the exact answers, identical for a missing and a wrong token.
    answers = {}
    with grpc.insecure_channel(sc.grpc) as ch:
        stub = trace_service_pb2_grpc.TraceServiceStub(ch)
        for name, md in (("missing", None), ("wrong", list(wrong.items())), ("basic", [("authorization", "Basic " + TOKEN)])):
            with pytest.raises(grpc.RpcError) as e:
                stub.Export(request([span(os.urandom(16))]), metadata=md, timeout=5)
            answers[f"grpc {name}"] = (e.value.code().name, e.value.details())
    for name, h in (("missing", {}), ("wrong", wrong), ("lowercase scheme ok", {"authorization": f"bearer {TOKEN}"})):
        status, headers, body = post(sc.http, h)
        answers[f"http {name}"] = (status, headers.get("www-authenticate"), body)
    print(f"\nofficial exporters: {', '.join(f'{k}={v.name}' for k, v in results.items())}")
    for k, v in answers.items():
        print(f"  {k}: {v}")
    for name in ("missing", "wrong", "basic"):
        assert answers[f"grpc {name}"] == ("UNAUTHENTICATED", "unauthenticated")
    for name in ("missing", "wrong"):
        status, challenge, body = answers[f"http {name}"]
        assert status == 401 and challenge == "Bearer"
        assert TOKEN.encode() not in body and TOKEN[:8].encode() not in body
    assert answers["http missing"][2] == answers["http wrong"][2], "no hint which part was wrong"
    assert answers["http lowercase scheme ok"][0] == 200

    # Only the authenticated requests went through: 2 × 3 spans + 1 raw span.
    deadline = time.monotonic() + 10
    while len(read_file_spans(out)) < 7 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(read_file_spans(out)) == 7
    m = sc.metrics()
    refused_grpc = metric(m, 'loom_sidecar_receiver_refused_spans_total{receiver="otlp",transport="grpc",reason="unauthenticated"}')
    refused_http = metric(m, 'loom_sidecar_receiver_refused_spans_total{receiver="otlp",transport="http",reason="unauthenticated"}')
    print(f"  delivered spans={len(read_file_spans(out))}; refused requests counted grpc={refused_grpc} http={refused_http}")
    assert refused_grpc >= 5 and refused_http >= 4
    sc.stop()
    assert TOKEN not in "".join(sc.stderr), "the token never reaches the logs"


def test_token_file_and_print_config_redaction(sidecars, tmp_path) -> None:
    out = tmp_path / "out.jsonl"
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    sc = sidecars(auth_config(out, f'{{ bearer_token_file: "{token_file}" }}'))
    status, _, _ = post(sc.http, {"authorization": f"Bearer {TOKEN}"})
    status_wrong, _, _ = post(sc.http, {"authorization": "Bearer nope"})
    cfg = tmp_path / "inline.yaml"
    cfg.write_text(auth_config(out))
    printed = subprocess.run([str(BIN), "print-config", "--config", str(cfg)], capture_output=True, text=True,
                             env={**os.environ, "LOOM_TEST_TOKEN": TOKEN}, timeout=20)
    empty = subprocess.run([str(BIN), "validate", "--config", str(cfg)], capture_output=True, text=True,
                           env={k: v for k, v in os.environ.items() if k != "LOOM_TEST_TOKEN"}, timeout=20)
    print(f"\ntoken file: right={status} wrong={status_wrong}; print-config: "
          f"{[l.strip() for l in printed.stdout.splitlines() if 'bearer_token' in l]}; "
          f"unset variable: exit {empty.returncode}: {empty.stderr.strip().splitlines()[-1]}")
    assert (status, status_wrong) == (200, 401)
    assert printed.returncode == 0 and TOKEN not in printed.stdout and "bearer_token: <redacted>" in printed.stdout
    assert empty.returncode == 1
    assert "receivers.otlp.auth.bearer_token: the token is empty (from ${env:LOOM_TEST_TOKEN})" in empty.stderr
