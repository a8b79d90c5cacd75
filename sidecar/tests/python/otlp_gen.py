"""Builds OTLP requests directly with the official protobuf types (fast, exact control of ids)."""

from __future__ import annotations

import os
from typing import Dict, Iterable, List, Optional

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2


def kv(key: str, value: str) -> common_pb2.KeyValue:
    return common_pb2.KeyValue(key=key, value=common_pb2.AnyValue(string_value=value))


def span(trace_id: bytes, *, parent: bytes = b"", flags: int = 0, name: str = "s",
         attrs: Optional[Dict[str, str]] = None) -> trace_pb2.Span:
    return trace_pb2.Span(trace_id=trace_id, span_id=os.urandom(8), parent_span_id=parent, flags=flags, name=name,
                          start_time_unix_nano=1_000, end_time_unix_nano=2_000,
                          attributes=[kv(k, v) for k, v in (attrs or {}).items()])


def request(spans: Iterable[trace_pb2.Span], resource: Optional[Dict[str, str]] = None) -> trace_service_pb2.ExportTraceServiceRequest:
    return trace_service_pb2.ExportTraceServiceRequest(resource_spans=[trace_pb2.ResourceSpans(
        resource=resource_pb2.Resource(attributes=[kv(k, v) for k, v in (resource or {}).items()]),
        scope_spans=[trace_pb2.ScopeSpans(spans=list(spans))])])


def send(addr: str, reqs: Iterable[trace_service_pb2.ExportTraceServiceRequest]) -> None:
    with grpc.insecure_channel(addr) as ch:
        stub = trace_service_pb2_grpc.TraceServiceStub(ch)
        for r in reqs:
            stub.Export(r, timeout=10)


def chunks(items: List, n: int) -> Iterable[List]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def consistent_keep(trace_id: bytes, ratio: float) -> bool:
    """OpenTelemetry consistent probability sampling, computed independently of the sidecar."""
    randomness = int.from_bytes(trace_id[9:16], "big")
    threshold = round((1.0 - ratio) * (1 << 56))
    return randomness >= threshold
