"""Live reload (SIGHUP) with the official OpenTelemetry Python SDK exporting over OTLP/HTTP the
whole time: an added exporter, a sampler rule, an invalid file. Every span the SDK's exporter
saw acknowledged reaches the backend, no export fails, and the HTTP listener never changes."""

from __future__ import annotations

import signal
import threading
import time
from typing import List, Sequence, Tuple

import pytest
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

from sidecar_harness import GrpcCapture, metric

pytestmark = pytest.mark.timeout(120)


class Acked(SpanExporter):
    """The official exporter, recording what the sidecar acknowledged and what failed."""

    def __init__(self, inner: OTLPSpanExporter) -> None:
        self.inner = inner
        self.acked: List[Tuple[int, str, float, float]] = []  # span id, agent, sent, done
        self.failed = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        sent = time.monotonic()
        result = self.inner.export(spans)
        done = time.monotonic()
        if result == SpanExportResult.SUCCESS:
            self.acked.extend((s.context.span_id, s.attributes["loom.agent.id"], sent, done) for s in spans)
        else:
            self.failed += 1
        return result

    def shutdown(self) -> None:
        self.inner.shutdown()


def config(main: int, extra: int = 0, rules: str = "[]") -> str:
    exporters = f'  otlp/main: {{ endpoint: "http://127.0.0.1:{main}", compression: none }}\n'
    names = "otlp/main"
    if extra:
        exporters += f'  otlp/extra: {{ endpoint: "http://127.0.0.1:{extra}", compression: none }}\n'
        names += ", otlp/extra"
    return f"""
receivers:
  otlp:
    protocols:
      http: {{ endpoint: 127.0.0.1:0 }}
processors:
  sampler:
    default: {{ sampler: always_on }}
    rules: {rules}
  batch: {{ send_batch_size: 256, timeout: 100ms }}
exporters:
{exporters}
service:
  pipelines:
    traces: {{ receivers: [otlp], processors: [sampler, batch], exporters: [{names}] }}
  telemetry:
    metrics: {{ address: 127.0.0.1:0 }}
    logs: {{ level: warn }}
"""


def span_ids(capture: GrpcCapture) -> dict:
    got: dict = {}
    while not capture.requests.empty():
        for rs in capture.requests.get().resource_spans:
            for ss in rs.scope_spans:
                for s in ss.spans:
                    sid = int.from_bytes(s.span_id, "big")
                    got[sid] = got.get(sid, 0) + 1
    return got


def test_reloads_while_the_python_sdk_exports(sidecars) -> None:
    main, extra = GrpcCapture(), GrpcCapture()
    try:
        sc = sidecars(config(main.port))
        http_addr = sc.http

        def reload(yaml_text: str, result: str, want: int) -> Tuple[float, float]:
            sc.cfg.write_text(yaml_text)
            sent = time.monotonic()
            sc.proc.send_signal(signal.SIGHUP)
            line = f'loom_sidecar_config_reload_total{{result="{result}"}} {want}'
            assert line in sc.metrics_with(line), line
            return sent, time.monotonic()

        acked = Acked(OTLPSpanExporter(endpoint=f"http://{http_addr}/v1/traces", timeout=10))
        provider = TracerProvider(resource=Resource.create({"service.name": "reload-test"}))
        provider.add_span_processor(SimpleSpanProcessor(acked))
        tracer = provider.get_tracer("reload-test")
        stop = threading.Event()

        def emit() -> None:
            i = 0
            while not stop.is_set():
                agent = "sensor-1" if i % 2 == 0 else "proc"
                with tracer.start_as_current_span("work", attributes={"loom.agent.id": agent}):
                    pass
                i += 1
                time.sleep(0.002)

        thread = threading.Thread(target=emit)
        thread.start()
        time.sleep(1.0)
        added = reload(config(main.port, extra.port), "success", 1)
        time.sleep(1.0)
        rule = reload(config(main.port, extra.port,
                             '[{ name: quiet, match: { agent: "sensor-*" }, sampler: always_off }]'),
                      "success", 2)
        time.sleep(1.0)
        bad = config(main.port, extra.port).replace("timeout: 100ms", "timeout: soon")
        invalid = reload(bad, "failed", 1)
        time.sleep(1.0)
        stop.set()
        thread.join()
        provider.shutdown()

        assert acked.failed == 0
        assert len(acked.acked) > 200
        kept = [a for a in acked.acked if a[1] == "proc" or a[3] < rule[0]]
        deadline = time.monotonic() + 20
        got_main: dict = {}
        while time.monotonic() < deadline:
            for k, v in span_ids(main).items():
                got_main[k] = got_main.get(k, 0) + v
            if all(sid in got_main for sid, *_ in kept):
                break
            time.sleep(0.1)
        missing = [sid for sid, *_ in kept if sid not in got_main]
        assert not missing, f"{len(missing)} of {len(kept)} acknowledged spans missing"
        assert all(n == 1 for n in got_main.values())
        # The sampler rule holds one batch timeout after the reload: no sensor span after it.
        late = [sid for sid, agent, sent, _ in acked.acked
                if agent == "sensor-1" and sent > rule[1] + 0.1 and sid in got_main]
        assert not late
        # The added exporter got what was sent after it was added, including after the
        # invalid file (which left the pipeline as it was).
        time.sleep(0.5)
        got_extra = span_ids(extra)
        after = [sid for sid, agent, sent, _ in acked.acked if agent == "proc" and sent > added[1]]
        assert after and all(sid in got_extra for sid in after)
        assert any(sent > invalid[1] for _, _, sent, _ in acked.acked)
        # Same listener throughout; the invalid file is logged with its YAML path.
        assert sc.http == http_addr
        assert metric(sc.metrics(), "loom_sidecar_config_reload_last_success") == 0
        sc.stop()
        assert "processors.batch.timeout" in "".join(sc.stderr)
    finally:
        main.stop()
        extra.stop()


def test_a_changed_receiver_listens_anew_and_says_where(sidecars) -> None:
    backend = GrpcCapture()
    try:
        sc = sidecars(config(backend.port))
        old_http = sc.http
        # The otlp receiver changes (a gRPC protocol added): it is restarted on new ports.
        sc.cfg.write_text(config(backend.port).replace(
            "      http: { endpoint: 127.0.0.1:0 }",
            "      http: { endpoint: 127.0.0.1:0 }\n      grpc: { endpoint: 127.0.0.1:0 }"))
        sc.proc.send_signal(signal.SIGHUP)
        new = {}
        while len(new) < 2:
            line = sc.proc.stdout.readline()
            assert line, "sidecar exited"
            parts = line.split()
            if parts[:2] == ["listening", "otlp"]:
                new[parts[2]] = parts[3]
        assert set(new) == {"http", "grpc"} and new["http"] != old_http
        exporter = OTLPSpanExporter(endpoint=f"http://{new['http']}/v1/traces", timeout=10)
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        with provider.get_tracer("t").start_as_current_span("after", attributes={"loom.agent.id": "proc"}):
            pass
        provider.shutdown()
        assert [s.name for _, _, s in backend.spans(1)] == ["after"]
    finally:
        backend.stop()
