"""Processor agent: multiplies each `sensor.data` reading by 1.5 and emits it on `processed.data`
from inside its handler, so the next hop continues the same trace."""

import logging

import loom

log = logging.getLogger("processor")


async def on_event(ctx: loom.Context, topic: str, msg: loom.Message) -> None:
    reading = msg.json()
    processed = round(reading["value"] * 1.5, 3)
    await ctx.emit("processed.data", {"value": processed, "seq": reading.get("seq")}, event_type="processed.reading")
    log.info("seq=%s %.2f -> %.3f trace_id=%s", reading.get("seq"), reading["value"], processed, msg.envelope.trace_id)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    loom.Agent("processor", topics=["sensor.data"], on_event=on_event).run()
