"""Output agent: the sink. Logs each processed value with its trace id (paste it into Jaeger)."""

import logging

from opentelemetry import trace

import loom

log = logging.getLogger("output")


def on_event(ctx: loom.Context, topic: str, msg: loom.Message) -> None:
    data = msg.json()
    span = trace.get_current_span().get_span_context()
    trace_id = format(span.trace_id, "032x") if span.is_valid else msg.envelope.trace_id
    log.info("value=%s seq=%s trace_id=%s", data["value"], data.get("seq"), trace_id)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    loom.Agent("output", topics=["processed.data"], on_event=on_event).run()
