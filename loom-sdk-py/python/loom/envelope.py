"""Envelope: loom-core's metadata codec (Rust, through pyo3) plus OpenTelemetry Python glue."""

from __future__ import annotations

from typing import Optional

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags, TraceState

from loom import _native


class Envelope(_native.Envelope):
    """The parsed view of an event's metadata: W3C trace context and the ``loom.*`` keys.

    Parsing and writing happen in Rust (loom-core), so metadata written here is byte-identical
    to what the bridge and other Rust code write. Invalid trace context reads as absent.
    """

    def inject_trace_context(self, span: Optional[trace.Span] = None) -> bool:
        """Takes the trace context of ``span`` (default: the current span). Returns False, and
        clears the trace fields, when there is no valid span context."""
        span = span or trace.get_current_span()
        if type(span) is _native.Span:
            span.write_trace_context(self)
            return True
        sc = span.get_span_context()
        if not sc.is_valid:
            self.clear_trace_context()
            return False
        self.trace_id = format(sc.trace_id, "032x")
        self.span_id = format(sc.span_id, "016x")
        self.trace_flags = int(sc.trace_flags)
        state = sc.trace_state.to_header() if sc.trace_state else ""
        self.tracestate = state or None
        return True

    def extract_trace_context(self) -> Optional[SpanContext]:
        """The remote span this envelope names, or None when absent/invalid."""
        if self.traceparent is None or self.trace_id is None or self.span_id is None:
            return None
        try:
            state = TraceState.from_header([self.tracestate]) if self.tracestate else TraceState()
        except ValueError:
            state = TraceState()
        return SpanContext(
            trace_id=int(self.trace_id, 16),
            span_id=int(self.span_id, 16),
            is_remote=True,
            trace_flags=TraceFlags(self.trace_flags or 0),
            trace_state=state,
        )

    def parent_context(self) -> Optional[Context]:
        """An OpenTelemetry Context whose current span is the remote parent, for
        ``tracer.start_as_current_span(..., context=...)``; None when there is no parent."""
        sc = self.extract_trace_context()
        if sc is None:
            return None
        return trace.set_span_in_context(NonRecordingSpan(sc))
