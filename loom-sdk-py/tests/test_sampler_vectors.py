"""The shared table of sampler-variable verdicts (loom-core/tests/sampler_vectors.json), through
``loom.tracing.sampler_from_env``: the same accept/reject, sampler and ratio as loom-core and the
sidecar, checked on the official OpenTelemetry SDK samplers it returns."""

import json
import os
from pathlib import Path
from typing import Any, Dict, Optional

import pytest
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler, TraceIdRatioBased

import loom.tracing

VECTORS = Path(__file__).resolve().parents[2] / "loom-core" / "tests" / "sampler_vectors.json"
CASES = json.loads(VECTORS.read_text())["cases"]


def resolved(sampler: Sampler) -> "tuple[str, Optional[float]]":
    """(name, ratio) of an SDK sampler, read from the SDK's own classes."""
    prefix = ""
    if isinstance(sampler, ParentBased):
        prefix, sampler = "parentbased_", sampler._root  # the root delegate; the rest is fixed
    if sampler is ALWAYS_ON:
        return prefix + "always_on", None
    if sampler is ALWAYS_OFF:
        return prefix + "always_off", None
    assert isinstance(sampler, TraceIdRatioBased), sampler
    return prefix + "traceidratio", sampler.rate


def test_the_table_is_whole() -> None:
    assert len(CASES) >= 30
    assert any("error_var" in c for c in CASES) and any("sampler" in c for c in CASES)


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_every_sampler_vector_gets_its_verdict(case: Dict[str, Any]) -> None:
    env: Dict[str, str] = case["env"]
    if "error_var" in case:
        with pytest.raises(loom.tracing.TelemetryConfigError) as e:
            loom.tracing.sampler_from_env(env)
        assert str(e.value).startswith(case["error_var"] + "="), str(e.value)
    else:
        assert resolved(loom.tracing.sampler_from_env(env)) == (case["sampler"], case["ratio"])


def test_the_process_environment_is_read_when_no_env_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in list(os.environ):
        if k.startswith("OTEL_TRACE"):
            monkeypatch.delenv(k)
    monkeypatch.setenv("OTEL_TRACE_SAMPLER", "parentbased_traceidratio=0.25")
    assert resolved(loom.tracing.sampler_from_env()) == ("parentbased_traceidratio", 0.25)
