"""The `loom` command: `loom run PROJECT` starts a project with live trace trees, `loom traces`
prints the traces a sidecar's file exporter wrote."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import List, Optional

from loom._runner import Project, Runner, RunnerError
from loom._traces import TraceFollower, chain, print_traces, render_trace


def _cmd_run(args: argparse.Namespace) -> int:
    try:
        project = Project.load(args.project)
    except RunnerError as exc:
        print(f"loom run: {exc}", file=sys.stderr)
        return 2
    lock = threading.Lock()

    def out(line: str) -> None:
        with lock:
            print(line, flush=True)

    trace_file = Path(args.trace_file).resolve() if args.trace_file else project.trace_file
    if not args.keep_traces and trace_file.exists():
        trace_file.unlink()
    runner = Runner(project, out=out, trace_file=trace_file, quiet_span_lines=not args.no_traces and not args.span_lines)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    jaeger_ui = os.environ.get("JAEGER_UI_URL")
    return_code = 0
    try:
        for ref in project.unset_vars:
            out(f"[loom] warning: loom.toml {ref} is not set (environment or .env); using an empty value")
        if project.sidecar_config is None:
            out("[loom] no [sidecar] in loom.toml: using the built-in sidecar config (.loom/sidecar-default.yaml)")
        out(f"[loom] starting {project.name}: sidecar, bridge, {len(project.agents)} agents (Ctrl-C stops)")
        runner.start()
        out(f"[loom] running; spans → {runner.otlp_endpoint} → sidecar → {trace_file}")
        follower = TraceFollower(str(trace_file), quiet_s=args.quiet)
        deadline = time.monotonic() + args.duration if args.duration else None
        reported: set = set()
        while not stop.is_set():
            for tid, spans in follower.poll():
                if not args.no_traces:
                    out(render_trace(tid, spans, jaeger_ui))
                    out(f"  chain: {chain(spans)}")
            dead = set(runner.check_alive())
            if dead - reported:
                out(f"[loom] exited: {', '.join(sorted(dead - reported))}")
                reported |= dead
            # Agents may come and go; without the bridge or the sidecar the project is down.
            if dead & {"sidecar", "bridge"}:
                return_code = 1
                break
            if deadline and time.monotonic() >= deadline:
                break
            stop.wait(0.25)
    except RunnerError as exc:
        out(f"[loom] {exc}")
        return_code = 1
    finally:
        out("[loom] stopping agents, bridge, sidecar")
        codes = runner.stop()
        out("[loom] stopped: " + ", ".join(f"{k}={v}" for k, v in codes.items()))
    return return_code


def _cmd_traces(args: argparse.Namespace) -> int:
    query_url = args.query_url or os.environ.get("LOOM_TRACE_QUERY_URL")
    if query_url and not args.file:
        if args.follow:
            print("loom traces: --follow reads the file exporter only", file=sys.stderr)
            return 2
        return print_traces(None, trace_id=args.trace_id, limit=args.limit, query_url=query_url)
    path = args.file
    if not path:
        project = Project.load(args.project)
        path = str(project.trace_file)
    if not args.follow:
        return print_traces(path, trace_id=args.trace_id, limit=args.limit)
    follower = TraceFollower(path, quiet_s=args.quiet)
    try:
        while True:
            for tid, spans in follower.poll():
                if args.trace_id and tid != args.trace_id.lower():
                    continue
                print(render_trace(tid, spans, os.environ.get("JAEGER_UI_URL")))
                print(f"  chain: {chain(spans)}", flush=True)
            time.sleep(0.25)
    except KeyboardInterrupt:
        return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="loom", description="Run Loom projects and look at their traces.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="start the sidecar, the bridge and the project's agents")
    run.add_argument("project", nargs="?", default=".", help="folder with loom.toml (default: .)")
    run.add_argument("--duration", type=float, default=0, help="stop after this many seconds (0 = until Ctrl-C)")
    run.add_argument("--trace-file", help="where the sidecar's file exporter writes (default from loom.toml)")
    run.add_argument("--keep-traces", action="store_true", help="do not truncate the trace file at start")
    run.add_argument("--no-traces", action="store_true", help="do not print trace trees")
    run.add_argument("--span-lines", action="store_true", help="also show the sidecar debug exporter's per-span lines")
    run.add_argument("--quiet", type=float, default=1.5, help="seconds without new spans before a trace is printed")
    run.set_defaults(func=_cmd_run)

    tr = sub.add_parser("traces", help="print traces from a sidecar file exporter")
    tr.add_argument("project", nargs="?", default=".", help="folder with loom.toml (default: .)")
    tr.add_argument("--file", help="file exporter path (default: the project's trace file)")
    tr.add_argument("--query-url", help="read from a Jaeger api_v3 query API instead, e.g. the sidecar's "
                    "trace_store http://127.0.0.1:16687 (default: $LOOM_TRACE_QUERY_URL)")
    tr.add_argument("--trace-id", help="only this trace")
    tr.add_argument("--limit", type=int, default=20, help="newest N traces (default 20)")
    tr.add_argument("--follow", "-f", action="store_true", help="keep printing traces as they complete")
    tr.add_argument("--quiet", type=float, default=1.5)
    tr.set_defaults(func=_cmd_traces)

    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except RunnerError as exc:
        print(f"loom: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
