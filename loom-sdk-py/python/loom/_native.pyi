"""Type stubs for loom._native: loom-core's Envelope codec and sampler parser, the OTLP span
encoder, and native spans with their export pipeline (Rust, via pyo3).

Checked against the built module by ``python -m mypy.stubtest loom._native`` (tests/test_stubs.py).
"""
from typing import Any, Dict, List, Optional, Sequence, Tuple, TypeVar, final

from typing_extensions import disjoint_base

_E = TypeVar("_E", bound="Envelope")

# pyo3 lists what the module adds, in order.
__all__ = [
    "Envelope",
    "parse_traceparent",
    "format_traceparent",
    "parse_sampler_env",
    "encode_spans",
    "Span",
    "SpanPipeline",
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

@final
class Span:
    """A span recorded in Rust; implements ``opentelemetry.trace.Span`` (registered as one)."""

    def get_span_context(self) -> Any: ...
    def is_recording(self) -> bool: ...
    def set_attribute(self, key: Any, value: Any) -> None: ...
    def set_attributes(self, attributes: Any) -> None: ...
    def add_event(self, name: str, attributes: Optional[Any] = None, timestamp: Optional[int] = None) -> None: ...
    def add_link(self, context: Any, attributes: Optional[Any] = None) -> None: ...
    def update_name(self, name: str) -> None: ...
    def set_status(self, status: Any, description: Optional[Any] = None) -> None: ...
    def record_exception(
        self,
        exception: Any,
        attributes: Optional[Any] = None,
        timestamp: Optional[int] = None,
        escaped: bool = False,
    ) -> None: ...
    def end(self, end_time: Optional[int] = None) -> None: ...
    def __enter__(self) -> "Span": ...
    def __exit__(self, exc_type: Any, exc_val: Any, exc_tb: Any) -> bool: ...
    def write_trace_context(self, envelope: Envelope) -> None: ...

@final
class SpanPipeline:
    """The bounded queue of native and SDK spans, batched and encoded to OTLP off the GIL."""

    def __new__(
        cls,
        resource: Any,
        limits: Any,
        *,
        sampler: Optional[str] = None,
        ratio: Optional[float] = None,
        max_queue_size: int = 2048,
        max_export_batch_size: int = 512,
        schedule_delay_millis: int = 5000,
        scope_name: str = "loom",
    ) -> "SpanPipeline": ...
    @property
    def native(self) -> bool: ...
    def start_span(
        self,
        name: str,
        kind: int,
        attributes: Optional[Any] = None,
        parent: Optional[Any] = None,
        envelope: Optional[Envelope] = None,
    ) -> Span: ...
    def start_event_span(
        self,
        name: str,
        kind: int,
        agent_id: str,
        topic: str,
        event_id: str,
        event_type: str,
        event_envelope: Envelope,
        operation: str,
        parent: Optional[Any] = None,
        envelope: Optional[Envelope] = None,
    ) -> Span: ...
    def submit(self, span: Any) -> None: ...
    def next_batch(self, timeout_s: float) -> Optional[Tuple[bytes, int]]: ...
    def start_export(
        self, endpoint: str, headers: List[Tuple[str, str]], timeout_s: float, retryable: List[int]
    ) -> None: ...
    def join_export(self) -> None: ...
    def batch_done(self, count: int, ok: bool) -> None: ...
    def flush(self, timeout_s: float) -> bool: ...
    def close(self) -> None: ...
    def abandon_after_fork(self) -> None: ...
    def drops(self) -> Dict[str, int]: ...
