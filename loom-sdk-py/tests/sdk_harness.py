"""SDK test harness: a real loom-bridge process, and one in-memory TracerProvider for the
session (the global provider can be set only once per process; tests clear it between runs)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Iterator, List, Optional

import pytest
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

REPO = Path(__file__).resolve().parents[2]
BIN_DIR = Path(os.environ.get("LOOM_BIN_DIR", REPO / "target" / "debug"))

EXPORTER = InMemorySpanExporter()
_provider = TracerProvider(resource=Resource.create({"service.name": "sdk-tests"}))
_provider.add_span_processor(SimpleSpanProcessor(EXPORTER))
trace.set_tracer_provider(_provider)


@contextlib.contextmanager
def trace_service(servicer: object) -> Iterator[str]:
    """A real gRPC OTLP TraceService on loopback serving `servicer`; yields its endpoint URL."""
    from concurrent import futures

    import grpc
    from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop(None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BridgeProcess:
    """loom-bridge on a loopback port; its output is kept for failure messages."""

    def __init__(self, port: int = 0, extra: Optional[List[str]] = None) -> None:
        self.port = port
        self.extra = extra or []
        self.proc: Optional[subprocess.Popen] = None
        self.lines: List[str] = []
        self.addr = ""

    def start(self) -> "BridgeProcess":
        binary = BIN_DIR / "loom-bridge"
        if not binary.is_file():
            raise RuntimeError(f"{binary} missing: run `cargo build -p loom-bridge` (scripts/test.sh does)")
        env = dict(os.environ)
        # Spans from the bridge go nowhere in these tests; the bridge must still trace (sampled)
        # so deliveries carry its bridge.forward context.
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = "http://127.0.0.1:9"
        env.pop("OTEL_TRACES_SAMPLER", None)
        env.pop("OTEL_TRACE_SAMPLER", None)
        env.setdefault("RUST_LOG", "warn")
        self.proc = subprocess.Popen(
            [str(binary), "--listen", f"127.0.0.1:{self.port}", "--dashboard-listen", "off", *self.extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
        )
        ready = threading.Event()

        def pump() -> None:
            assert self.proc and self.proc.stdout
            for line in self.proc.stdout:
                self.lines.append(line.rstrip())
                m = re.search(r"loom-bridge listening on (\S+)", line)
                if m:
                    self.addr = m.group(1)
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(20):
            self.stop()
            raise RuntimeError("loom-bridge did not start:\n" + "\n".join(self.lines))
        self.port = int(self.addr.rsplit(":", 1)[1])
        return self

    @property
    def url(self) -> str:
        return f"http://{self.addr}"

    def stop(self, sig: int = signal.SIGTERM) -> Optional[int]:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode if self.proc else None


def wait_until(pred, timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


async def wait_for(pred, timeout: float = 10.0, what: str = "condition") -> None:
    """`wait_until` inside a coroutine: the event loop keeps running while it waits."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)
