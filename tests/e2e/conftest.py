"""Fixtures for the end-to-end tests (helpers in e2e_harness.py)."""

from pathlib import Path
from typing import Callable, Iterator

import pytest

from e2e_harness import PROJECT, Run, project_runs


@pytest.fixture
def start_project(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    with project_runs(PROJECT, tmp_path / "spans.jsonl") as start:
        yield start
