"""Starts a Loom project from its `loom.toml`: loom-sidecar, loom-bridge and the agents as child
processes, with prefixed logs, a live trace view, and an orderly shutdown on Ctrl-C."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # pragma: no cover - exercised only on 3.9/3.10
    import tomli as tomllib  # type: ignore[no-redef]


class RunnerError(RuntimeError):
    """A project that cannot start: bad loom.toml, missing binary, a process that died at start-up."""


@dataclass
class AgentSpec:
    name: str
    script: Path
    env: Dict[str, str] = field(default_factory=dict)
    # A regex the agent prints once it is connected; the runner waits for it before the next.
    wait_for: Optional[str] = None


@dataclass
class Project:
    root: Path
    name: str
    bridge_address: str
    sidecar_config: Path
    sidecar_jaeger_config: Optional[Path]
    trace_file: Path
    agents: List[AgentSpec]

    @classmethod
    def load(cls, root: os.PathLike) -> "Project":
        root = Path(root).resolve()
        manifest = root / "loom.toml"
        if not manifest.is_file():
            raise RunnerError(f"{manifest}: not found (a Loom project needs a loom.toml)")
        try:
            data = tomllib.loads(manifest.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise RunnerError(f"{manifest}: {exc}") from exc

        def req(table: dict, key: str, where: str) -> object:
            if key not in table:
                raise RunnerError(f"{manifest}: {where}.{key} is required")
            return table[key]

        project = data.get("project", {})
        bridge = data.get("bridge", {})
        sidecar = data.get("sidecar", {})
        agents = []
        for i, a in enumerate(data.get("agents", [])):
            where = f"agents[{i}]"
            script = root / str(req(a, "script", where))
            if not script.is_file():
                raise RunnerError(f"{manifest}: {where}.script: {script} does not exist")
            env = {str(k): str(v) for k, v in a.get("env", {}).items()}
            wait_for = a.get("wait_for")
            agents.append(AgentSpec(name=str(req(a, "name", where)), script=script, env=env,
                                    wait_for=str(wait_for) if wait_for else None))
        if not agents:
            raise RunnerError(f"{manifest}: no [[agents]] defined")
        jaeger = sidecar.get("jaeger_config")
        return cls(
            root=root,
            name=str(project.get("name", root.name)),
            bridge_address=str(bridge.get("address", "127.0.0.1:50051")),
            sidecar_config=root / str(sidecar.get("config", "sidecar.yaml")),
            sidecar_jaeger_config=(root / str(jaeger)) if jaeger else None,
            trace_file=root / str(sidecar.get("trace_file", ".loom/spans.jsonl")),
            agents=agents,
        )


def _toml_dashboard(root: Path) -> Dict[str, str]:
    """String settings of loom.toml's `[dashboard]` table (`jaeger_ui_url`, `trace_query_url`)."""
    try:
        table = tomllib.loads((root / "loom.toml").read_text(encoding="utf-8")).get("dashboard", {})
    except (OSError, tomllib.TOMLDecodeError):
        return {}
    return {str(k): v for k, v in table.items() if isinstance(v, str)} if isinstance(table, dict) else {}


def find_binary(name: str, start: Path) -> str:
    """LOOM_BIN_DIR, then the workspace's target/{release,debug} above `start`, then PATH."""
    bin_dir = os.environ.get("LOOM_BIN_DIR")
    if bin_dir:
        cand = Path(bin_dir) / name
        if cand.is_file():
            return str(cand)
        raise RunnerError(f"{name}: not found in LOOM_BIN_DIR={bin_dir}")
    for parent in [start, *start.parents]:
        if (parent / "Cargo.toml").is_file() and (parent / "target").is_dir():
            newest = None
            for profile in ("release", "debug"):
                cand = parent / "target" / profile / name
                if cand.is_file() and (newest is None or cand.stat().st_mtime > newest.stat().st_mtime):
                    newest = cand
            if newest:
                return str(newest)
    found = shutil.which(name)
    if found:
        return found
    raise RunnerError(f"{name}: binary not found (build it with `cargo build --bins`, or set LOOM_BIN_DIR)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Child:
    """One child process whose merged output is forwarded line by line with a prefix."""

    def __init__(self, name: str, argv: List[str], env: Dict[str, str], cwd: Path,
                 out: Callable[[str], None]) -> None:
        self.name = name
        self.argv = argv
        self.env = env
        self.cwd = cwd
        self._out = out
        self._lines: List[str] = []
        self._cond = threading.Condition()
        self.proc: Optional[subprocess.Popen] = None

    def start(self) -> None:
        self._lines = []
        # A session of its own: Ctrl-C reaches only the runner, which stops children in order.
        self.proc = subprocess.Popen(self.argv, env=self.env, cwd=str(self.cwd), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
                                     bufsize=1, start_new_session=True)
        threading.Thread(target=self._pump, name=f"log-{self.name}", daemon=True).start()

    def _pump(self) -> None:
        assert self.proc and self.proc.stdout
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            with self._cond:
                self._lines.append(line)
                if len(self._lines) > 2000:
                    del self._lines[:1000]
                self._cond.notify_all()
            self._out(f"[{self.name}] {line}")

    def wait_for(self, pattern: str, timeout: float) -> re.Match:
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for line in self._lines[seen:]:
                    m = rx.search(line)
                    if m:
                        return m
                seen = len(self._lines)
                if self.proc and self.proc.poll() is not None:
                    raise RunnerError(f"{self.name} exited with code {self.proc.returncode} during start-up")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RunnerError(f"{self.name}: no line matching {pattern!r} within {timeout:.0f}s")
                self._cond.wait(min(left, 0.2))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGTERM, grace: float = 10.0) -> Optional[int]:
        if not self.proc:
            return None
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        return self.proc.returncode


class Runner:
    """Starts sidecar → bridge → agents; stops them in reverse order (agents flush their spans
    before the bridge and the sidecar go, and the sidecar drains last)."""

    def __init__(self, project: Project, *, auto_ports: bool = False, env: Optional[Dict[str, str]] = None,
                 agent_env: Optional[Dict[str, Dict[str, str]]] = None, use_sidecar: bool = True,
                 out: Callable[[str], None] = print, python: str = sys.executable,
                 trace_file: Optional[Path] = None, quiet_span_lines: bool = False) -> None:
        self.project = project
        # The runner's own trace trees make the debug exporter's per-span lines redundant.
        self.out = (lambda line: None if line.startswith("[sidecar] span ") else out(line)) if quiet_span_lines else out
        self.python = python
        self.use_sidecar = use_sidecar
        self.base_env = dict(os.environ)
        # Spans should reach the sidecar within a second, not the SDKs' default 5 s.
        self.base_env.setdefault("OTEL_BSP_SCHEDULE_DELAY", "500")
        self.base_env.update(env or {})
        self.agent_env = agent_env or {}
        self.trace_file = Path(trace_file) if trace_file else project.trace_file
        if auto_ports:
            self.bridge_address = f"127.0.0.1:{free_port()}"
            self.otlp_grpc = f"127.0.0.1:{free_port()}"
            self.otlp_http = f"127.0.0.1:{free_port()}"
            self.health = f"127.0.0.1:{free_port()}"
            self.metrics = f"127.0.0.1:{free_port()}"
            # The bridge's dashboard would otherwise take the fixed 127.0.0.1:3030.
            self.base_env.setdefault("LOOM_BRIDGE_DASHBOARD", f"127.0.0.1:{free_port()}")
        else:
            self.bridge_address = project.bridge_address
            self.otlp_grpc = self.base_env.get("LOOM_OTLP_GRPC_ENDPOINT", "127.0.0.1:4317")
            self.otlp_http = self.base_env.get("LOOM_OTLP_HTTP_ENDPOINT", "127.0.0.1:4318")
            self.health = self.base_env.get("LOOM_HEALTH_ENDPOINT", "127.0.0.1:13133")
            self.metrics = self.base_env.get("LOOM_METRICS_ENDPOINT", "127.0.0.1:8888")
        # Where the dashboard reads traces (a Jaeger api_v3 query service), when known.
        self.trace_query_url: Optional[str] = self.base_env.get("LOOM_TRACE_QUERY_URL") or None
        self.dashboard_url: Optional[str] = None
        self.sidecar: Optional[Child] = None
        self.bridge: Optional[Child] = None
        self.agents: Dict[str, Child] = {}

    @property
    def otlp_endpoint(self) -> str:
        return f"http://{self.otlp_grpc}"

    def _sidecar_config(self) -> Path:
        if self.base_env.get("JAEGER_OTLP_ENDPOINT") and self.project.sidecar_jaeger_config:
            return self.project.sidecar_jaeger_config
        return self.project.sidecar_config

    def start(self) -> None:
        try:
            if self.use_sidecar:
                self._start_sidecar()
            self._start_bridge()
            for spec in self.project.agents:
                self.start_agent(spec.name)
        except BaseException:
            self.stop()
            raise

    def _start_sidecar(self) -> None:
        binary = find_binary("loom-sidecar", self.project.root)
        self.trace_file.parent.mkdir(parents=True, exist_ok=True)
        env = dict(self.base_env)
        env.update({
            "LOOM_TRACE_FILE": str(self.trace_file),
            "LOOM_OTLP_GRPC_ENDPOINT": self.otlp_grpc,
            "LOOM_OTLP_HTTP_ENDPOINT": self.otlp_http,
            "LOOM_HEALTH_ENDPOINT": self.health,
            "LOOM_METRICS_ENDPOINT": self.metrics,
        })
        # The sidecar's own sampler is not the agents' business: keep it from inheriting theirs.
        for var in ("OTEL_TRACE_SAMPLER", "OTEL_TRACES_SAMPLER", "OTEL_TRACE_SAMPLER_ARG", "OTEL_TRACES_SAMPLER_ARG"):
            env.pop(var, None)
        self.sidecar = Child("sidecar", [binary, "--config", str(self._sidecar_config())], env,
                             self.project.root, self.out)
        self.sidecar.start()
        self.sidecar.wait_for(r"^ready$", timeout=30)
        if not self.trace_query_url:
            # A trace_store exporter serves the dashboard's trace queries; it reports its address
            # before `ready`.
            try:
                m = self.sidecar.wait_for(r"^listening \S*trace_store\S* http (\S+)$", timeout=0)
                self.trace_query_url = f"http://{m.group(1)}"
            except RunnerError:
                pass

    def _telemetry_env(self) -> Dict[str, str]:
        env = dict(self.base_env)
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = self.otlp_endpoint
        if not self.use_sidecar:
            env.setdefault("LOOM_TELEMETRY_AUTO", "0")
        return env

    def _start_bridge(self) -> None:
        binary = find_binary("loom-bridge", self.project.root)
        env = self._telemetry_env()
        env["OTEL_SERVICE_NAME"] = self.base_env.get("LOOM_BRIDGE_SERVICE_NAME", "loom-bridge")
        env.update(self._dashboard_env())
        self.bridge = Child("bridge", [binary, "--listen", self.bridge_address], env, self.project.root, self.out)
        self.bridge.start()
        self.bridge.wait_for(r"loom-bridge listening on", timeout=30)
        if env.get("LOOM_BRIDGE_DASHBOARD", "") not in ("off", ""):
            # Printed right after the listening line, before the bridge serves.
            self.dashboard_url = self.bridge.wait_for(r"loom-bridge dashboard on (http://\S+)", timeout=10).group(1)
            self.out(f"Dashboard: {self.dashboard_url}  (live events, trace timelines, topology)")

    def _dashboard_env(self) -> Dict[str, str]:
        """The dashboard's links: the Jaeger UI (`LOOM_JAEGER_UI_URL`, `JAEGER_UI_URL` as `loom
        traces` reads it, or loom.toml `[dashboard] jaeger_ui_url`) and the trace query service the
        timeline reads (`LOOM_TRACE_QUERY_URL`, the sidecar's trace_store, or loom.toml)."""
        env: Dict[str, str] = {}
        toml = _toml_dashboard(self.project.root)
        jaeger = (self.base_env.get("LOOM_JAEGER_UI_URL") or self.base_env.get("JAEGER_UI_URL")
                  or toml.get("jaeger_ui_url"))
        if jaeger:
            env["LOOM_JAEGER_UI_URL"] = jaeger
        query = self.trace_query_url or toml.get("trace_query_url")
        if query:
            env["LOOM_TRACE_QUERY_URL"] = query
        return env

    def start_agent(self, name: str) -> Child:
        spec = next((a for a in self.project.agents if a.name == name), None)
        if spec is None:
            raise RunnerError(f"no agent named {name!r} in {self.project.root / 'loom.toml'}")
        old = self.agents.get(name)
        if old and old.alive():
            raise RunnerError(f"agent {name} is already running")
        env = self._telemetry_env()
        # One shell-wide OTEL_SERVICE_NAME must not make every agent the same service: the SDK
        # names each agent-{agent_id} unless the agent's own env in loom.toml says otherwise.
        env.pop("OTEL_SERVICE_NAME", None)
        env.update(spec.env)
        env.update(self.agent_env.get(name, {}))
        env["LOOM_BRIDGE_ADDR"] = f"http://{self.bridge_address}"
        env["PYTHONUNBUFFERED"] = "1"
        child = Child(name, [self.python, str(spec.script)], env, self.project.root, self.out)
        child.start()
        self.agents[name] = child
        if spec.wait_for:
            child.wait_for(spec.wait_for, timeout=30)
        return child

    def stop_agent(self, name: str, sig: int = signal.SIGTERM) -> Optional[int]:
        child = self.agents.get(name)
        return child.stop(sig) if child else None

    def stop(self) -> Dict[str, Optional[int]]:
        codes: Dict[str, Optional[int]] = {}
        for name, child in reversed(list(self.agents.items())):
            codes[name] = child.stop()
        if self.bridge:
            codes["bridge"] = self.bridge.stop()
        if self.sidecar:
            codes["sidecar"] = self.sidecar.stop(grace=20)
        return codes

    def check_alive(self) -> List[str]:
        """Names of children that died on their own."""
        dead = [n for n, c in self.agents.items() if not c.alive()]
        for name, c in (("bridge", self.bridge), ("sidecar", self.sidecar)):
            if c and not c.alive():
                dead.append(name)
        return dead
