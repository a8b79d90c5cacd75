"""Sidecar test harness: the real loom-sidecar binary on port-0 loopback listeners, plus capture backends
built from the official opentelemetry-proto Python package (gRPC) and the standard library (HTTP)."""

from __future__ import annotations

import gzip
import json
import os
import queue
import re
import subprocess
import threading
import time
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Dict, List, Optional

import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

REPO = Path(__file__).resolve().parents[3]
BIN = Path(os.environ.get("LOOM_BIN_DIR", REPO / "target" / "debug")) / "loom-sidecar"


class Sidecar:
    """A loom-sidecar process started from a YAML string."""

    def __init__(self, yaml_text: str, tmp: Path, env: Optional[Dict[str, str]] = None) -> None:
        self.cfg = tmp / f"sidecar-{time.monotonic_ns()}.yaml"
        self.cfg.write_text(yaml_text)
        self.env = {**os.environ, **(env or {})}
        self.proc: Optional[subprocess.Popen] = None
        self.addrs: Dict[str, str] = {}
        self.stderr: List[str] = []

    def start(self) -> "Sidecar":
        assert BIN.is_file(), f"{BIN} missing: cargo build -p loom-sidecar"
        self.proc = subprocess.Popen([str(BIN), "--config", str(self.cfg)], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=self.env)
        threading.Thread(target=lambda: self.stderr.extend(self.proc.stderr), daemon=True).start()
        deadline = time.monotonic() + 20
        assert self.proc.stdout is not None
        while time.monotonic() < deadline:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError(f"sidecar exited ({self.proc.wait()}): {''.join(self.stderr)}")
            m = re.match(r"listening (\S+) (\S+) (\S+)", line)
            if m:
                self.addrs[f"{m.group(1)}/{m.group(2)}"] = m.group(3)
            elif line.strip() == "ready":
                return self
        raise RuntimeError("sidecar not ready in 20 s")

    @property
    def grpc(self) -> str:
        return self.addrs["otlp/grpc"]

    @property
    def http(self) -> str:
        return self.addrs["otlp/http"]

    def metrics(self) -> str:
        import urllib.request
        with urllib.request.urlopen(f"http://{self.addrs['metrics/http']}/metrics", timeout=5) as r:
            return r.read().decode()

    def metrics_with(self, *lines: str, timeout: float = 10.0) -> str:
        """The metrics page once it holds every one of `lines` (or as it is at the deadline).

        Exporters count a batch only after the backend answered, which can be just after the
        test saw the data arrive, so exact counters are polled for, briefly.
        """
        deadline = time.monotonic() + timeout
        text = self.metrics()
        while any(l not in text for l in lines) and time.monotonic() < deadline:
            time.sleep(0.05)
            text = self.metrics()
        return text

    def __enter__(self) -> "Sidecar":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> Optional[int]:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode if self.proc else None


class GrpcCapture(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC backend that records every request it receives.

    `port` fixes the port (a backend that comes up later on an address the sidecar already
    targets); `script` lists answers given before succeeding, in order: `(grpc.StatusCode,
    retry_delay_seconds_or_None)` fails the call (with a google.rpc.RetryInfo when a delay is
    given), `("partial", n)` succeeds with `partial_success.rejected_spans = n`.
    """

    def __init__(self, port: int = 0, script: Optional[list] = None, workers: int = 4) -> None:
        self.requests: "queue.Queue[trace_service_pb2.ExportTraceServiceRequest]" = queue.Queue()
        self.metadata: List[dict] = []
        self.calls: List[float] = []  # time.monotonic() of every Export call, answered or not
        self.script: list = list(script or [])
        self.delay = 0.0  # seconds each Export takes: a slow backend
        self._lock = threading.Lock()
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                                  options=[("grpc.so_reuseport", 0)])
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port(f"127.0.0.1:{port}")
        assert self.port, f"cannot listen on 127.0.0.1:{port}"
        self.server.start()

    def Export(self, request, context):  # noqa: N802 - gRPC method name
        with self._lock:
            self.calls.append(time.monotonic())
            step = self.script.pop(0) if self.script else None
        self.metadata.append(dict(context.invocation_metadata()))
        if self.delay:
            time.sleep(self.delay)
        if step is not None and step[0] == "partial":
            self.requests.put(request)
            return trace_service_pb2.ExportTraceServiceResponse(
                partial_success=trace_service_pb2.ExportTracePartialSuccess(rejected_spans=step[1],
                                                                           error_message="scripted"))
        if step is not None:
            code, delay = step
            if delay is not None:
                from google.protobuf import any_pb2, duration_pb2
                from google.rpc import error_details_pb2, status_pb2
                detail = any_pb2.Any()
                detail.Pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=int(delay))))
                st = status_pb2.Status(code=code.value[0], message="scripted", details=[detail])
                context.set_trailing_metadata([("grpc-status-details-bin", st.SerializeToString())])
            context.abort(code, "scripted")
        self.requests.put(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self, want: int, timeout: float = 20.0) -> list:
        """Waits until `want` spans arrived; returns (resource, scope, span) triples."""
        out: list = []
        deadline = time.monotonic() + timeout
        while len(out) < want:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"only {len(out)} of {want} spans arrived")
            try:
                req = self.requests.get(timeout=left)
            except queue.Empty:
                continue
            for rs in req.resource_spans:
                for ss in rs.scope_spans:
                    out.extend((rs.resource, ss.scope, s) for s in ss.spans)
        return out

    def __enter__(self) -> "GrpcCapture":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        self.server.stop(0)


def start_clients(client, n: int) -> List[threading.Thread]:
    """`n` threads running `client`, started (load from several connections at once)."""
    threads = [threading.Thread(target=client) for _ in range(n)]
    for t in threads:
        t.start()
    return threads


def free_port() -> int:
    """A loopback port nothing listens on (closed again at once): a backend that is down."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metric(text: str, prefix: str) -> int:
    """Sum of the samples whose line starts with `prefix` (name plus the first labels)."""
    return sum(int(float(l.rsplit(" ", 1)[1])) for l in text.splitlines() if l.startswith(prefix))


class HttpCapture:
    """An OTLP/HTTP backend (protobuf) that records requests; status can be scripted."""

    def __init__(self) -> None:
        self.requests: "queue.Queue[tuple]" = queue.Queue()
        self.statuses: List[tuple] = []  # (code, headers) answered before succeeding
        cap = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                cap.requests.put((self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.monotonic()))
                if cap.statuses:
                    code, headers = cap.statuses.pop(0)
                    self.send_response(code)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                resp = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(resp)))
                self.end_headers()
                self.wfile.write(resp)

            def log_message(self, *a):  # quiet
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


def base_config(exporters: str, pipeline_exporters: str, processors: str = "", pipeline_processors: str = "batch",
                receivers: str = "grpc: { endpoint: 127.0.0.1:0 }\n      http: { endpoint: 127.0.0.1:0 }",
                shutdown_grace: str = "5s") -> str:
    return f"""
receivers:
  otlp:
    protocols:
      {receivers}
processors:
  batch: {{ send_batch_size: 512, timeout: 100ms }}
{processors}
exporters:
{exporters}
service:
  pipelines:
    traces:
      receivers: [otlp]
      processors: [{pipeline_processors}]
      exporters: [{pipeline_exporters}]
  telemetry:
    metrics: {{ address: 127.0.0.1:0 }}
    logs: {{ level: warn }}
  shutdown_grace: {shutdown_grace}
"""


def count_spans(req: trace_service_pb2.ExportTraceServiceRequest, got: dict) -> None:
    """Adds each span id of `req` to `got` (span id -> times received)."""
    for rs in req.resource_spans:
        for ss in rs.scope_spans:
            for s in ss.spans:
                got[s.span_id] = got.get(s.span_id, 0) + 1


def collect(backend: GrpcCapture, want: set, timeout: float) -> dict:
    """span id -> times received at `backend`, until every id in `want` arrived (or the deadline)."""
    got: dict = {}
    deadline = time.monotonic() + timeout
    while not want <= got.keys() and time.monotonic() < deadline:
        try:
            req = backend.requests.get(timeout=0.5)
        except queue.Empty:
            continue
        count_spans(req, got)
    return got


def read_file_spans(path: Path) -> list:
    """(resource_json, scope_json, span_json) triples from a file exporter's output."""
    out = []
    if not path.exists():
        return out
    text = path.read_text()
    # The exporter may be mid-write: a last line without its newline is not complete yet.
    lines = text.split("\n")[:-1]
    for line in lines:
        if not line.strip():
            continue
        for rs in json.loads(line)["resourceSpans"]:
            for ss in rs.get("scopeSpans", []):
                out.extend((rs.get("resource", {}), ss.get("scope", {}), s) for s in ss.get("spans", []))
    return out
