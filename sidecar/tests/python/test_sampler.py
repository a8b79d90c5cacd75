"""Sampler at the binary level: every sampler name, rule order, ratio accuracy, consistency
across sidecars, and start-up errors."""

from __future__ import annotations

import os
import subprocess
import time

import pytest

from sidecar_harness import BIN, base_config, read_file_spans
from otlp_gen import chunks, consistent_keep, request, send, span

pytestmark = pytest.mark.timeout(120)


def sampler_config(out_file, sampler_yaml: str) -> str:
    return base_config(f'  file: {{ path: "{out_file}" }}', "file",
                       processors=f"  sampler:\n{sampler_yaml}", pipeline_processors="sampler, batch")


def wait_spans(sc, out_file, accepted: int) -> list:
    """Waits until the sidecar accepted `accepted` spans and exported every kept one."""
    def counter(name: str) -> int:
        total = 0
        for line in sc.metrics().splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                total += int(float(line.rsplit(" ", 1)[1]))
        return total
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if counter("loom_sidecar_receiver_accepted_spans_total") >= accepted:
            kept = counter("loom_sidecar_sampler_kept_spans_total")
            if counter("loom_sidecar_exporter_sent_spans_total") >= kept:
                return read_file_spans(out_file)
        time.sleep(0.05)
    raise AssertionError("spans were not all processed in 30 s")


def kept_names(spans) -> set:
    return {s["name"] for _, _, s in spans}


ROOT_AND_CHILDREN = [
    ("root", dict()),
    ("child-flags-unset", dict(parent=b"\x01" * 8, flags=0)),
    ("child-python-style", dict(parent=b"\x01" * 8, flags=0x300)),
    ("child-sampled", dict(parent=b"\x01" * 8, flags=0x301)),
    ("child-unsampled", dict(parent=b"\x01" * 8, flags=0x302)),
]


@pytest.mark.parametrize("name,arg,expected", [
    ("always_on", None, {"root", "child-flags-unset", "child-python-style", "child-sampled", "child-unsampled"}),
    ("always_off", None, set()),
    ("parentbased_always_on", None, {"root", "child-flags-unset", "child-python-style", "child-sampled"}),
    ("parentbased_always_off", None, {"child-flags-unset", "child-python-style", "child-sampled"}),
])
def test_each_non_ratio_sampler(name, arg, expected, sidecars, tmp_path) -> None:
    out = tmp_path / "out.jsonl"
    sc = sidecars(sampler_config(out, f"    default: {{ sampler: {name} }}"))
    tid = os.urandom(16)
    send(sc.grpc, [request([span(tid, name=n, **kw) for n, kw in ROOT_AND_CHILDREN])])
    assert kept_names(wait_spans(sc, out, len(ROOT_AND_CHILDREN))) == expected


@pytest.mark.parametrize("name", ["traceidratio", "parentbased_traceidratio"])
def test_ratio_samplers_keep_exactly_the_consistent_set(name, sidecars, tmp_path) -> None:
    out = tmp_path / "out.jsonl"
    sc = sidecars(sampler_config(out, f"    default: {{ sampler: {name}, arg: 0.5 }}"))
    tids = [os.urandom(16) for _ in range(400)]
    # A root and a sampled child per trace: both follow the trace-id decision.
    spans = [s for t in tids for s in (span(t, name="root"), span(t, name="child", parent=b"\x01" * 8, flags=0x301))]
    send(sc.grpc, [request(c) for c in chunks(spans, 200)])
    got = wait_spans(sc, out, len(spans))
    kept = {bytes.fromhex(s["traceId"]) for _, _, s in got}
    assert kept == {t for t in tids if consistent_keep(t, 0.5)}
    assert len(got) == 2 * len(kept), "root and child decided alike: whole traces only"


def test_ratio_quarter_over_ten_thousand_traces(sidecars, tmp_path) -> None:
    out = tmp_path / "out.jsonl"
    sc = sidecars(sampler_config(out, "    default: { sampler: traceidratio, arg: 0.25 }"))
    tids = [os.urandom(16) for _ in range(10_000)]
    send(sc.grpc, [request([span(t) for t in c]) for c in chunks(tids, 1000)])
    kept = {bytes.fromhex(s["traceId"]) for _, _, s in wait_spans(sc, out, len(tids))}
    share = len(kept) / len(tids)
    print(f"ratio 0.25 kept {len(kept)} of {len(tids)} traces = {share:.4f}")
    assert abs(share - 0.25) <= 0.02
    assert kept == {t for t in tids if consistent_keep(t, 0.25)}


def test_two_sidecars_with_the_same_ratio_keep_the_same_traces(sidecars, tmp_path) -> None:
    outs = [tmp_path / "a.jsonl", tmp_path / "b.jsonl"]
    scs = [sidecars(sampler_config(o, "    default: { sampler: traceidratio, arg: 0.3 }")) for o in outs]
    tids = [os.urandom(16) for _ in range(3000)]
    for sc in scs:
        send(sc.grpc, [request([span(t) for t in c]) for c in chunks(tids, 1000)])
    a, b = ({s["traceId"] for _, _, s in wait_spans(sc, o, len(tids))} for sc, o in zip(scs, outs))
    assert a == b and 0 < len(a) < len(tids)


def test_rules_apply_in_order_first_match_wins(sidecars, tmp_path) -> None:
    out = tmp_path / "out.jsonl"
    sc = sidecars(sampler_config(out, """    default: { sampler: always_off }
    rules:
      - name: quiet-sensors
        match: { agent: "sensor-*" }
        sampler: always_off
      - name: sensor-topics
        match: { topic: "sensor.*" }
        sampler: always_on
      - name: never-reached
        match: { agent: "sensor-*", topic: "sensor.*" }
        sampler: always_on"""))
    cases = [
        ("agent-sensor-topic-sensor", {"loom.agent.id": "sensor-1", "loom.topic": "sensor.data"}, None),
        ("agent-other-topic-sensor", {"loom.agent.id": "proc", "messaging.destination.name": "sensor.data"}, None),
        ("agent-other-topic-other", {"loom.agent.id": "proc", "loom.topic": "x"}, None),
        ("agent-from-resource", {"loom.topic": "sensor.data"}, {"service.name": "agent-sensor-9"}),
    ]
    reqs = [request([span(os.urandom(16), name=n, attrs=a)], resource=r) for n, a, r in cases]
    send(sc.grpc, reqs)
    assert kept_names(wait_spans(sc, out, len(cases))) == {"agent-other-topic-sensor"}
    m = sc.metrics()
    assert 'loom_sidecar_sampler_dropped_spans_total{processor="sampler",rule="quiet-sensors"} 2' in m
    assert 'loom_sidecar_sampler_kept_spans_total{processor="sampler",rule="sensor-topics"} 1' in m
    assert 'loom_sidecar_sampler_dropped_spans_total{processor="sampler",rule="default"} 1' in m


def test_default_sampler_from_the_environment_plural_wins(sidecars, tmp_path) -> None:
    out = tmp_path / "out.jsonl"
    sc = sidecars(sampler_config(out, "    rules: []"),
                  env={"OTEL_TRACE_SAMPLER": "always_on", "OTEL_TRACES_SAMPLER": "always_off"})
    send(sc.grpc, [request([span(os.urandom(16))])])
    assert wait_spans(sc, out, 1) == []


@pytest.mark.parametrize("yaml_sampler,env,needle", [
    ('    default: { sampler: "${env:OTEL_TRACE_SAMPLER:-parentbased_always_on}" }', {"OTEL_TRACE_SAMPLER": "sometimes"},
     "processors.sampler.default.sampler: \"sometimes\" is not a known sampler"),
    ("    rules: []", {"OTEL_TRACES_SAMPLER": "nope"}, "OTEL_TRACES_SAMPLER: \"nope\" is not a known sampler"),
    ("    default: { sampler: traceidratio, arg: 2 }", {}, "processors.sampler.default.arg: arg 2 is not a sampling ratio"),
])
def test_bad_sampler_settings_fail_start_up_clearly(yaml_sampler, env, needle, tmp_path) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(sampler_config(tmp_path / "o.jsonl", yaml_sampler))
    r = subprocess.run([str(BIN), "--config", str(cfg)], capture_output=True, text=True, timeout=30,
                       env={**os.environ, **env})
    assert r.returncode == 1
    assert needle in r.stderr, r.stderr
    assert "parentbased_traceidratio" in r.stderr or "ratio" in needle
