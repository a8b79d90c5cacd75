"""Property-based tests of the Python codec (loom.Envelope, loom.parse_traceparent,
loom.format_traceparent) against the Rust verdicts.

What is compared: the Python side goes through the pyo3 extension (`loom._native`: argument
conversion, the `Envelope` subclass, `write_metadata` on a live dict); the Rust side is the
`envelope_vectors` example of loom-core, a separate Rust binary that runs
`Envelope::from_metadata(..).to_metadata()` on the same maps. Both must write byte-identical
metadata for any map Hypothesis generates, and the codec may raise nothing but ValueError (the
documented error; a str that is not valid Unicode, e.g. a lone surrogate, is a UnicodeEncodeError,
which is one). Examples are bounded so the file runs in seconds, and no example database is
written (nothing left in the work tree).
"""

import json
import subprocess
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import loom
from loom import _native

from sdk_harness import BIN_DIR

TP = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
VECTORS_EXE = BIN_DIR / "examples" / "envelope_vectors"

# Unicode the Rust side can receive through JSON and pyo3: no lone surrogates (tested apart).
TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
HEX = "0123456789abcdef"


def hex_str(n: int) -> st.SearchStrategy[str]:
    return st.text(st.sampled_from(HEX + "ABCDEFgx-"), min_size=n, max_size=n) | st.text(
        st.sampled_from(HEX), min_size=n, max_size=n
    )


@st.composite
def traceparents(draw: st.DrawFn) -> str:
    """Valid headers, and each of the ways one can be wrong (W3C trace-context 3.2)."""
    version = draw(st.sampled_from(["00", "01", "cc", "fe", "ff", "0g", "FF"]))
    trace_id = draw(hex_str(32) | st.sampled_from(["0" * 32, "4bf92f3577b34da6a3ce929d0e0e4736"]))
    span_id = draw(hex_str(16) | st.sampled_from(["0" * 16, "00f067aa0ba902b7"]))
    flags = draw(hex_str(2))
    sep = draw(st.sampled_from(["-", "-", "-", "_", ""]))
    tail = draw(st.sampled_from(["", "", "-future", "x", "-"]))
    value = f"{version}-{trace_id}{sep}{span_id}-{flags}{tail}"
    pad = draw(st.sampled_from(["", " ", "\t", "  \t", "\n"]))
    value = pad + value + pad[::-1]
    # And arbitrary edits of it: truncation, an inserted character.
    cut = draw(st.integers(0, len(value)))
    return draw(st.sampled_from([value, value, value[:cut], value[:cut] + draw(TEXT)[:1] + value[cut:]]))


NUMBER = st.one_of(
    st.integers(-(2**40), 2**40).map(str),
    st.sampled_from(["", " 7 ", "+3", "4294967295", "4294967296", "0x10", "1.0", "٣"]),
)

KEYS = {
    "traceparent": traceparents() | TEXT,
    "tracestate": TEXT | st.sampled_from(["rojo=00f067aa0ba902b7,congo=t61rcWkgMzE", "k=" + "x" * 510, "k=" + "x" * 511, " a=b\t"]),
    "loom.thread_id": TEXT,
    "loom.correlation_id": TEXT,
    "loom.reply_to": TEXT,
    "loom.sender": TEXT,
    "loom.ttl": NUMBER,
    "loom.hop": NUMBER,
    # Upstream loom-py's bare keys and anything else: read or ignored, never written.
    "trace_id": hex_str(32),
    "span_id": hex_str(16),
    "trace_flags": hex_str(2),
    "sender": TEXT,
}


@st.composite
def metadata(draw: st.DrawFn) -> dict[str, str]:
    md = {}
    for key in draw(st.lists(st.sampled_from(sorted(KEYS)), unique=True, max_size=len(KEYS))):
        md[key] = draw(KEYS[key])
    md.update(draw(st.dictionaries(TEXT, TEXT, max_size=3)))
    return md


def canonical(md: dict[str, str]) -> str:
    # The example prints compact JSON with sorted keys (serde_json escapes only what JSON must).
    return json.dumps(dict(sorted(md.items())), separators=(",", ":"), ensure_ascii=False)


def rust_verdicts(vectors: list[dict[str, str]]) -> list[str]:
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "vectors.json"
        path.write_text(json.dumps(vectors), encoding="utf-8")
        out = subprocess.run([str(VECTORS_EXE), str(path)], capture_output=True, check=True, timeout=30)
    # One line per vector, split on "\n" only: values may hold other Unicode line breaks (U+0085).
    return out.stdout.decode("utf-8").split("\n")[:-1]


def test_the_rust_side_is_built() -> None:
    assert VECTORS_EXE.is_file(), f"{VECTORS_EXE} missing: cargo build -p loom-core --example envelope_vectors"


# Each example is a batch, so one Rust process judges many maps.
@settings(
    max_examples=20,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.lists(metadata(), min_size=1, max_size=25))
@example([{"traceparent": TP, "tracestate": "a=b"}, {"traceparent": " " + TP.upper() + " "}, {}])
def test_python_writes_what_rust_writes_for_any_metadata(vectors: list[dict[str, str]]) -> None:
    rust = rust_verdicts(vectors)
    assert len(rust) == len(vectors)
    for md, want in zip(vectors, rust):
        env = loom.Envelope.from_metadata(md)
        assert canonical(env.to_metadata()) == want, md
        # write_metadata into a live dict: the envelope's keys as Rust wrote them, others kept.
        live = dict(md)
        env.write_metadata(live)
        written = json.loads(want)
        assert {k: v for k, v in live.items() if k in _native.ENVELOPE_KEYS} == written
        assert {k: v for k, v in live.items() if k not in _native.ENVELOPE_KEYS} == {
            k: v for k, v in md.items() if k not in _native.ENVELOPE_KEYS
        }
        # The traceparent verdict: Rust writes one exactly when Python's parser accepts it.
        if "traceparent" in md:
            assert ("traceparent" in written) == (loom.parse_traceparent(md["traceparent"]) is not None), md


@settings(max_examples=150, deadline=None, database=None)
@given(traceparents() | TEXT)
def test_parse_and_format_are_inverse(value: str) -> None:
    parsed = loom.parse_traceparent(value)
    if parsed is None:
        return
    trace_id, span_id, flags = parsed
    formatted = loom.format_traceparent(trace_id, span_id, flags)
    assert len(formatted) == 55 and formatted == formatted.lower()
    assert loom.parse_traceparent(formatted) == parsed
    if value.strip(" \t").startswith("00"):
        assert formatted == value.strip(" \t").lower()


@settings(max_examples=150, deadline=None, database=None)
@given(hex_str(32) | st.text(max_size=40), hex_str(16) | st.text(max_size=20), st.integers(0, 255))
def test_format_returns_a_valid_header_or_raises_value_error(trace_id: str, span_id: str, flags: int) -> None:
    try:
        formatted = loom.format_traceparent(trace_id, span_id, flags)
    except ValueError:
        return
    assert loom.parse_traceparent(formatted) == (trace_id.lower(), span_id.lower(), flags)


@settings(max_examples=100, deadline=None, database=None)
@given(st.dictionaries(st.text(max_size=12), st.text(max_size=12), max_size=4))
def test_any_python_str_map_reads_or_raises_value_error(md: dict[str, str]) -> None:
    # st.text() includes lone surrogates, which no UTF-8 string can hold.
    try:
        env = loom.Envelope.from_metadata(md)
    except ValueError:
        assert any(not s.isascii() for kv in md.items() for s in kv)
        return
    env.to_metadata()
