"""The persistent sending queue (write-ahead log) at the binary level: `kill -9` mid-load with the
backend down loses no acknowledged span, a damaged tail record is skipped and counted without
stopping the sidecar, and a full queue refuses with retry hints (or drops its oldest data).

Every test prints its figures (run pytest with -s to see them)."""

from __future__ import annotations

import http.client
import os
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2_grpc

from sidecar_harness import GrpcCapture, Sidecar, base_config, collect, free_port, metric, start_clients
from otlp_gen import request, span

pytestmark = pytest.mark.timeout(90)


def persistent_exporter(port: int, directory: Path, storage: str = "", queue_extra: str = "") -> str:
    return (f'  otlp/backend: {{ endpoint: "http://127.0.0.1:{port}", compression: none, timeout: 2s, '
            f'sending_queue: {{ storage: {{ directory: "{directory}"{storage} }}{queue_extra} }}, '
            f'retry_on_failure: {{ initial_interval: 100ms, max_interval: 500ms, max_elapsed_time: 10m }} }}')


def kill9(sc: Sidecar) -> None:
    assert sc.proc is not None
    sc.proc.kill()
    sc.proc.wait(10)


def segments(directory: Path) -> list:
    return sorted((directory / "otlp_backend").glob("*.wal"))


def send_spans(sc: Sidecar, requests: int, per_request: int, name: str) -> set:
    """Sends `requests` gRPC requests of `per_request` new spans, each answered; their span ids."""
    sent: set = set()
    with grpc.insecure_channel(sc.grpc) as ch:
        stub = trace_service_pb2_grpc.TraceServiceStub(ch)
        for _ in range(requests):
            spans = [span(os.urandom(16), name=name) for _ in range(per_request)]
            stub.Export(request(spans), timeout=5)
            sent.update(s.span_id for s in spans)
    return sent


def big_request():
    return request([span(os.urandom(16), name="x" * 40) for _ in range(20)])


@pytest.mark.parametrize("fsync", ["batch", "interval"])
def test_kill_9_mid_load_then_restart_delivers_every_acknowledged_span(fsync, tmp_path) -> None:
    port = free_port()  # the backend is down while the sidecar is killed
    qdir = tmp_path / "queue"
    storage = f", fsync: {fsync}, fsync_interval: 200ms"
    cfg = base_config(persistent_exporter(port, qdir, storage), "otlp/backend")
    sc = Sidecar(cfg, tmp_path).start()
    acked: set = set()
    refused = 0
    stop = threading.Event()
    lock = threading.Lock()

    def client() -> None:
        nonlocal refused
        with grpc.insecure_channel(sc.grpc) as ch:
            stub = trace_service_pb2_grpc.TraceServiceStub(ch)
            while not stop.is_set():
                spans = [span(os.urandom(16), name="wal") for _ in range(100)]
                try:
                    stub.Export(request(spans), timeout=5)
                except grpc.RpcError:
                    with lock:
                        refused += 1
                    if sc.proc.poll() is not None:
                        return
                    continue
                with lock:
                    acked.update(s.span_id for s in spans)

    t0 = time.monotonic()
    threads = start_clients(client, 3)
    time.sleep(2.0)
    kill9(sc)  # mid-load: clients are sending
    stop.set()
    for t in threads:
        t.join(10)
    load_s = time.monotonic() - t0
    files = segments(qdir)
    on_disk = sum(f.stat().st_size for f in files)

    with GrpcCapture(port=port, workers=8) as backend, Sidecar(cfg, tmp_path).start() as sc2:
        t1 = time.monotonic()
        got = collect(backend, acked, timeout=30)
        took = time.monotonic() - t1
        lost = len(acked - got.keys())
        extra = len(got.keys() - acked)  # in the log but the client never saw the answer
        dups = sum(c - 1 for c in got.values())
        m = sc2.metrics()
        replayed = metric(m, 'loom_sidecar_exporter_queue_replayed_records_total{exporter="otlp/backend"}')
        corrupt = metric(m, 'loom_sidecar_exporter_queue_corrupt_records_total{exporter="otlp/backend"')
        print(f"\nfsync={fsync}: {len(acked)} spans acknowledged in {load_s:.1f} s by 3 clients, then kill -9 "
              f"({refused} requests unanswered); {len(files)} segment(s), {on_disk} B on disk; restart replayed "
              f"{replayed} records; backend got {len(got)} unique spans in {took:.1f} s: lost={lost} "
              f"unacknowledged-but-delivered={extra} duplicates={dups} damaged tails={corrupt}")
        assert len(acked) > 1000, "the load ran"
        assert lost == 0, f"{lost} acknowledged spans lost"
        assert replayed > 0
        t2 = time.monotonic()
        rc = sc2.stop()
        stop_s = time.monotonic() - t2
        print(f"  SIGTERM with the queue drained: exit {rc} in {stop_s:.2f} s; "
              f"segments left {len(segments(qdir))}")
        assert rc == 0 and stop_s < 5
        assert not segments(qdir), "everything exported: nothing left on disk"


def test_a_damaged_tail_record_is_skipped_counted_and_the_sidecar_starts(tmp_path) -> None:
    port = free_port()
    qdir = tmp_path / "queue"
    cfg = base_config(persistent_exporter(port, qdir), "otlp/backend")
    sc = Sidecar(cfg, tmp_path).start()
    sent = send_spans(sc, 10, 20, "ok")
    kill9(sc)
    newest = segments(qdir)[-1]
    size = newest.stat().st_size
    with open(newest, "ab") as f:  # a torn write: half a header and noise
        f.write(b"\x40\x00\x00\x00\xde\xad" + os.urandom(50))
    # A second run must not trip over it again, and neither must a crash loop.
    with GrpcCapture(port=port) as backend, Sidecar(cfg, tmp_path).start() as sc2:
        got = collect(backend, sent, timeout=20)
        m = sc2.metrics_with('loom_sidecar_exporter_queue_corrupt_records_total{exporter="otlp/backend",reason=')
        corrupt = metric(m, 'loom_sidecar_exporter_queue_corrupt_records_total{exporter="otlp/backend"')
        reasons = [l for l in m.splitlines() if l.startswith("loom_sidecar_exporter_queue_corrupt_records_total{")]
        print(f"\ndamaged tail: segment {newest.name} had {size} B of records + 56 B of garbage; sidecar started; "
              f"{reasons}; delivered {len(sent & got.keys())}/{len(sent)} valid spans")
        assert corrupt == 1
        assert sent <= got.keys()
        assert not newest.exists() or newest.stat().st_size <= size, "damage cut off"


def post(addr: str, body: bytes):
    host, p = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(p), timeout=10)
    conn.request("POST", "/v1/traces", body=body, headers={"Content-Type": "application/x-protobuf"})
    r = conn.getresponse()
    r.read()
    conn.close()
    return r.status, {k.lower(): v for k, v in r.getheaders()}


def test_a_full_persistent_queue_refuses_with_retry_hints(tmp_path) -> None:
    port = free_port()
    qdir = tmp_path / "queue"
    cfg = base_config(persistent_exporter(port, qdir, ", max_bytes: 65536"), "otlp/backend")
    sc = Sidecar(cfg, tmp_path).start()
    try:
        accepted, err = 0, None
        with grpc.insecure_channel(sc.grpc) as ch:
            stub = trace_service_pb2_grpc.TraceServiceStub(ch)
            for _ in range(200):
                try:
                    stub.Export(big_request(), timeout=5)
                    accepted += 1
                except grpc.RpcError as e:
                    err = e
                    break
        assert err is not None, "the cap was reached"
        details = dict(err.trailing_metadata() or ()).get("grpc-status-details-bin")
        st = status_pb2.Status.FromString(details)
        info = error_details_pb2.RetryInfo()
        assert st.details[0].Unpack(info)
        status, headers = post(sc.http, big_request().SerializeToString())
        m = sc.metrics()
        refused = metric(m, 'loom_sidecar_receiver_refused_spans_total{receiver="otlp",transport="grpc",reason="exporter_queue_full"}')
        qbytes = metric(m, 'loom_sidecar_exporter_queue_bytes{exporter="otlp/backend"}')
        print(f"\ndisk cap 65536 B: {accepted} requests accepted, then gRPC {err.code().name} "
              f"RetryInfo={info.retry_delay.seconds}s; HTTP {status} Retry-After={headers.get('retry-after')}; "
              f"queue bytes={qbytes}; refused spans counted={refused}")
        assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert info.retry_delay.seconds >= 1
        assert status == 429 and int(headers["retry-after"]) >= 1
        assert qbytes <= 65536 and refused >= 20
    finally:
        kill9(sc)


def test_a_full_persistent_queue_with_drop_oldest_keeps_accepting_and_counts_drops(tmp_path) -> None:
    port = free_port()
    qdir = tmp_path / "queue"
    cfg = base_config(persistent_exporter(port, qdir, ", max_bytes: 65536", ", when_full: drop_oldest"), "otlp/backend")
    sc = Sidecar(cfg, tmp_path).start()
    try:
        with grpc.insecure_channel(sc.grpc) as ch:
            stub = trace_service_pb2_grpc.TraceServiceStub(ch)
            for _ in range(100):
                stub.Export(big_request(), timeout=5)
        m = sc.metrics()
        dropped = metric(m, 'loom_sidecar_exporter_send_failed_spans_total{exporter="otlp/backend",reason="queue_full"}')
        qbytes = metric(m, 'loom_sidecar_exporter_queue_bytes{exporter="otlp/backend"}')
        print(f"\ndrop_oldest, cap 65536 B: 100 requests (2000 spans) all accepted; oldest dropped spans={dropped}; "
              f"queue bytes={qbytes}")
        assert dropped > 0 and qbytes <= 65536
    finally:
        kill9(sc)


def test_after_a_crash_only_a_bounded_tail_of_delivered_data_is_sent_again(tmp_path) -> None:
    """At-least-once, measured: with the backend up, a crash re-sends at most the exported part
    of the newest segment (sealed early once it holds 64 KiB), not the whole queue history."""
    backend = GrpcCapture(workers=8)
    qdir = tmp_path / "queue"
    cfg = base_config(persistent_exporter(backend.port, qdir), "otlp/backend")
    with backend:
        sc = Sidecar(cfg, tmp_path).start()
        sent = send_spans(sc, 300, 100, "dup")
        first = collect(backend, sent, timeout=20)
        assert sent <= first.keys()
        time.sleep(0.3)  # let the last completions and the early roll land
        left = sum(f.stat().st_size for f in segments(qdir))
        kill9(sc)
        with Sidecar(cfg, tmp_path).start() as sc2:
            again = collect(backend, {b"never"}, timeout=2.0)
            replayed = metric(sc2.metrics(), 'loom_sidecar_exporter_queue_replayed_records_total{exporter="otlp/backend"}')
            print(f"\n{len(sent)} spans (~{len(sent) * 52 // 1024} KiB in the log) delivered, then kill -9; "
                  f"{left} B of segments left on disk; restart replayed {replayed} records = {len(again)} spans sent again "
                  f"({100 * len(again) / len(sent):.1f} %)")
            assert left <= 2 * 64 * 1024 + 8192
            assert len(again) <= len(sent) // 10


def test_sigterm_with_the_backend_down_keeps_the_queue_for_the_next_start(tmp_path) -> None:
    port = free_port()
    qdir = tmp_path / "queue"
    cfg = base_config(persistent_exporter(port, qdir), "otlp/backend").replace("shutdown_grace: 5s", "shutdown_grace: 1s")
    sc = Sidecar(cfg, tmp_path).start()
    sent = send_spans(sc, 20, 50, "term")
    t0 = time.monotonic()
    rc = sc.stop()
    stop_s = time.monotonic() - t0
    kept = sum(f.stat().st_size for f in segments(qdir))
    with GrpcCapture(port=port) as backend, Sidecar(cfg, tmp_path).start() as sc2:
        got = collect(backend, sent, timeout=20)
        print(f"\nSIGTERM with the backend down: exit {rc} after {stop_s:.2f} s (grace 1 s), {kept} B kept on disk; "
              f"next start delivered {len(sent & got.keys())}/{len(sent)}")
        assert rc == 0 and stop_s < 5
        assert kept > 0 and sent <= got.keys()
