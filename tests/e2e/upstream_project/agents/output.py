"""Output, in upstream loom-py's API shape: prints each processed reading with the envelope
fields upstream's events carry (`event.trace_id`, `event.sender`, `event.type`)."""

import asyncio
import json

from loom import Agent


async def output_handler(ctx, topic: str, event) -> None:
    data = json.loads(event.payload.decode("utf-8"))
    print(f"[output] #{data['counter']} processed={data['processed_value']} type={event.type} "
          f"sender={event.sender} trace_id={event.trace_id or 'N/A'} flags={event.trace_flags}", flush=True)


async def main():
    agent = Agent(agent_id="output-agent", topics=["processed.data"], on_event=output_handler)
    await agent.start()
    print("[output] started", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await agent.stop()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
