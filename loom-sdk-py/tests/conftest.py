"""Fixtures for the SDK tests (helpers live in sdk_harness.py: a conftest must not be imported
by name when several test folders run in one pytest session)."""

from typing import Iterator

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from sdk_harness import EXPORTER, BridgeProcess


@pytest.fixture
def bridge() -> Iterator[BridgeProcess]:
    b = BridgeProcess(extra=["--heartbeat-timeout", "3s", "--max-payload-bytes", "65536"]).start()
    try:
        yield b
    finally:
        b.stop()


@pytest.fixture
def spans() -> InMemorySpanExporter:
    EXPORTER.clear()
    return EXPORTER
