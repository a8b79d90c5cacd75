"""Processor, in upstream loom-py's API shape: a `(ctx, topic, event)` handler reading
`event.payload` bytes and emitting with `ctx.emit(topic, type=..., payload=bytes)`."""

import asyncio
import json
import os

from loom import Agent

FACTOR = float(os.environ.get("LOOM_AGENT_FACTOR", "1.5"))


async def processor_handler(ctx, topic: str, event) -> None:
    data = json.loads(event.payload.decode("utf-8"))
    processed = {
        "original_value": data["value"],
        "processed_value": data["value"] * FACTOR,
        "counter": data["counter"],
        "sensor": event.sender,
    }
    await ctx.emit("processed.data", type="processed.reading", payload=json.dumps(processed).encode("utf-8"))


async def main():
    agent = Agent(agent_id="processor-agent", topics=["sensor.data"], on_event=processor_handler)
    await agent.start()
    # Which LLM the project configured reaches the agent as environment (never print the key).
    print(f"[processor] started llm_model={os.environ.get('LOOM_LLM_MODEL', '-')} "
          f"key_set={bool(os.environ.get('OPENAI_API_KEY'))}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await agent.stop()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
