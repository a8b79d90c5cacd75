"""Upstream compatibility end to end: agents written in upstream loom-py's API shape
(tests/e2e/upstream_project/agents/) and a loom.toml in upstream's schema, run by the real
sidecar and bridge — once through the runner behind `loom run`, once as plain `python agents/x.py`
processes. Every reading must be one 9-span trace with the right parents."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Dict, Iterator, List

import pytest

from loom._runner import Project, Runner
from loom._traces import Span
from e2e_harness import REPO, Run, linear_chain, settle, wait_until

pytestmark = pytest.mark.timeout(180)

UPSTREAM_PROJECT = Path(__file__).resolve().parent / "upstream_project"
SECRET = "sk-upstream-test-secret-4711"

# Upstream names services agent-{agent_id}; its agent ids end in "-agent".
UPSTREAM_CHAIN = [
    ("sensor.emit_data", "agent-sensor-agent"),
    ("bridge.publish", "loom-bridge"),
    ("event_bus.publish", "loom-bridge"),
    ("bridge.forward", "loom-bridge"),
    ("agent.on_event", "agent-processor-agent"),
    ("bridge.publish", "loom-bridge"),
    ("event_bus.publish", "loom-bridge"),
    ("bridge.forward", "loom-bridge"),
    ("agent.on_event", "agent-output-agent"),
]


def chain_of(spans: List[Span]) -> List[tuple]:
    """The root-to-leaf chain of one trace; an AssertionError says what breaks it."""
    assert len({s.trace_id for s in spans}) == 1
    ids = {s.span_id for s in spans}
    orphans = [s.name for s in spans if s.parent_span_id and s.parent_span_id not in ids]
    assert not orphans, f"parents missing for {orphans}"
    roots = [s for s in spans if not s.parent_span_id]
    assert len(roots) == 1, f"{len(roots)} roots"
    got, fork = linear_chain(roots[0], spans)
    assert fork is None, fork
    return got


def check_readings(run: Run, expected: int) -> None:
    sensor = [m.group(1) for m in run.logged("sensor", r"reading #\d+ trace_id=([0-9a-f]{32})")]
    outputs = run.logged("output", r"#(\d+) processed=([\d.]+) type=(\S+) sender=(\S+) trace_id=([0-9a-f]{32}) flags=(\S+)")
    assert len(sensor) == expected, run.lines[-40:]
    assert len(outputs) == expected, run.lines[-40:]
    settle(run)
    traces = run.traces()
    for n, (tid, out) in enumerate(zip(sensor, outputs), 1):
        assert int(out.group(1)) == n
        # The processor multiplied by its per-agent setting; the event carries upstream's fields.
        assert float(out.group(2)) == (20 + n % 10) * 1.5
        assert (out.group(3), out.group(4)) == ("processed.reading", "processor-agent")
        assert out.group(5) == tid, "output's event.trace_id is the sensor's trace"
        assert int(out.group(6), 16) & 1, "sampled"
        spans = traces.get(tid, [])
        assert chain_of(spans) == UPSTREAM_CHAIN, f"trace {tid}"
        assert len(spans) == 9


@pytest.fixture
def project_copy(tmp_path: Path) -> Path:
    """The upstream project in a temporary folder (`loom run` writes `.loom/` into it)."""
    dst = tmp_path / "upstream_project"
    shutil.copytree(UPSTREAM_PROJECT, dst, ignore=shutil.ignore_patterns(".loom", "__pycache__"))
    return dst


@pytest.fixture
def runners() -> Iterator[List[Runner]]:
    started: List[Runner] = []
    yield started
    for r in started:
        r.stop()


def make_runner(project: Project, tmp_path: Path, runners: List[Runner], lines: List[str]) -> Runner:
    lock = threading.Lock()

    def out(line: str) -> None:
        with lock:
            lines.append(line)

    runner = Runner(project, auto_ports=True, out=out, trace_file=tmp_path / "spans.jsonl",
                    env={"RUST_LOG": "warn", "LOOM_BRIDGE_DASHBOARD": "off"})
    runners.append(runner)
    return runner


def test_loom_run_starts_an_upstream_schema_project_with_upstream_style_agents(
        project_copy: Path, tmp_path: Path, runners: List[Runner], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SENSOR_INTERVAL_S", "0.3")
    monkeypatch.setenv("UPSTREAM_TEST_API_KEY", SECRET)
    project = Project.load(project_copy)
    assert project.schema == "upstream" and project.name == "upstream-trace-test"
    assert project.sidecar_config is None, "no [sidecar]: the built-in default"
    assert [a.name for a in project.agents] == ["output", "processor", "sensor"]
    lines: List[str] = []
    runner = make_runner(project, tmp_path, runners, lines)
    runner.start()
    run = Run(runner, lines)
    wait_until(lambda: len(run.logged("output", r"#\d+ processed=")) >= 3, 60, "three processed readings")
    check_readings(run, 3)
    # The built-in sidecar config was written into .loom/ and is what the sidecar ran.
    assert (project_copy / ".loom" / "sidecar-default.yaml").is_file()
    # [llm.local] reached the processor as environment; the key itself is never printed.
    assert run.logged("processor", r"started llm_model=stand-in-model key_set=True")
    assert not [line for line in lines if SECRET in line]


def test_plain_python_processes_of_upstream_style_agents_form_one_trace_per_reading(
        project_copy: Path, tmp_path: Path, runners: List[Runner]) -> None:
    project = Project.load(project_copy)
    lines: List[str] = []
    runner = make_runner(project, tmp_path, runners, lines)
    runner.start(agents=False)
    env = {k: v for k, v in os.environ.items() if k != "OTEL_SERVICE_NAME"}
    env.update({
        "LOOM_BRIDGE_ADDR": runner.bridge_address,  # upstream's form: host:port, no scheme
        "OTEL_EXPORTER_OTLP_ENDPOINT": runner.otlp_endpoint,
        "OTEL_BSP_SCHEDULE_DELAY": "200",
        "LOOM_AGENT_COUNT": "3",
        "LOOM_AGENT_INTERVAL_S": "0.3",
        "PYTHONUNBUFFERED": "1",
    })
    procs: Dict[str, subprocess.Popen] = {}
    lock = threading.Lock()

    def pump(name: str, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            with lock:
                lines.append(f"[{name}] {line.rstrip()}")

    run = Run(runner, lines)
    try:
        for name in ("output", "processor", "sensor"):
            proc = subprocess.Popen([sys.executable, f"agents/{name}.py"], cwd=project_copy, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            procs[name] = proc
            threading.Thread(target=pump, args=(name, proc), daemon=True).start()
            wait_until(lambda: bool(run.logged(name, r"started")), 30, f"{name} to start")
        wait_until(lambda: len(run.logged("output", r"#\d+ processed=")) >= 3, 60, "three processed readings")
        check_readings(run, 3)
    finally:
        codes = {}
        for name, proc in reversed(list(procs.items())):
            proc.send_signal(signal.SIGTERM)
            try:
                codes[name] = proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
    # SIGTERM ends an upstream-style agent through SystemExit (spans flushed), not by instant death.
    assert all(c == 128 + signal.SIGTERM for c in codes.values()), codes


def test_jaeger_endpoint_adds_an_otlp_exporter_to_the_default_and_to_a_projects_own_config(
        project_copy: Path, tmp_path: Path, runners: List[Runner]) -> None:
    from loom._runner import find_binary

    sidecar = find_binary("loom-sidecar", REPO)
    trace_test = tmp_path / "trace-test"
    shutil.copytree(REPO / "examples" / "trace-test", trace_test, ignore=shutil.ignore_patterns(".loom"))
    for project in (Project.load(project_copy), Project.load(trace_test)):
        runner = Runner(project, auto_ports=True, env={"JAEGER_OTLP_ENDPOINT": "http://127.0.0.1:4317"})
        if project.schema == "loom":
            # trace-test names its own Jaeger variant; without it the exporter is added to its config.
            project.sidecar_jaeger_config = None
        path = runner._sidecar_config()
        text = path.read_text()
        assert "otlp/jaeger" in text and "JAEGER_OTLP_ENDPOINT" in text
        check = subprocess.run([sidecar, "validate", "--config", str(path)], capture_output=True, text=True,
                               env={**os.environ, "JAEGER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}, timeout=30)
        assert check.returncode == 0, check.stdout + check.stderr
    # Without the variable, the default has no Jaeger exporter.
    plain = Runner(Project.load(project_copy), auto_ports=True)._sidecar_config()
    assert "otlp/jaeger" not in re.sub(r"#.*", "", plain.read_text())


def test_the_bridge_parents_an_event_with_only_bare_trace_keys_on_its_span(
        project_copy: Path, tmp_path: Path, runners: List[Runner]) -> None:
    import asyncio
    import time
    import uuid

    import loom
    from loom.v1 import loom_pb2 as pb

    trace_id, span_id = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    lines: List[str] = []
    runner = make_runner(Project.load(project_copy), tmp_path, runners, lines)
    runner.start(agents=False)

    async def publish() -> None:
        async with loom.Agent("legacy-writer", bridge_addr=runner.bridge_address, telemetry=False) as agent:
            md = {"trace_id": trace_id, "span_id": span_id, "trace_flags": "01"}
            ev = pb.Event(id=str(uuid.uuid4()), type="reading", topic="legacy.data", payload=b"{}", metadata=md,
                          timestamp_unix_nano=time.time_ns())
            await agent._publish("legacy.data", ev, True)

    asyncio.run(publish())
    run = Run(runner, lines)
    wait_until(lambda: trace_id in run.traces(), 30, "the bridge's spans of the bare-key event")
    settle(run)
    spans = run.traces()[trace_id]
    publish_span = next(s for s in spans if s.name == "bridge.publish")
    assert publish_span.parent_span_id == span_id, "bridge.publish's parent is the span the bare keys name"
    assert {s.name for s in spans} >= {"bridge.publish", "event_bus.publish"}


def test_the_loom_command_runs_the_upstream_project(project_copy: Path, tmp_path: Path) -> None:
    """`loom run DIR` itself (the console script), on free ports, for a few seconds."""
    from loom._runner import free_port

    toml = project_copy / "loom.toml"
    toml.write_text(toml.read_text().replace("port = 50051", f"port = {free_port()}"))
    env = {k: v for k, v in os.environ.items() if k not in ("UPSTREAM_TEST_API_KEY", "OTEL_SERVICE_NAME")}
    env.update({f"LOOM_{k}_ENDPOINT": f"127.0.0.1:{free_port()}" for k in ("OTLP_GRPC", "OTLP_HTTP", "HEALTH",
                                                                             "METRICS")})
    env.update({"LOOM_BRIDGE_DASHBOARD": "off", "RUST_LOG": "warn", "SENSOR_INTERVAL_S": "0.4"})
    loom_cmd = Path(sys.executable).parent / "loom"
    proc = subprocess.run([str(loom_cmd), "run", str(project_copy), "--duration", "8", "--quiet", "0.8"],
                          env=env, capture_output=True, text=True, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-3000:]
    assert "loom.toml llm.local.api_key: ${UPSTREAM_TEST_API_KEY} is not set" in out
    assert "using the built-in sidecar config" in out
    complete = re.findall(r"trace ([0-9a-f]{32})  \(9 spans\)", out)
    assert len(complete) == 3, out[-3000:]
    assert "ORPHAN" not in out
