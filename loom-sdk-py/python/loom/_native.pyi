"""Type stubs for loom._native: loom-core's Envelope codec and sampler parser, and the OTLP span
encoder (Rust, via pyo3).

Checked against the built module by ``python -m mypy.stubtest loom._native`` (tests/test_stubs.py).
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple, TypeVar

from typing_extensions import disjoint_base

_E = TypeVar("_E", bound="Envelope")

# pyo3 lists what the module adds, in order.
__all__ = [
    "Envelope",
    "parse_traceparent",
    "format_traceparent",
    "parse_sampler_env",
    "encode_spans",
    "SAMPLER_NAMES",
    "DEFAULT_SAMPLER",
    "TRACEPARENT",
    "TRACESTATE",
    "THREAD_ID",
    "CORRELATION_ID",
    "REPLY_TO",
    "SENDER",
    "TTL",
    "HOP",
    "ENVELOPE_KEYS",
]

TRACEPARENT: str
TRACESTATE: str
THREAD_ID: str
CORRELATION_ID: str
REPLY_TO: str
SENDER: str
TTL: str
HOP: str
ENVELOPE_KEYS: List[str]
SAMPLER_NAMES: List[str]
DEFAULT_SAMPLER: str

# A pyo3 class: its instances carry a Rust struct, so no other base can be mixed in with it.
@disjoint_base
class Envelope:
    thread_id: Optional[str]
    correlation_id: Optional[str]
    reply_to: Optional[str]
    sender: Optional[str]
    ttl: Optional[int]
    hop: Optional[int]
    trace_id: Optional[str]
    span_id: Optional[str]
    trace_flags: Optional[int]
    tracestate: Optional[str]
    # pyo3 builds the object in __new__ (#[new]); there is no __init__ taking arguments.
    def __new__(
        cls: type[_E],
        *,
        thread_id: Optional[str] = ...,
        correlation_id: Optional[str] = ...,
        reply_to: Optional[str] = ...,
        sender: Optional[str] = ...,
        ttl: Optional[int] = ...,
        hop: Optional[int] = ...,
        trace_id: Optional[str] = ...,
        span_id: Optional[str] = ...,
        trace_flags: Optional[int] = ...,
        tracestate: Optional[str] = ...,
    ) -> _E: ...
    @classmethod
    def from_metadata(cls: type[_E], metadata: Dict[str, str]) -> _E: ...
    def to_metadata(self) -> Dict[str, str]: ...
    def write_metadata(self, metadata: Dict[str, str]) -> None: ...
    @property
    def traceparent(self) -> Optional[str]: ...
    def set_traceparent(self, value: str) -> bool: ...
    def clear_trace_context(self) -> None: ...
    def copy(self: _E) -> _E: ...

def parse_traceparent(value: str) -> Optional[Tuple[str, str, int]]: ...
def format_traceparent(trace_id: str, span_id: str, flags: int) -> str: ...
def parse_sampler_env(env: Dict[str, str]) -> Tuple[str, Optional[float]]: ...
def encode_spans(spans: Sequence[Any]) -> bytes: ...
