"""Two Python agents through a real loom-bridge: events/s (pipelined emits) and p50/p99
emit → on_event latency (one event in flight), with tracing on (sampled, batch processor,
discarding exporter) and off. Prints one table.

Run: .venv/bin/python loom-sdk-py/bench/bench_agents.py   (needs target/debug or release loom-bridge)
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
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def bridge_binary() -> Path:
    base = Path(os.environ.get("LOOM_BIN_DIR", "")) if os.environ.get("LOOM_BIN_DIR") else None
    for cand in ([base / "loom-bridge"] if base else []) + [REPO / "target/release/loom-bridge", REPO / "target/debug/loom-bridge"]:
        if cand.is_file():
            return cand
    sys.exit("loom-bridge not built: cargo build --release -p loom-bridge")


def run_mode(mode: str, n: int, lat_n: int) -> dict:
    if mode == "on":
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

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "RUST_LOG": "error",
           "OTEL_TRACES_SAMPLER": "always_on" if mode == "on" else "always_off"}
    proc = subprocess.Popen([str(bridge_binary()), "--listen", f"127.0.0.1:{port}", "--dashboard-listen", "off"],
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
        async with b, a:
            start = time.perf_counter()
            await asyncio.gather(*(a.context.emit("bench.data", b"x" * 64) for _ in range(n)))
            await asyncio.wait_for(done.wait(), 120)
            rate = n / (time.perf_counter() - start)
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
        return {"rate": rate, "p50": latencies[len(latencies) // 2] * 1e6,
                "p99": latencies[int(len(latencies) * 0.99) - 1] * 1e6}

    try:
        return asyncio.run(scenario())
    finally:
        proc.terminate()
        proc.wait(10)


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--mode":
        print(json.dumps(run_mode(sys.argv[2], int(os.environ.get("BENCH_N", "5000")), int(os.environ.get("BENCH_LAT_N", "500")))))
        return
    print("Python agent A → loom-bridge → agent B (emit → on_event), one process per mode")
    print("| tracing | events/s | p50 µs | p99 µs |")
    print("|---|---:|---:|---:|")
    for mode in ("off", "on"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode], capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            sys.exit(out.stderr)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {mode} | {r['rate']:.0f} | {r['p50']:.0f} | {r['p99']:.0f} |")


if __name__ == "__main__":
    main()
