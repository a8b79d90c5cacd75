"""The Envelope codec: Python calls loom-core (Rust) and writes byte-identical metadata."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from opentelemetry import trace

import loom
from loom import _native

from sdk_harness import BIN_DIR

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"

VECTORS = [
    {"traceparent": TP, "tracestate": "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"},
    {"traceparent": TP, "loom.thread_id": "t-1", "loom.correlation_id": "c-1", "loom.reply_to": "r",
     "loom.sender": "sensor", "loom.ttl": "30", "loom.hop": "2", "app.key": "kept out"},
    {"traceparent": "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "tracestate": "a=b"},
    {"traceparent": "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
    {"traceparent": "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01"},
    {"traceparent": "garbage", "loom.hop": "-1", "loom.ttl": "x"},
    {"traceparent": "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-09-future"},
    {"traceparent": " " + TP + " ", "loom.sender": "ünïcødé-agent", "loom.thread_id": ""},
    {"traceparent": TP, "tracestate": "k=" + "x" * 600},
    {},
]


def canonical(md: dict) -> str:
    return json.dumps(dict(sorted(md.items())), separators=(",", ":"), ensure_ascii=False)


def test_python_and_rust_write_byte_identical_metadata(tmp_path: Path) -> None:
    exe = BIN_DIR / "examples" / "envelope_vectors"
    assert exe.is_file(), f"{exe} missing: cargo build -p loom-core --example envelope_vectors"
    vec_file = tmp_path / "vectors.json"
    vec_file.write_text(json.dumps(VECTORS), encoding="utf-8")
    rust = subprocess.run([str(exe), str(vec_file)], capture_output=True, check=True).stdout
    python = "".join(canonical(loom.Envelope.from_metadata(v).to_metadata()) + "\n" for v in VECTORS)
    assert python.encode("utf-8") == rust
    # And the vectors really exercise both outcomes.
    lines = rust.decode().splitlines()
    assert '"traceparent"' in lines[0] and lines[2] == "{}" and lines[5] == "{}"


def test_fields_read_write_and_invalid_input_reads_as_absent() -> None:
    e = loom.Envelope.from_metadata({"traceparent": TP, "loom.hop": "2"})
    assert (e.trace_id, e.span_id, e.trace_flags, e.hop) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1, 2)
    bad = loom.Envelope.from_metadata({"traceparent": "00-xyz", "tracestate": "a=b"})
    assert bad.trace_id is None and bad.tracestate is None and bad.extract_trace_context() is None
    md = {"traceparent": TP, "other": "v"}
    loom.Envelope().write_metadata(md)
    assert md == {"other": "v"}, "stale trace context removed, foreign keys kept"
    assert loom.parse_traceparent(TP) == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1)
    assert loom.parse_traceparent("ff-" + TP[3:]) is None
    with pytest.raises(ValueError, match="trace context"):
        loom.format_traceparent("00" * 16, "00f067aa0ba902b7", 1)


def test_inject_and_extract_with_the_opentelemetry_sdk(spans) -> None:
    tracer = trace.get_tracer("test")
    with tracer.start_as_current_span("producer") as span:
        env = loom.Envelope()
        assert env.inject_trace_context()
        sc = span.get_span_context()
    md = env.to_metadata()
    # Flags carried as the SDK set them (sampled, and W3C level-2 "random" in recent SDKs).
    assert md["traceparent"] == f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"
    assert int(sc.trace_flags) & 0x01
    remote = loom.Envelope.from_metadata(md).extract_trace_context()
    assert remote is not None and remote.is_remote
    assert (remote.trace_id, remote.span_id, int(remote.trace_flags)) == (sc.trace_id, sc.span_id, int(sc.trace_flags))
    with tracer.start_as_current_span("consumer", context=loom.Envelope.from_metadata(md).parent_context()) as child:
        pass
    assert child.parent.span_id == sc.span_id and child.context.trace_id == sc.trace_id
    # No active span: nothing to inject, trace fields cleared.
    env2 = loom.Envelope.from_metadata(md)
    assert not env2.inject_trace_context()
    assert "traceparent" not in env2.to_metadata()


def test_committed_grpc_stubs_match_the_proto(tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parents[2]
    subprocess.run(["bash", str(repo / "scripts" / "gen-python-proto.sh"), str(tmp_path)],
                   check=True, env={**os.environ, "PYTHON": os.sys.executable}, cwd=repo)
    for name in ("loom_pb2.py", "loom_pb2_grpc.py", "loom_pb2.pyi"):
        fresh = (tmp_path / "loom" / "v1" / name).read_text()
        committed = (repo / "loom-sdk-py" / "python" / "loom" / "v1" / name).read_text()
        assert fresh == committed, f"{name} is stale: run scripts/gen-python-proto.sh"
