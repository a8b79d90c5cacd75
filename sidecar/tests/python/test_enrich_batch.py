"""enrich (every source of agent and topic, node attributes) and batch (size, max, timeout,
flush on SIGTERM) at the binary level, read back from the file exporter."""

from __future__ import annotations

import json
import os
import time

import pytest

from sidecar_harness import base_config, read_file_spans
from otlp_gen import request, send, span

pytestmark = pytest.mark.timeout(60)


def wait_for_spans(path, n: int, timeout: float = 15.0) -> list:
    deadline = time.monotonic() + timeout
    while len(read_file_spans(path)) < n and time.monotonic() < deadline:
        time.sleep(0.05)
    got = read_file_spans(path)
    assert len(got) == n, f"{len(got)} spans, expected {n}"
    return got


def attrs(items) -> dict:
    return {a["key"]: a["value"].get("stringValue") for a in items or []}


def test_enrich_fills_agent_and_topic_from_every_source_and_adds_node_attributes(sidecars, tmp_path) -> None:
    out = tmp_path / "out.jsonl"
    sc = sidecars(base_config(f'  file: {{ path: "{out}" }}', "file", processors="  enrich: { host_name: node-7 }",
                              pipeline_processors="enrich, batch"),
                  env={"K8S_NODE_NAME": "kn-1", "K8S_POD_NAME": "pod-1", "K8S_NAMESPACE_NAME": "ns-1"})
    cases = [
        # (name, span attributes, resource attributes, expected agent, expected topic)
        ("own-keys", {"loom.agent.id": "a1", "loom.topic": "t1"}, {"loom.agent.id": "res-agent"}, "a1", "t1"),
        ("resource-agent", {"messaging.destination.name": "t2"}, {"loom.agent.id": "a2", "service.name": "agent-zzz"}, "a2", "t2"),
        ("service-name", {"messaging.destination.name": "t3"}, {"service.name": "agent-a3"}, "a3", "t3"),
        ("nothing-to-go-on", {}, {"service.name": "checkout"}, None, None),
    ]
    send(sc.grpc, [request([span(os.urandom(16), name=n, attrs=a)], resource=r) for n, a, r, _, _ in cases])
    got = {s["name"]: (attrs(res.get("attributes")), attrs(s.get("attributes"))) for res, _, s in wait_for_spans(out, len(cases))}
    for name, _, res_in, agent, topic in cases:
        res, sp = got[name]
        assert sp.get("loom.agent.id") == agent, name
        assert sp.get("loom.topic") == topic, name
        assert res["host.name"] == "node-7"
        assert (res["k8s.node.name"], res["k8s.pod.name"], res["k8s.namespace.name"]) == ("kn-1", "pod-1", "ns-1")
        for k, v in res_in.items():
            assert res[k] == v, f"{name}: resource {k} kept"


def test_node_attributes_never_overwrite_and_can_be_turned_off(sidecars, tmp_path) -> None:
    out = tmp_path / "out.jsonl"
    sc = sidecars(base_config(f'  file: {{ path: "{out}" }}', "file", processors="  enrich: { node_attributes: false }",
                              pipeline_processors="enrich, batch"), env={"K8S_NODE_NAME": "kn-1"})
    send(sc.grpc, [request([span(os.urandom(16))], resource={"host.name": "mine"})])
    (res, _, _), = wait_for_spans(out, 1)
    a = attrs(res.get("attributes"))
    assert a == {"host.name": "mine"}


def batch_sidecar(sidecars, tmp_path, settings: str):
    out = tmp_path / "out.jsonl"
    cfg = base_config(f'  file: {{ path: "{out}" }}', "file").replace(
        "  batch: { send_batch_size: 512, timeout: 100ms }", f"  batch: {{ {settings} }}")
    return sidecars(cfg), out


def line_sizes(path) -> list:
    return [sum(len(ss.get("spans", [])) for rs in json.loads(l)["resourceSpans"] for ss in rs.get("scopeSpans", []))
            for l in path.read_text().splitlines() if l.strip()]


def test_batch_flushes_at_size_and_never_exceeds_max(sidecars, tmp_path) -> None:
    sc, out = batch_sidecar(sidecars, tmp_path, "send_batch_size: 100, send_batch_max_size: 100, timeout: 30s")
    send(sc.grpc, [request([span(os.urandom(16)) for _ in range(250)])])
    wait_for_spans(out, 250)
    assert line_sizes(out) == [100, 100, 50]


def test_batch_flushes_on_timeout(sidecars, tmp_path) -> None:
    sc, out = batch_sidecar(sidecars, tmp_path, "send_batch_size: 1000, timeout: 300ms")
    send(sc.grpc, [request([span(os.urandom(16)) for _ in range(3)]), request([span(os.urandom(16)) for _ in range(4)])])
    wait_for_spans(out, 7)
    assert line_sizes(out) == [7], "both requests in one batch, sent when the timeout fired"


def test_sigterm_flushes_pending_batches_and_exits_zero(sidecars, tmp_path) -> None:
    sc, out = batch_sidecar(sidecars, tmp_path, "send_batch_size: 1000, timeout: 1h")
    send(sc.grpc, [request([span(os.urandom(16)) for _ in range(5)])])
    time.sleep(0.3)
    assert not out.exists() or line_sizes(out) == [], "still pending before shutdown"
    assert sc.stop() == 0
    assert line_sizes(out) == [5]


def test_an_unreachable_exporter_never_blocks_the_receivers_or_other_exporters(sidecars, tmp_path) -> None:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]  # closed again: nothing listens there
    out = tmp_path / "out.jsonl"
    exporters = (f'  otlp/dead: {{ endpoint: "http://127.0.0.1:{dead}", timeout: 1s, '
                 f'sending_queue: {{ num_consumers: 1, queue_size: 2 }}, '
                 f'retry_on_failure: {{ initial_interval: 5s, max_interval: 5s, max_elapsed_time: 60s }} }}\n'
                 f'  file: {{ path: "{out}" }}')
    cfg = base_config(exporters, "otlp/dead, file").replace(
        "  batch: { send_batch_size: 512, timeout: 100ms }", "  batch: { send_batch_size: 10, timeout: 50ms }")
    sc = sidecars(cfg)
    t0 = time.monotonic()
    for _ in range(30):
        send(sc.grpc, [request([span(os.urandom(16)) for _ in range(10)])])
        time.sleep(0.02)
    assert time.monotonic() - t0 < 10, "every request answered promptly"
    wait_for_spans(out, 300)
    m = sc.metrics_with('loom_sidecar_exporter_sent_spans_total{exporter="file"} 300')
    assert 'loom_sidecar_exporter_sent_spans_total{exporter="file"} 300' in m
    dropped = sum(int(l.rsplit(" ", 1)[1]) for l in m.splitlines()
                  if l.startswith('loom_sidecar_exporter_send_failed_spans_total{exporter="otlp/dead",reason="queue_full"}'))
    assert dropped > 0, "the dead exporter's full queue drops (counted) instead of blocking"
