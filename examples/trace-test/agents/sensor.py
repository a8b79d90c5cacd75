"""Sensor agent: every SENSOR_INTERVAL_S seconds (default 2) it opens a root span
`sensor.emit_data` and emits a reading on `sensor.data`. SENSOR_COUNT > 0 stops after that many."""

import asyncio
import logging
import os
import random
import signal

from opentelemetry import trace

import loom

log = logging.getLogger("sensor")


async def main() -> None:
    interval = float(os.environ.get("SENSOR_INTERVAL_S", "2"))
    count = int(os.environ.get("SENSOR_COUNT", "0"))
    agent = loom.Agent("sensor")
    await agent.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tracer = trace.get_tracer("trace-test.sensor")
    seq = 0
    try:
        while not stop.is_set() and (count == 0 or seq < count):
            value = round(20 + random.random() * 5, 2)
            # The span the whole chain hangs under; emit() carries its context in the event.
            with tracer.start_as_current_span(
                "sensor.emit_data",
                attributes={"loom.agent.id": "sensor", "loom.topic": "sensor.data", "sensor.value": value, "sensor.seq": seq},
            ) as span:
                await agent.context.emit("sensor.data", {"value": value, "seq": seq}, event_type="sensor.reading")
                trace_id = format(span.get_span_context().trace_id, "032x")
            log.info("reading seq=%d value=%.2f trace_id=%s", seq, value, trace_id)
            seq += 1
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except asyncio.TimeoutError:
                pass
        if count:
            log.info("sent %d readings", seq)
            await stop.wait()
    finally:
        await agent.stop()


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    asyncio.run(main())
