"""Sensor, written in upstream loom-py's API shape: emits a reading on `sensor.data` from its own
root span through `agent._ctx.emit(topic, type=..., payload=bytes)`."""

import asyncio
import json
import os
import time

from opentelemetry import trace

from loom import Agent

tracer = trace.get_tracer(__name__)


async def main():
    agent = Agent(agent_id="sensor-agent", topics=[], on_event=None)
    await agent.start()
    print("[sensor] started", flush=True)
    interval = float(os.environ.get("LOOM_AGENT_INTERVAL_S", "2"))
    count = int(os.environ.get("LOOM_AGENT_COUNT", "0"))
    n = 0
    while count == 0 or n < count:
        n += 1
        data = {"sensor_id": "sensor-1", "value": 20 + n % 10, "counter": n, "timestamp": time.time()}
        with tracer.start_as_current_span("sensor.emit_data", attributes={"data.counter": n}) as span:
            await agent._ctx.emit("sensor.data", type="sensor.reading", payload=json.dumps(data).encode("utf-8"))
            trace_id = format(span.get_span_context().trace_id, "032x")
        print(f"[sensor] reading #{n} trace_id={trace_id}", flush=True)
        await asyncio.sleep(interval)
    await asyncio.Event().wait()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
