"""Sums a py-spy raw profile of `bench_agents.py` by component, in µs of CPU per event.

    py-spy record --subprocesses --nonblocking -r 250 -f raw -o prof.txt -- \\
        .venv/bin/python loom-sdk-py/bench/bench_agents.py off on-otlp-before on-otlp
    .venv/bin/python loom-sdk-py/bench/pyspy_summary.py prof.txt 250 EVENTS

EVENTS is events per mode (BENCH_N + BENCH_LAT_N). A sample is charged to the component of the
innermost frame that belongs to one, and to the batch thread or the event loop by its stack.
"""

from __future__ import annotations

import re
import sys
from collections import defaultdict
from typing import Dict

# (component, pattern on a frame "func (file:line)"; py-spy shortens paths to the package), tried
# from the innermost frame outwards.
GROUPS = [
    ("OTLP encode, SDK Python encoder", re.compile(r"\(common/_internal/|_pb2\.py|\(protobuf/")),
    ("OTLP encode, loom._native", re.compile(r"_translate_data \(loom/tracing\.py")),
    ("span pipeline: wait for a batch + encode (Rust, GIL released)", re.compile(r"NativeSpanProcessor\._run \(loom/tracing\.py")),
    ("OTLP exporter + gRPC", re.compile(r"\(grpc/(exporter|trace_exporter|_channel|_common|__init__)")),
    ("gRPC (agent stream)", re.compile(r"\(grpc/aio/")),
    ("context attach/detach", re.compile(r"\(context/__init__\.py")),
    ("trace context inject/extract (Envelope)", re.compile(r"\(loom/envelope\.py")),
    ("span start/attributes/end (SDK)", re.compile(
        r"\((trace/__init__|trace/span|trace/export/__init__|attributes/__init__|util/__init__|util/instrumentation|_decorator|contextlib)\.py")),
]


def main() -> None:
    path, rate, events = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
    table: Dict[str, Dict[str, float]] = defaultdict(lambda: defaultdict(float))
    for line in open(path):
        stack, _, count = line.rstrip().rpartition(" ")
        frames = stack.split(";")
        m = re.search(r"--mode (\S+)\"", frames[1]) if len(frames) > 1 else None
        if m is None:
            continue
        mode = m.group(1)
        if any("importlib._bootstrap" in f for f in frames):
            continue  # start-up imports, not the per-event path
        batch = any("BatchProcessor.worker" in f or "NativeSpanProcessor._run" in f for f in frames)
        thread = "batch thread" if batch else "event loop"
        comp = "other (agent, asyncio, event protobuf)"
        for f in reversed(frames):
            hit = next((name for name, pat in GROUPS if pat.search(f)), None)
            if hit:
                comp = hit
                break
        table[mode][f"{thread}: {comp}"] += int(count)
    modes = list(table)
    keys = sorted({k for t in table.values() for k in t})
    us = 1e6 / rate / events
    print("| component | " + " | ".join(f"{m} µs/event" for m in modes) + " |")
    print("|---|" + "---:|" * len(modes))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{table[m].get(k, 0) * us:.0f}" for m in modes) + " |")
    print("| total (Python process) | " + " | ".join(f"{sum(table[m].values()) * us:.0f}" for m in modes) + " |")


if __name__ == "__main__":
    main()
