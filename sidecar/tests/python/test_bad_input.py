"""Bad input over both transports: the right status for each, bounded memory for a gzip bomb,
and the sidecar keeps serving afterwards."""

from __future__ import annotations

import gzip
import http.client
import json
import os
import time
from pathlib import Path

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from google.rpc import status_pb2

from sidecar_harness import base_config, read_file_spans
from otlp_gen import request, send, span

pytestmark = pytest.mark.timeout(60)

# An OTLP/JSON request in the protocol mapping (also a fuzz seed, fuzz/gen_corpus.py).
OTLP_JSON_REQUEST = Path(__file__).resolve().parent / "otlp_json_request.json"
LIMIT = 64 * 1024


@pytest.fixture
def sc(sidecars, tmp_path):
    out = tmp_path / "out.jsonl"
    receivers = (f"grpc: {{ endpoint: 127.0.0.1:0, max_recv_msg_size_mib: 1 }}\n"
                 f"      http: {{ endpoint: 127.0.0.1:0, max_request_body_size: {LIMIT} }}")
    s = sidecars(base_config(f'  file: {{ path: "{out}" }}', "file", receivers=receivers))
    s.out = out
    return s


def post(addr: str, body: bytes, ctype: str = "application/x-protobuf", encoding: str = "", method: str = "POST",
         path: str = "/v1/traces"):
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    headers = {"Content-Type": ctype}
    if encoding:
        headers["Content-Encoding"] = encoding
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    conn.close()
    return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data


def valid_request_bytes() -> bytes:
    return request([span(os.urandom(16), name="ok")]).SerializeToString()


def still_serving(sc) -> None:
    status, headers, body = post(sc.http, valid_request_bytes())
    assert status == 200 and headers["content-type"] == "application/x-protobuf"
    trace_service_pb2.ExportTraceServiceResponse.FromString(body)
    send(sc.grpc, [request([span(os.urandom(16), name="ok-grpc")])])


def error_status(headers, body) -> status_pb2.Status:
    if headers.get("content-type") == "application/json":
        d = json.loads(body)
        return status_pb2.Status(code=d["code"], message=d["message"])
    return status_pb2.Status.FromString(body)


@pytest.mark.parametrize("case,body,ctype,encoding,want", [
    ("garbage bytes", b"\xff\xfe\x00garbage\x13\x37" * 10, "application/x-protobuf", "", 400),
    ("truncated protobuf", None, "application/x-protobuf", "", 400),
    ("invalid JSON", b'{"resourceSpans": [', "application/json", "", 400),
    ("JSON of the wrong shape", b'{"resourceSpans": "nope"}', "application/json", "", 400),
    ("wrong content type", b"hello", "text/plain", "", 415),
    ("unknown content encoding", b"x", "application/x-protobuf", "br", 415),
    ("not actually gzip", b"plain", "application/x-protobuf", "gzip", 400),
])
def test_http_bad_requests_get_clear_codes(case, body, ctype, encoding, want, sc) -> None:
    if body is None:
        full = request([span(os.urandom(16), name="x" * 100)]).SerializeToString()
        body = full[: len(full) // 2]
    status, headers, data = post(sc.http, body, ctype, encoding)
    assert status == want, f"{case}: {status} {data[:200]!r}"
    st = error_status(headers, data)
    assert st.code == 3 and st.message, case
    still_serving(sc)


def test_http_oversized_body_and_gzip_bomb_get_413(sc) -> None:
    status, headers, data = post(sc.http, b"\x00" * (LIMIT + 1))
    assert status == 413
    bomb = gzip.compress(b"\x00" * (50 * 1024 * 1024))
    assert len(bomb) < 100 * 1024
    status, headers, data = post(sc.http, bomb, encoding="gzip")
    assert status == 413, data
    assert "after decompression" in error_status(headers, data).message
    # The bomb cost at most the limit: RSS stays far below 50 MiB of expansion.
    rss = next(int(l.split()[-1]) for l in sc.metrics().splitlines() if l.startswith("loom_sidecar_process_rss_bytes"))
    assert rss < 40 * 1024 * 1024, f"RSS {rss >> 20} MiB"
    still_serving(sc)


def test_http_other_methods_get_405_with_allow(sc) -> None:
    for method in ("GET", "PUT", "DELETE"):
        status, headers, _ = post(sc.http, b"", method=method)
        assert status == 405 and headers["allow"] == "POST", method
    status, _, _ = post(sc.http, valid_request_bytes(), path="/v1/metrics")
    assert status == 404
    still_serving(sc)


def test_http_json_in_the_otlp_mapping_is_accepted_and_answered_in_json(sc) -> None:
    body = OTLP_JSON_REQUEST.read_bytes()
    status, headers, data = post(sc.http, body, "application/json")
    assert status == 200 and headers["content-type"] == "application/json", data
    json.loads(data)
    deadline = time.monotonic() + 10
    while not any(s["name"] == "json-span" for _, _, s in read_file_spans(sc.out)) and time.monotonic() < deadline:
        time.sleep(0.05)
    (_, _, s), = [t for t in read_file_spans(sc.out) if t[2]["name"] == "json-span"]
    assert (s["traceId"], s["spanId"], s["parentSpanId"], s["kind"]) == (
        "5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174", "eee19b7ec3c1b173", 2)
    assert s["startTimeUnixNano"] == "1544712660000000000"
    assert {a["key"]: a["value"] for a in s["attributes"]} == {"n": {"intValue": "42"}, "f": {"doubleValue": 1.5}}
    assert s["status"] == {"code": 2, "message": "bad"}


def test_grpc_bad_input_gets_a_status_and_the_sidecar_keeps_serving(sc) -> None:
    with grpc.insecure_channel(sc.grpc) as ch:
        raw = ch.unary_unary("/opentelemetry.proto.collector.trace.v1.TraceService/Export",
                             request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as garbage:
            raw(b"\xff\xfe\x00garbage" * 10, timeout=10)
        assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT, garbage.value.details()
        big = request([span(os.urandom(16), name="x" * (2 * 1024 * 1024))]).SerializeToString()
        with pytest.raises(grpc.RpcError) as too_big:
            raw(big, timeout=10)
        assert too_big.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, too_big.value.details()
        assert "too large" in too_big.value.details()
    still_serving(sc)
