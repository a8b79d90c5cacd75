"""Starts a Loom project from its `loom.toml`: loom-sidecar, loom-bridge and the agents as child
processes, with prefixed logs, a live trace view, and an orderly shutdown on Ctrl-C.

Two `loom.toml` schemas are read: this project's (`[project]`, `[[agents]]` with `script`,
`[sidecar]`) and upstream loom-py's (top-level `name`, `[agents.<id>]` tables with `command` /
`args` and free settings, `[llm.<provider>]`, `[dashboard]`, discovery of `agents/*.py`); both
with `${VAR}` expansion and a `.env` file (docs/migrating-from-upstream.md)."""

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
from typing import Any, Callable, Dict, List, Optional

from loom import _config

try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # pragma: no cover - exercised only on 3.9/3.10
    import tomli as tomllib  # type: ignore[no-redef]


class RunnerError(RuntimeError):
    """A project that cannot start: bad loom.toml, missing binary, a process that died at start-up."""


@dataclass
class AgentSpec:
    name: str
    # A Python script run with the runner's interpreter (`args` follow it) …
    script: Optional[Path]
    env: Dict[str, str] = field(default_factory=dict)
    # A regex the agent prints once it is connected; the runner waits for it before the next.
    wait_for: Optional[str] = None
    # … or, for upstream's `command` that is not Python, the program and its arguments.
    command: Optional[str] = None
    args: List[str] = field(default_factory=list)

    def argv(self, python: str) -> List[str]:
        if self.script is not None:
            return [python, str(self.script), *self.args]
        assert self.command is not None
        return [self.command, *self.args]


# Upstream `[agents.<id>]` keys the runner uses itself; every other key is a free setting.
_UPSTREAM_AGENT_KEYS = ("command", "args", "env", "wait_for")
_PYTHON_COMMANDS = re.compile(r"^python(3(\.\d+)?)?$")


@dataclass
class Project:
    root: Path
    name: str
    bridge_address: str
    # None: the built-in default sidecar config (`default_sidecar_yaml`), written into `.loom/`.
    sidecar_config: Optional[Path]
    sidecar_jaeger_config: Optional[Path]
    trace_file: Path
    agents: List[AgentSpec]
    # "loom" (this project's schema) or "upstream" (loom-py's).
    schema: str = "loom"
    version: str = ""
    description: str = ""
    # Environment every child gets from `.env` (the shell's own variables win).
    dotenv: Dict[str, str] = field(default_factory=dict)
    # `host:port` or "off" for the bridge's dashboard, from upstream's `[dashboard]`; None: default.
    dashboard: Optional[str] = None
    # `${VAR}` references that were unset (key path and variable name only, never values).
    unset_vars: List[str] = field(default_factory=list)

    @classmethod
    def load(cls, root: os.PathLike) -> "Project":
        root = Path(root).resolve()
        manifest = root / "loom.toml"
        if not manifest.is_file():
            raise RunnerError(f"{manifest}: not found (a Loom project needs a loom.toml)")
        try:
            raw = tomllib.loads(manifest.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise RunnerError(f"{manifest}: {exc}") from exc
        try:
            dotenv = _config.read_dotenv(root / ".env")
        except _config.ConfigError as exc:
            raise RunnerError(str(exc)) from exc
        unset: List[str] = []
        data = _config.expand(raw, {**dotenv, **os.environ}, missing=unset)
        agents = data.get("agents")
        upstream = isinstance(agents, dict) or (agents is None and "project" not in data)
        loader = cls._load_upstream if upstream else cls._load_native
        project = loader(root, manifest, data)
        project.dotenv = dotenv
        project.unset_vars = unset
        return project

    @classmethod
    def _common(cls, root: Path, manifest: Path, data: Dict[str, Any], agents: List[AgentSpec],
                schema: str) -> "Project":
        project = data.get("project", {})
        bridge = data.get("bridge", {})
        sidecar = data.get("sidecar")
        for key, table in (("project", project), ("bridge", bridge), ("sidecar", sidecar or {})):
            if not isinstance(table, dict):
                raise RunnerError(f"{manifest}: {key} must be a table")
        if "address" in bridge:
            address = str(bridge["address"])
        elif "host" in bridge or "port" in bridge:
            # Upstream's trace-test form: [bridge] host / port.
            address = f"{bridge.get('host', '127.0.0.1')}:{bridge.get('port', 50051)}"
        else:
            address = "127.0.0.1:50051"
        if sidecar is None:
            # A sidecar.yaml beside loom.toml is still the project's own (as before [sidecar]
            # became optional); otherwise the built-in default.
            config: Optional[Path] = root / "sidecar.yaml" if (root / "sidecar.yaml").is_file() else None
            jaeger = None
            trace_file = ".loom/spans.jsonl"
        else:
            config = root / str(sidecar.get("config", "sidecar.yaml"))
            jaeger = sidecar.get("jaeger_config")
            trace_file = str(sidecar.get("trace_file", ".loom/spans.jsonl"))
        return cls(
            root=root,
            name=str(project.get("name") or data.get("name") or root.name),
            bridge_address=address,
            sidecar_config=config,
            sidecar_jaeger_config=(root / str(jaeger)) if jaeger else None,
            trace_file=root / trace_file,
            agents=agents,
            schema=schema,
            version=str(project.get("version") or data.get("version") or ""),
            description=str(project.get("description") or data.get("description") or ""),
            dashboard=_dashboard_address(manifest, data.get("dashboard")),
        )

    @classmethod
    def _load_native(cls, root: Path, manifest: Path, data: Dict[str, Any]) -> "Project":
        def req(table: dict, key: str, where: str) -> object:
            if key not in table:
                raise RunnerError(f"{manifest}: {where}.{key} is required")
            return table[key]

        agents = []
        for i, a in enumerate(data.get("agents") or []):
            where = f"agents[{i}]"
            if not isinstance(a, dict):
                raise RunnerError(f"{manifest}: {where} must be a table")
            script = root / str(req(a, "script", where))
            if not script.is_file():
                raise RunnerError(f"{manifest}: {where}.script: {script} does not exist")
            env = {str(k): str(v) for k, v in a.get("env", {}).items()}
            wait_for = a.get("wait_for")
            agents.append(AgentSpec(name=str(req(a, "name", where)), script=script, env=env,
                                    wait_for=str(wait_for) if wait_for else None))
        if not agents:
            raise RunnerError(f"{manifest}: no [[agents]] defined")
        return cls._common(root, manifest, data, agents, "loom")

    @classmethod
    def _load_upstream(cls, root: Path, manifest: Path, data: Dict[str, Any]) -> "Project":
        tables = data.get("agents") or {}
        llm = data.get("llm") or {}
        if not isinstance(llm, dict) or not all(isinstance(v, dict) for v in llm.values()):
            raise RunnerError(f"{manifest}: llm: expected [llm.<provider>] tables")
        for agent_id, table in tables.items():
            if not isinstance(table, dict):
                raise RunnerError(f"{manifest}: agents.{agent_id} must be a table")
        specs: List[AgentSpec] = []
        with_command = {k: v for k, v in tables.items() if "command" in v}
        if with_command:
            for agent_id, table in with_command.items():
                specs.append(cls._upstream_agent(root, manifest, agent_id, table, llm))
            for agent_id, table in tables.items():
                if agent_id in with_command:
                    continue
                script = _agent_script(root, agent_id)
                if script is None:
                    raise RunnerError(f"{manifest}: agents.{agent_id} has no command and agents/{agent_id}.py "
                                      "does not exist")
                specs.append(cls._upstream_agent(root, manifest, agent_id, table, llm, script))
        else:
            # No agent says how to start it: upstream's discovery of agents/*.py, each getting the
            # settings of the [agents.<id>] table of its name.
            agents_dir = root / "agents"
            scripts = sorted(p for p in agents_dir.glob("*.py") if not p.name.startswith("_")) \
                if agents_dir.is_dir() else []
            for script in scripts:
                agent_id = next((k for k in tables if _agent_script(root, k) == script), script.stem)
                specs.append(cls._upstream_agent(root, manifest, agent_id, tables.get(agent_id, {}), llm, script))
        if not specs:
            raise RunnerError(f"{manifest}: no agents: add [agents.<id>] tables with a command, or put "
                              "agent scripts in agents/*.py")
        return cls._common(root, manifest, data, specs, "upstream")

    @staticmethod
    def _upstream_agent(root: Path, manifest: Path, agent_id: str, table: Dict[str, Any],
                        llm: Dict[str, Dict[str, Any]], script: Optional[Path] = None) -> AgentSpec:
        where = f"agents.{agent_id}"
        args = table.get("args", [])
        if not isinstance(args, list):
            raise RunnerError(f"{manifest}: {where}.args must be a list of strings")
        args = [str(a) for a in args]
        command: Optional[str] = None
        if script is None:
            command = str(table["command"])
            # `python agents/x.py`: run with the runner's interpreter, which has this SDK.
            if _PYTHON_COMMANDS.match(Path(command).name) and args and args[0].endswith(".py"):
                script = root / args[0]
                if not script.is_file():
                    raise RunnerError(f"{manifest}: {where}.args: {script} does not exist")
                args, command = args[1:], None
        extra_env = table.get("env", {})
        if not isinstance(extra_env, dict):
            raise RunnerError(f"{manifest}: {where}.env must be a table")
        settings = {k: v for k, v in table.items() if k not in _UPSTREAM_AGENT_KEYS}
        env = _config.agent_settings_env(agent_id, settings)
        provider = settings.get("llm_provider")
        env.update(_config.llm_env(llm, str(provider) if provider is not None else None))
        env.update({str(k): str(v) for k, v in extra_env.items()})
        wait_for = table.get("wait_for")
        return AgentSpec(name=agent_id, script=script, env=env, wait_for=str(wait_for) if wait_for else None,
                         command=command, args=args)


def _agent_script(root: Path, agent_id: str) -> Optional[Path]:
    """`agents/<id>.py`, also with `-` written as `_`."""
    for stem in dict.fromkeys((agent_id, agent_id.replace("-", "_"))):
        cand = root / "agents" / f"{stem}.py"
        if cand.is_file():
            return cand
    return None


def _dashboard_address(manifest: Path, table: Any) -> Optional[str]:
    """Upstream's `[dashboard] enabled / host / port` as the bridge's dashboard listen address."""
    if table is None:
        return None
    if not isinstance(table, dict):
        raise RunnerError(f"{manifest}: dashboard must be a table")
    if table.get("enabled", True) is False:
        return "off"
    if "host" in table or "port" in table:
        return f"{table.get('host', '127.0.0.1')}:{table.get('port', 3030)}"
    return None


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
        # `.env` fills in what the shell does not set.
        self.base_env = {**project.dotenv, **os.environ}
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
            # A trace_store left on port 0 would take a kernel-chosen port, which can be one just
            # handed out above (the bridge's, say) and make that child fail to bind.
            self.base_env.setdefault("LOOM_TRACE_QUERY_ENDPOINT", f"127.0.0.1:{free_port()}")
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
        """The project's config (its Jaeger variant when `JAEGER_OTLP_ENDPOINT` is set), or the
        built-in default written into `.loom/`. With `JAEGER_OTLP_ENDPOINT` and no Jaeger variant,
        an OTLP exporter to it is added to whichever config is used."""
        jaeger = bool(self.base_env.get("JAEGER_OTLP_ENDPOINT"))
        if jaeger and self.project.sidecar_jaeger_config:
            return self.project.sidecar_jaeger_config
        out_dir = self.project.root / ".loom"
        if self.project.sidecar_config is None:
            text = _config.default_sidecar_yaml(jaeger)
            name = "sidecar-default.yaml"
        elif jaeger:
            try:
                text = _config.add_jaeger_exporter(self.project.sidecar_config.read_text(encoding="utf-8"),
                                                   self.project.sidecar_config)
            except (OSError, _config.ConfigError) as exc:
                raise RunnerError(str(exc)) from exc
            name = "sidecar-jaeger.yaml"
        else:
            return self.project.sidecar_config
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / name
        path.write_text(text, encoding="utf-8")
        return path

    def start(self, agents: bool = True) -> None:
        """Starts the sidecar and the bridge, then (with ``agents``) every agent in order."""
        try:
            if self.use_sidecar:
                self._start_sidecar()
            self._start_bridge()
            for spec in self.project.agents if agents else []:
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
        if self.project.dashboard is not None:
            env.setdefault("LOOM_BRIDGE_DASHBOARD", self.project.dashboard)
        env.update(self._dashboard_env())
        self.bridge = Child("bridge", [binary, "--listen", self.bridge_address], env, self.project.root, self.out)
        self.bridge.start()
        self.bridge.wait_for(r"loom-bridge listening on", timeout=30)
        # The bridge's own rule (loom-bridge/src/config.rs): LOOM_BRIDGE_DASHBOARD ("" or "off" is
        # off), else upstream's LOOM_DASHBOARD switch, else on at 127.0.0.1:3030.
        own = env.get("LOOM_BRIDGE_DASHBOARD")
        if own is not None:
            dashboard_on = own.strip() not in ("off", "")
        else:
            dashboard_on = env.get("LOOM_DASHBOARD", "true").strip().lower() not in ("false", "0", "off")
        if dashboard_on:
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
        child = Child(name, spec.argv(self.python), env, self.project.root, self.out)
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
