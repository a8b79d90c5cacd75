#!/usr/bin/env python3
"""Writes the seed corpora (fuzz/corpus/<target>/) from the inputs the tests use.

Stdlib only, deterministic: re-running it rewrites the same files. The protobuf encoder is a
minimal hand-written one (field numbers from opentelemetry-proto's trace.proto / common.proto),
so that seeds need no generated code.
"""

import gzip
import json
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def ld(field: int, payload: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(payload)) + payload


def vi(field: int, n: int) -> bytes:
    return varint(field << 3) + varint(n)


def f64(field: int, n: int) -> bytes:
    return varint(field << 3 | 1) + n.to_bytes(8, "little")


def f32(field: int, n: int) -> bytes:
    return varint(field << 3 | 5) + n.to_bytes(4, "little")


def s(field: int, text: str) -> bytes:
    return ld(field, text.encode())


def kv(key: str, value: bytes) -> bytes:
    return s(1, key) + ld(2, value)


TRACE = bytes.fromhex("5b8efff798038103d269b633813fc60c")
SPAN = bytes.fromhex("eee19b7ec3c1b174")
PARENT = bytes.fromhex("eee19b7ec3c1b173")


def span(name: str, parent: bool, flags: int, depth: int = 0) -> bytes:
    nested = s(1, "leaf")
    for _ in range(depth):
        nested = ld(5, ld(1, nested))  # AnyValue.array_value { values: [nested] }
    attrs = [
        kv("http.method", s(1, "GET")),
        kv("ok", vi(2, 1)),
        kv("n", vi(3, 42)),
        kv("neg", vi(3, -7)),
        kv("f", varint(4 << 3 | 1) + (0x3FF8000000000000).to_bytes(8, "little")),
        kv("kv", ld(6, ld(1, kv("inner", s(1, "v"))))),
        kv("raw", ld(7, b"\x00\x01\xff")),
        kv("deep", nested),
    ]
    body = ld(1, TRACE) + ld(2, SPAN) + s(3, "rojo=00f067aa0ba902b7")
    if parent:
        body += ld(4, PARENT)
    body += s(5, name) + vi(6, 2) + f64(7, 1544712660000000000) + f64(8, 1544712661000000000)
    body += b"".join(ld(9, a) for a in attrs) + vi(10, 1)
    body += ld(11, f64(1, 1544712660500000000) + s(2, "event") + ld(3, kv("e", s(1, "x"))))
    body += ld(13, ld(1, TRACE) + ld(2, PARENT) + s(3, "a=b") + ld(4, kv("l", vi(2, 0))) + f32(6, 0x301))
    body += ld(15, s(2, "bad") + vi(3, 2)) + f32(16, flags)
    return body


def request(spans: list[bytes], service: str = "svc") -> bytes:
    resource = ld(1, kv("service.name", s(1, service)))
    scope = ld(1, s(1, "scope") + s(2, "1.0"))
    ss = scope + b"".join(ld(2, sp) for sp in spans) + s(3, "https://opentelemetry.io/schemas/1.21.0")
    return ld(1, resource + ld(2, ss))


def proto_seeds() -> dict[str, bytes]:
    return {
        "empty": b"",
        "one_span": request([span("root", False, 0x301)]),
        "child_spans": request([span("a", True, 1), span("b", True, 0)], "other"),
        "deep_nesting": request([span("deep", False, 1, depth=40)]),
        "no_ids": ld(1, ld(2, ld(2, s(5, "no ids")))),
        "two_resources": request([span("x", False, 1)]) + request([span("y", True, 0)]),
    }


JSON_SEEDS = {
    # The OTLP/JSON request sidecar/tests/python/test_bad_input.py posts.
    "bad_input_test": json.loads((REPO / "sidecar/tests/python/otlp_json_request.json").read_text()),
    "all_value_kinds": {"resourceSpans": [{"scopeSpans": [{"spans": [{
        "traceId": "4bf92f3577b34da6a3ce929d0e0e4736", "spanId": "00f067aa0ba902b7", "flags": 769,
        "traceState": "a=b", "name": "v",
        "attributes": [
            {"key": "b", "value": {"boolValue": True}},
            {"key": "a", "value": {"arrayValue": {"values": [{"stringValue": "x"}, {"intValue": 3}]}}},
            {"key": "k", "value": {"kvlistValue": {"values": [{"key": "i", "value": {"doubleValue": -0.0}}]}}},
            {"key": "y", "value": {"bytesValue": "AAH/"}}],
        "events": [{"timeUnixNano": "1", "name": "e"}],
        "links": [{"traceId": "4bf92f3577b34da6a3ce929d0e0e4736", "spanId": "00f067aa0ba902b8"}]}]}]}]},
    "empty_request": {},
    "empty_lists": {"resourceSpans": [{"scopeSpans": []}]},
}

TRACEPARENTS = [
    # loom-sdk-py/tests/test_envelope.py VECTORS and loom-core/src/envelope.rs tests.
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE",
     "loom.thread_id=t-1\nloom.correlation_id=c-1\nloom.reply_to=r\nloom.sender=sensor\nloom.ttl=30\nloom.hop=2\napp.key=kept out"),
    ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", "a=b", ""),
    ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", None, ""),
    ("00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01", None, ""),
    ("garbage", None, "loom.hop=-1\nloom.ttl=x"),
    ("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-future", "k=v", ""),
    (" 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01 ", None, "loom.sender=ünïcødé-agent\nloom.thread_id="),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "k=" + "x" * 600, ""),
    ("00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", None, "trace_id=4bf92f3577b34da6a3ce929d0e0e4736\nspan_id=00f067aa0ba902b7"),
]

CONFIG_EXTRA = {
    # The expansion forms sidecar/src/config/expand.rs documents.
    "env_forms.yaml": (
        "receivers:\n  otlp:\n    protocols:\n      grpc:\n        endpoint: ${env:P}\n"
        "processors:\n  sampler:\n    ratio: ${env:A:-0.5}\n  batch:\n    send_batch_size: ${env:MISSING:-8}\n"
        "exporters:\n  debug:\n    verbosity: \"$${env:LITERAL}\"\n  file/out:\n    path: ${env:B}\n"
        "service:\n  pipelines:\n    traces:\n      receivers: [otlp]\n      processors: [sampler, batch]\n"
        "      exporters: [debug, file/out]\n"
    ),
    "empty.yaml": "",
    "unknown_section.yaml": "nope: 1\nservice: {pipelines: {}}\n",
}


def segment(payloads: list[bytes]) -> bytes:
    out = bytearray()
    for p in payloads:
        out += len(p).to_bytes(4, "little") + zlib.crc32(p).to_bytes(4, "little") + p
    return bytes(out)


def write(target: str, name: str, data: bytes) -> None:
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def main() -> None:
    protos = proto_seeds()
    for name, data in protos.items():
        write("otlp_proto", name, data)
    for name, doc in JSON_SEEDS.items():
        write("otlp_json", name, json.dumps(doc).encode())
    # gzip_body: first byte selects the cap (0: 16 B, 1: 1 KiB, 2: 64 KiB, 3: 4 MiB).
    body = json.dumps(JSON_SEEDS["bad_input_test"]).encode()
    write("gzip_body", "json_1k", b"\x01" + gzip.compress(body, mtime=0))
    write("gzip_body", "proto_4m", b"\x03" + gzip.compress(protos["child_spans"], mtime=0))
    write("gzip_body", "over_cap", b"\x00" + gzip.compress(protos["one_span"], mtime=0))
    write("gzip_body", "bomb", b"\x02" + gzip.compress(b"\x00" * 200_000, mtime=0))
    write("gzip_body", "not_gzip", b"\x01" + protos["one_span"])
    for cfg in sorted((REPO / "configs").glob("*.yaml")):
        write("config_load", cfg.name, cfg.read_bytes())
    for name, text in CONFIG_EXTRA.items():
        write("config_load", name, text.encode())
    for i, (tp, ts, rest) in enumerate(TRACEPARENTS):
        data = tp.encode()
        if ts is not None or rest:
            data += b"\xff" + (ts or "").encode() + b"\xff" + rest.encode()
        write("traceparent", f"vector_{i}", data)
    write("queue_scan", "two_records", segment([protos["one_span"], protos["child_spans"]]))
    write("queue_scan", "empty_record", segment([b""]))
    whole = segment([protos["one_span"], protos["two_resources"]])
    write("queue_scan", "torn_tail", whole[:-5])
    bad = bytearray(whole)
    bad[12] ^= 0x40
    write("queue_scan", "bad_checksum", bytes(bad))


if __name__ == "__main__":
    main()
