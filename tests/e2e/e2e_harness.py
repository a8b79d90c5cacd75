"""Harness for end-to-end runs of examples/trace-test: the real sidecar, bridge and agents,
started by the same runner as `loom run`, on free loopback ports."""

from __future__ import annotations

import json
import re
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple

import pytest

from loom._runner import Project, Runner
from loom._traces import Span, group_by_trace, read_spans

# Extra environment variables per agent name.
AgentEnv = Dict[str, Dict[str, str]]

REPO = Path(__file__).resolve().parents[2]
PROJECT = REPO / "examples" / "trace-test"

# docs/contracts.md §1: the parent chain of one reading across both hops, with each span's process.
EXPECTED_CHAIN = [
    ("sensor.emit_data", "agent-sensor"),
    ("bridge.publish", "loom-bridge"),
    ("event_bus.publish", "loom-bridge"),
    ("bridge.forward", "loom-bridge"),
    ("agent.on_event", "agent-processor"),
    ("bridge.publish", "loom-bridge"),
    ("event_bus.publish", "loom-bridge"),
    ("bridge.forward", "loom-bridge"),
    ("agent.on_event", "agent-output"),
]


class Run:
    """A started project plus what it printed."""

    def __init__(self, runner: Runner, lines: List[str]) -> None:
        self.runner = runner
        self.lines = lines

    @property
    def trace_file(self) -> Path:
        return self.runner.trace_file

    def traces(self) -> Dict[str, List[Span]]:
        return group_by_trace(read_spans(str(self.trace_file)))

    def logged(self, agent: str, pattern: str) -> List[re.Match]:
        rx = re.compile(pattern)
        prefix = f"[{agent}] "
        return [m for line in list(self.lines) if line.startswith(prefix) for m in [rx.search(line)] if m]

    def sensor_trace_ids(self) -> List[str]:
        return [m.group(1) for m in self.logged("sensor", r"reading seq=\d+ .*trace_id=([0-9a-f]{32})")]


def wait_until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def settle(run: Run, quiet: float = 2.0, timeout: float = 30.0) -> None:
    """Waits until no new span arrived for `quiet` seconds (exporters flush every ~0.5 s)."""
    deadline = time.monotonic() + timeout
    last = -1
    stable_since = time.monotonic()
    while time.monotonic() < deadline:
        n = sum(len(v) for v in run.traces().values())
        if n != last:
            last, stable_since = n, time.monotonic()
        elif time.monotonic() - stable_since >= quiet:
            return
        time.sleep(0.1)
    raise AssertionError("spans kept arriving")


@contextmanager
def project_runs(
    project: Path, trace_file: Path, base_env: Optional[Callable[[], AgentEnv]] = None
) -> Iterator[Callable[..., Run]]:
    """`start(agent_env=None)` runs `project` on free ports (spans to `trace_file`); each agent's
    variables are `base_env()`'s, overridden by `agent_env`'s. Every run is stopped on exit."""
    runners: List[Runner] = []

    def start(agent_env: Optional[AgentEnv] = None) -> Run:
        lines: List[str] = []
        lock = threading.Lock()

        def out(line: str) -> None:
            with lock:
                lines.append(line)

        env = base_env() if base_env else {}
        for name, extra in (agent_env or {}).items():
            env.setdefault(name, {}).update(extra)
        runner = Runner(
            Project.load(project),
            auto_ports=True,
            out=out,
            trace_file=trace_file,
            agent_env=env,
            env={"LOOM_BRIDGE_DASHBOARD": "off", "RUST_LOG": "warn"},
        )
        runners.append(runner)
        runner.start()
        return Run(runner, lines)

    try:
        yield start
    finally:
        for r in runners:
            r.stop()


def linear_chain(root: Span, spans: List[Span]) -> Tuple[List[Tuple[str, str]], Optional[str]]:
    """(name, service) of each span from `root` down through only children, and where that
    stops: None at a leaf, else which span has several children."""
    children: Dict[str, List[Span]] = {}
    for s in spans:
        children.setdefault(s.parent_span_id, []).append(s)
    node, got = root, []
    while True:
        got.append((node.name, node.service))
        kids = children.get(node.span_id, [])
        if len(kids) != 1:
            return got, (f"{node.name} has {len(kids)} children" if kids else None)
        node = kids[0]


def chain_problems(spans: List[Span]) -> List[str]:
    """Everything wrong with one trace compared to EXPECTED_CHAIN (empty list: complete)."""
    problems: List[str] = []
    if len({s.trace_id for s in spans}) != 1:
        problems.append("spans of several traces")
    ids = {s.span_id for s in spans}
    orphans = [s.name for s in spans if s.parent_span_id and s.parent_span_id not in ids]
    if orphans:
        problems.append(f"orphans (parent missing): {orphans}")
    for s in spans:
        for key in ("loom.agent.id", "loom.topic"):
            if not s.attributes.get(key):
                problems.append(f"{s.name} ({s.service}) lacks {key}")
    roots = [s for s in spans if not s.parent_span_id]
    if len(roots) != 1:
        return problems + [f"{len(roots)} roots"]
    got, fork = linear_chain(roots[0], spans)
    if fork:
        problems.append(fork)
    if got != EXPECTED_CHAIN:
        problems.append(f"chain {got}")
    if len(spans) != len(EXPECTED_CHAIN):
        problems.append(f"{len(spans)} spans, expected {len(EXPECTED_CHAIN)}")
    return problems


# ----- examples/market-analyst ---------------------------------------------------------------

MARKET_PROJECT = REPO / "examples" / "market-analyst"


def span_extras(path: Path) -> Dict[str, dict]:
    """Links and events per span id, read from the raw file-exporter lines (loom._traces.Span
    keeps neither): {span_id: {"links": [{"trace_id", "span_id", "attributes"}], "events":
    [{"name", "attributes"}], "status_message": str}}."""
    from loom._traces import _attrs, _hex_id

    out: Dict[str, dict] = {}
    try:
        fh = open(path, "r", encoding="utf-8")
    except FileNotFoundError:
        return out
    with fh:
        for line in fh:
            try:
                req = json.loads(line)
            except json.JSONDecodeError:
                continue
            for rs in req.get("resourceSpans", []):
                for ss in rs.get("scopeSpans", []):
                    for s in ss.get("spans", []):
                        out[_hex_id(s.get("spanId"))] = {
                            "links": [{"trace_id": _hex_id(l.get("traceId")), "span_id": _hex_id(l.get("spanId")),
                                       "attributes": _attrs(l.get("attributes"))} for l in s.get("links", []) or []],
                            "events": [{"name": e.get("name", ""), "attributes": _attrs(e.get("attributes"))}
                                       for e in s.get("events", []) or []],
                            "status_message": (s.get("status") or {}).get("message", ""),
                        }
    return out
