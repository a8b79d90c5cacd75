"""Fixtures for the end-to-end tests (helpers in e2e_harness.py)."""

import threading
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

import pytest

from loom._runner import Project, Runner
from e2e_harness import PROJECT, Run


@pytest.fixture
def start_project(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    runners: List[Runner] = []

    def start(agent_env: Optional[Dict[str, Dict[str, str]]] = None) -> Run:
        lines: List[str] = []
        lock = threading.Lock()

        def out(line: str) -> None:
            with lock:
                lines.append(line)

        runner = Runner(
            Project.load(PROJECT),
            auto_ports=True,
            out=out,
            trace_file=tmp_path / "spans.jsonl",
            agent_env=agent_env or {},
            env={"LOOM_BRIDGE_DASHBOARD": "off", "RUST_LOG": "warn"},
        )
        runners.append(runner)
        runner.start()
        return Run(runner, lines)

    yield start
    for r in runners:
        r.stop()
