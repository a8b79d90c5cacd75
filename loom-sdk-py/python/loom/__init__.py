"""Loom Python SDK: agents on the Loom EventBus with automatic W3C tracing.

    import loom

    async def on_event(ctx: loom.Context, topic: str, msg: loom.Message) -> None:
        await ctx.emit("processed.data", {"value": msg.json()["value"] * 1.5})

    loom.Agent("processor", topics=["sensor.data"], on_event=on_event).run()
"""

from loom import tracing
from loom._native import format_traceparent, parse_traceparent
from loom.agent import ActionRequest, Agent, AgentStats, Context, Message, RetryPolicy, encode_payload
from loom.envelope import Envelope
from loom.errors import (
    ActionError,
    ActionTimeout,
    LoomConnectionError,
    LoomError,
    PublishError,
    RequestTimeout,
    UnknownCapability,
)
from loom.tracing import init_telemetry, shutdown_telemetry

__all__ = [
    "ActionError",
    "ActionRequest",
    "ActionTimeout",
    "Agent",
    "AgentStats",
    "Context",
    "Envelope",
    "LoomConnectionError",
    "LoomError",
    "Message",
    "PublishError",
    "RequestTimeout",
    "RetryPolicy",
    "UnknownCapability",
    "encode_payload",
    "format_traceparent",
    "init_telemetry",
    "parse_traceparent",
    "shutdown_telemetry",
    "tracing",
]
