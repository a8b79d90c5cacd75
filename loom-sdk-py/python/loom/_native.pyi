"""Type stubs for loom._native: loom-core's Envelope codec (Rust, via pyo3)."""
from typing import Dict, List, Optional, Tuple, TypeVar

_E = TypeVar("_E", bound="Envelope")

TRACEPARENT: str
TRACESTATE: str
THREAD_ID: str
CORRELATION_ID: str
REPLY_TO: str
SENDER: str
TTL: str
HOP: str
ENVELOPE_KEYS: List[str]

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
    def __init__(
        self,
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
    ) -> None: ...
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
