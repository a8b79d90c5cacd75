"""Two Python agents through a real loom-bridge: events/s (pipelined emits) and p50/p99
emit → on_event latency (one event in flight). Prints one table from one run, one process per mode:

- ``off``: no tracing;
- ``on-null``: every span sampled, batch processor, a discarding exporter (the old "on" row);
- ``on-otlp``: what ``loom.tracing.init_telemetry`` installs by default (batch processor, OTLP/gRPC
  exporter with spans encoded by ``loom._native``), every span sampled, sending to a running
  loom-sidecar (which forwards them over OTLP to `nullbackend`); the bridge exports its spans to it too;
- ``on-otlp-before``: the same with the SDK before issue #21: spans encoded by the OpenTelemetry
  SDK's Python encoder (``LOOM_SPAN_ENCODER=python``), the tracer looked up per span and the
  spans made current with ``start_as_current_span``.

Run: .venv/bin/python loom-sdk-py/bench/bench_agents.py [MODE ...]   (needs loom-bridge and
loom-sidecar and nullbackend in $LOOM_BIN_DIR, target/release or target/debug; BENCH_N / BENCH_LAT_N size a run,
BENCH_ROUNDS (3) is how many interleaved runs of each mode the medians are taken over)
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List

REPO = Path(__file__).resolve().parents[2]


MODES = ("off", "on-null", "on-otlp-before", "on-otlp")
# Named on the command line only, to split the cost of "on-otlp": `bridge-only` traces in the
# bridge (sampled, exported to the sidecar) but not in the agents; `on-otlp-nullexp` is Loom's
# pipeline in the agents with a discarding exporter instead of the network; `on-otlp-pysender`
# sends its batches with the SDK's exporter on a Python thread (`LOOM_SPAN_TRANSPORT=python`).
EXTRA_MODES = ("bridge-only", "on-otlp-nullexp", "on-otlp-pysender")

# The sidecar receives, batches and forwards like a deployment: its otlp exporter sends to
# `nullbackend` (counts spans by walking the wire format, so the stand-in backend costs little on
# the shared cores; a real backend runs elsewhere). The debug exporter would format every span.
SIDECAR_CONFIG = """
receivers:
  otlp:
    protocols:
      grpc: {{ endpoint: "127.0.0.1:{port}" }}
processors:
  batch: {{ send_batch_size: 1024, timeout: 200ms }}
exporters:
  otlp/backend: {{ endpoint: "http://{backend}", compression: none }}
service:
  pipelines:
    traces: {{ receivers: [otlp], processors: [batch], exporters: [otlp/backend] }}
  telemetry:
    metrics: {{ address: "127.0.0.1:0" }}
    logs: {{ level: warn }}
"""


def binary(name: str) -> Path:
    base = Path(os.environ.get("LOOM_BIN_DIR", "")) if os.environ.get("LOOM_BIN_DIR") else None
    for cand in ([base / name] if base else []) + [REPO / "target/release" / name, REPO / "target/debug" / name]:
        if cand.is_file():
            return cand
    sys.exit(f"{name} not built: cargo build --release -p {name}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(proc: subprocess.Popen, what: str) -> List[str]:
    """The lines `proc` prints up to `ready`; then its stdout is drained in the background (a
    full pipe would stall it)."""
    assert proc.stdout is not None
    lines = []
    for line in proc.stdout:
        if line.strip() == "ready":
            threading.Thread(target=proc.stdout.read, daemon=True).start()
            return lines
        lines.append(line)
    sys.exit(f"{what} exited ({proc.wait()}) before it was ready")


def start_sidecar(tmp: Path) -> "tuple[list, str]":
    """nullbackend and loom-sidecar forwarding to it; (processes, the sidecar's OTLP endpoint)."""
    backend = subprocess.Popen([str(binary("nullbackend")), "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                               stderr=subprocess.DEVNULL, text=True)
    addr = next(l.split()[-1] for l in wait_ready(backend, "nullbackend") if l.startswith("listening"))
    port = free_port()
    cfg = tmp / "bench-sidecar.yaml"
    cfg.write_text(SIDECAR_CONFIG.format(port=port, backend=addr))
    proc = subprocess.Popen([str(binary("loom-sidecar")), "--config", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env={**os.environ, "RUST_LOG": "error"})
    wait_ready(proc, "loom-sidecar")
    return [proc, backend], f"http://127.0.0.1:{port}"


def cpu_s(pid: int) -> float:
    """utime + stime of a process, in seconds (from /proc)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_mode(mode: str, n: int, lat_n: int) -> dict:
    otlp = os.environ.get("BENCH_OTLP_ENDPOINT", "http://127.0.0.1:9")
    if mode.startswith("on-otlp"):
        from opentelemetry import trace
        from loom import tracing

        if mode == "on-otlp-before":
            os.environ["LOOM_SPAN_ENCODER"] = "python"

            def get_tracer():  # type: ignore[no-untyped-def]
                return trace.get_tracer(tracing.TRACER_NAME)

            def start_current_span(name, *, kind, attributes, context=None, envelope=None, record_exception=True):  # type: ignore[no-untyped-def]
                if envelope is not None and envelope.parent_context() is not None:
                    context = envelope.parent_context()
                return get_tracer().start_as_current_span(name, context=context, kind=kind, attributes=attributes,
                                                          record_exception=record_exception,
                                                          set_status_on_exception=record_exception)

            tracing.get_tracer = get_tracer
            tracing.start_current_span = start_current_span
        if mode == "on-otlp-pysender":
            os.environ["LOOM_SPAN_TRANSPORT"] = "python"
        if mode == "on-otlp-nullexp":
            from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

            class Discard(SpanExporter):
                def export(self, spans):  # type: ignore[no-untyped-def]
                    return SpanExportResult.SUCCESS

            tracing.otlp_exporter = lambda **kw: Discard()
        os.environ["OTEL_TRACES_SAMPLER"] = "always_on"
        tracing.init_telemetry("bench", otlp)
    elif mode == "on-null":
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

        class Null(SpanExporter):
            def export(self, spans):
                return SpanExportResult.SUCCESS

        provider = TracerProvider()
        provider.add_span_processor(BatchSpanProcessor(Null()))
        trace.set_tracer_provider(provider)
    else:
        os.environ["LOOM_TELEMETRY_AUTO"] = "0"
    import loom

    port = free_port()
    bridge_exports = mode.startswith("on-otlp") or mode == "bridge-only"
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp if bridge_exports else "http://127.0.0.1:9",
           "RUST_LOG": "error", "OTEL_TRACES_SAMPLER": "always_off" if mode == "off" else "always_on"}
    proc = subprocess.Popen([str(binary("loom-bridge")), "--listen", f"127.0.0.1:{port}", "--dashboard-listen", "off"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    assert proc.stdout is not None
    for line in proc.stdout:
        if re.search("listening on", line):
            break

    async def scenario() -> dict:
        received = 0
        done = asyncio.Event()
        latencies = []
        pending = {}

        async def on_event(ctx, topic, msg):
            nonlocal received
            received += 1
            sent = pending.pop(msg.id, None)
            if sent is not None:
                latencies.append(time.perf_counter() - sent)
                done.set()
            elif received >= n:
                done.set()

        url = f"http://127.0.0.1:{port}"
        b = loom.Agent("bench-b", topics=["bench.*"], on_event=on_event, bridge_addr=url, telemetry=False, qos="reliable")
        a = loom.Agent("bench-a", bridge_addr=url, telemetry=False)
        sidecar_pid = int(os.environ.get("BENCH_SIDECAR_PID", "0"))
        async with b, a:
            cpu0 = (cpu_s(os.getpid()), cpu_s(proc.pid), cpu_s(sidecar_pid) if sidecar_pid else 0.0)
            start = time.perf_counter()
            await asyncio.gather(*(a.context.emit("bench.data", b"x" * 64) for _ in range(n)))
            await asyncio.wait_for(done.wait(), 120)
            rate = n / (time.perf_counter() - start)
            cpu1 = (cpu_s(os.getpid()), cpu_s(proc.pid), cpu_s(sidecar_pid) if sidecar_pid else 0.0)
            for _ in range(lat_n):
                done.clear()
                # Register the id before emitting: delivery can beat the ack.
                eid_holder = {}

                async def emit_one():
                    t0 = time.perf_counter()
                    ev_id = await a.context.emit("bench.data", b"y", wait=False)
                    eid_holder["id"] = ev_id
                    pending[ev_id] = t0
                await emit_one()
                await asyncio.wait_for(done.wait(), 10)
        latencies.sort()
        # CPU per event of each process during the throughput phase (the sidecar's includes the
        # bridge's spans; both agents share the Python process).
        cpu = [(b1 - b0) / n * 1e6 for b0, b1 in zip(cpu0, cpu1)]
        return {"rate": rate, "p50": latencies[len(latencies) // 2] * 1e6,
                "p99": latencies[int(len(latencies) * 0.99) - 1] * 1e6,
                "cpu_py": cpu[0], "cpu_bridge": cpu[1], "cpu_sidecar": cpu[2]}

    try:
        out = asyncio.run(scenario())
        loom.tracing.shutdown_telemetry()
        # A full queue drops spans instead of exporting them: that would flatter the figures.
        d = loom.tracing.span_drops()
        out["dropped"] = d["queue_full"] + d["export_failed"]
        with open("/proc/self/status") as f:
            out["rss_mib"] = next(int(x.split()[1]) for x in f if x.startswith("VmHWM")) / 1024
        return out
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--mode":
        print(json.dumps(run_mode(sys.argv[2], int(os.environ.get("BENCH_N", "5000")), int(os.environ.get("BENCH_LAT_N", "500")))))
        return
    modes = sys.argv[1:] or list(MODES)
    for m in modes:
        if m not in MODES + EXTRA_MODES:
            sys.exit(f"unknown mode {m!r}; one of {', '.join(MODES + EXTRA_MODES)}")
    import tempfile

    rounds = int(os.environ.get("BENCH_ROUNDS", "3"))

    with tempfile.TemporaryDirectory() as tmp:
        procs, endpoint = start_sidecar(Path(tmp))
        sidecar = procs[0]
        try:
            runs: dict = {m: [] for m in modes}
            # Rounds interleave the modes, so a burst of load elsewhere on the machine hits them
            # alike; each figure is the median over the rounds.
            for _ in range(rounds):
                for mode in modes:
                    out = subprocess.run([sys.executable, __file__, "--mode", mode], capture_output=True, text=True,
                                         timeout=600, env={**os.environ, "BENCH_OTLP_ENDPOINT": endpoint,
                                                                         "BENCH_SIDECAR_PID": str(sidecar.pid)})
                    if out.returncode != 0:
                        sys.exit(out.stderr)
                    runs[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
            results = {m: {k: statistics.median(r[k] for r in rs) if k != "dropped" else sum(r[k] for r in rs)
                           for k in rs[0]} for m, rs in runs.items()}
        finally:
            for p in procs:
                p.terminate()
                p.wait(10)
    print(f"Python agent A → loom-bridge → agent B (emit → on_event), one process per mode and round, median of {rounds}")
    print("| tracing | events/s | vs off | p50 µs | p99 µs | µs/event over off | spans dropped | peak RSS MiB "
          "| CPU µs/event: Python | bridge | sidecar |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    base = results.get("off")
    for mode, r in results.items():
        ratio = f"{r['rate'] / base['rate']:.2f}" if base else "-"
        extra = f"{(1 / r['rate'] - 1 / base['rate']) * 1e6:.0f}" if base else "-"
        print(f"| {mode} | {r['rate']:.0f} | {ratio} | {r['p50']:.0f} | {r['p99']:.0f} | {extra} | {r['dropped']} "
              f"| {r['rss_mib']:.0f} | {r['cpu_py']:.0f} | {r['cpu_bridge']:.0f} | {r['cpu_sidecar']:.0f} |")


if __name__ == "__main__":
    main()
