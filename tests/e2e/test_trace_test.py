"""End to end: examples/trace-test through the real sidecar, bridge and three Python agents;
spans read back from the sidecar's file exporter."""

from __future__ import annotations

import signal
import time

import pytest
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased

from e2e_harness import EXPECTED_CHAIN, chain_problems, settle, wait_until

pytestmark = pytest.mark.timeout(120)


def complete(run) -> dict:
    return {tid: spans for tid, spans in run.traces().items() if not chain_problems(spans)}


def test_every_reading_is_one_complete_trace(start_project) -> None:
    run = start_project({"sensor": {"SENSOR_COUNT": "3", "SENSOR_INTERVAL_S": "0.3"}})
    wait_until(lambda: len(complete(run)) >= 3, 60, "3 complete traces")
    settle(run)
    traces = run.traces()
    sensor_ids = run.sensor_trace_ids()
    assert len(sensor_ids) == 3
    assert set(traces) == set(sensor_ids), "one trace per reading, nothing else"
    for tid, spans in traces.items():
        assert chain_problems(spans) == [], f"trace {tid}"
        by_name = [s.name for s in sorted(spans, key=lambda s: s.start_ns)]
        assert by_name[0] == "sensor.emit_data"
        # The receiving agents' spans name the receiving agent, the bridge's the right hop.
        forwards = sorted((s for s in spans if s.name == "bridge.forward"), key=lambda s: s.start_ns)
        assert [s.attributes["loom.agent.id"] for s in forwards] == ["processor", "output"]
        assert [s.attributes["loom.topic"] for s in forwards] == ["sensor.data", "processed.data"]
    assert len(EXPECTED_CHAIN) == 9
    # The output agent logged every value with its trace id.
    assert {m.group(1) for m in run.logged("output", r"trace_id=([0-9a-f]{32})")} == set(sensor_ids)


def test_ratio_sampling_at_the_sensor_keeps_whole_traces_only(start_project) -> None:
    n = 12
    run = start_project({"sensor": {
        "SENSOR_COUNT": str(n), "SENSOR_INTERVAL_S": "0.15",
        "OTEL_TRACE_SAMPLER": "parentbased_traceidratio", "OTEL_TRACE_SAMPLER_ARG": "0.5",
    }})
    wait_until(lambda: len(run.logged("output", r"value=")) >= n, 60, f"{n} processed values (events flow)")
    settle(run)
    sensor_ids = run.sensor_trace_ids()
    assert len(sensor_ids) == n
    # The sensor's SDK decided with TraceIdRatioBased(0.5); compute the same decisions.
    sampler = TraceIdRatioBased(0.5)
    expected = {t for t in sensor_ids if sampler.should_sample(None, int(t, 16), "x").decision == Decision.RECORD_AND_SAMPLE}
    traces = run.traces()
    assert set(traces) == expected, "exactly the sampled readings arrive"
    for tid, spans in traces.items():
        assert chain_problems(spans) == [], f"partial trace {tid}"


def test_always_off_at_the_sensor_sends_no_spans_but_events_flow(start_project) -> None:
    run = start_project({"sensor": {"SENSOR_COUNT": "4", "SENSOR_INTERVAL_S": "0.2", "OTEL_TRACE_SAMPLER": "always_off"}})
    wait_until(lambda: len(run.logged("output", r"value=")) >= 4, 60, "4 processed values")
    time.sleep(2.0)  # longer than every exporter's flush interval
    assert run.traces() == {}


def test_killing_the_processor_leaves_sidecar_and_bridge_up_and_traces_recover(start_project) -> None:
    run = start_project({"sensor": {"SENSOR_INTERVAL_S": "0.3"}})
    wait_until(lambda: len(complete(run)) >= 2, 60, "2 complete traces before the kill")
    run.runner.stop_agent("processor", signal.SIGKILL)
    time.sleep(1.5)
    assert run.runner.check_alive() == ["processor"], "only the killed agent is down"
    restarted_ns = time.time_ns()
    run.runner.start_agent("processor")

    def recovered() -> int:
        return sum(1 for spans in complete(run).values() if min(s.start_ns for s in spans) > restarted_ns)

    wait_until(lambda: recovered() >= 3, 60, "3 complete traces after the restart")
    assert run.runner.check_alive() == []
