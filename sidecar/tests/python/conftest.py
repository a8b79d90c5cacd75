"""Fixtures for the sidecar tests (helpers in sidecar_harness.py)."""

from typing import Dict, List, Optional

import pytest

from sidecar_harness import GrpcCapture, HttpCapture, Sidecar


@pytest.fixture
def sidecars(tmp_path):
    started: List[Sidecar] = []

    def start(yaml_text: str, env: Optional[Dict[str, str]] = None) -> Sidecar:
        s = Sidecar(yaml_text, tmp_path, env).start()
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def grpc_capture():
    c = GrpcCapture()
    yield c
    c.stop()


@pytest.fixture
def http_capture():
    c = HttpCapture()
    yield c
    c.stop()
