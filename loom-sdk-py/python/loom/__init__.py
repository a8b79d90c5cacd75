"""Loom Python SDK: agents on the Loom EventBus with automatic W3C tracing.

    import loom

    async def on_event(ctx: loom.Context, topic: str, msg: loom.Message) -> None:
        await ctx.emit("processed.data", {"value": msg.json()["value"] * 1.5})

    loom.Agent("processor", topics=["sensor.data"], on_event=on_event).run()

Agents written for upstream loom-py (``from loom import Agent, capability``) run unchanged:
see docs/migrating-from-upstream.md.
"""

from loom import tracing
from loom._native import format_traceparent, parse_traceparent
from loom.agent import ActionRequest, Agent, AgentStats, Context, Event, Message, RetryPolicy, encode_payload
from loom.capabilities import CapabilitySpec, capability
from loom.envelope import Envelope
from loom.errors import (
    ActionError,
    ActionTimeout,
    LoomConnectionError,
    LoomError,
    PublishError,
    RegistrationRefused,
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
    "CapabilitySpec",
    "Context",
    "Envelope",
    "Event",
    "LoomConnectionError",
    "LoomError",
    "Message",
    "PublishError",
    "RegistrationRefused",
    "RequestTimeout",
    "RetryPolicy",
    "UnknownCapability",
    "capability",
    "encode_payload",
    "format_traceparent",
    "init_telemetry",
    "parse_traceparent",
    "shutdown_telemetry",
    "tracing",
]
