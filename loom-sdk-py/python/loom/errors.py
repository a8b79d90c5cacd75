"""Errors the Loom SDK raises.

Two also carry the built-in type upstream loom-py raised in the same place, so upstream code that
catches those keeps working: ``ActionError`` is a ``RuntimeError`` (upstream's failed
``ctx.tool``) and ``RequestTimeout`` an ``asyncio.TimeoutError`` (upstream's ``ctx.request``).
"""

import asyncio


class LoomError(Exception):
    """Base class of every Loom SDK error."""


class LoomConnectionError(LoomError):
    """The bridge could not be reached within the retry budget."""


class RegistrationRefused(LoomConnectionError):
    """The bridge refused the agent with a code retrying cannot fix (ALREADY_EXISTS,
    UNAUTHENTICATED, PERMISSION_DENIED); ``code`` is the gRPC status name, ``message`` the
    bridge's own words."""

    def __init__(self, agent_id: str, code: str, message: str) -> None:
        super().__init__(f"agent {agent_id}: the bridge refused the registration ({code}): {message}")
        self.agent_id = agent_id
        self.code = code
        self.message = message


class PublishError(LoomError):
    """The bridge refused a publish (code is the gRPC status code number)."""

    def __init__(self, code: int, message: str, event_id: str = "") -> None:
        super().__init__(f"publish {event_id or ''} refused (code {code}): {message}".replace("  ", " "))
        self.code = code
        self.message = message
        self.event_id = event_id


class ActionError(LoomError, RuntimeError):
    """An action call failed; ``status`` is the loom.v1.ActionStatus name."""

    def __init__(self, status: str, message: str, capability: str = "") -> None:
        super().__init__(f"{capability}: {status}: {message}" if capability else f"{status}: {message}")
        self.status = status
        self.message = message
        self.capability = capability


class UnknownCapability(ActionError):
    pass


class ActionTimeout(ActionError):
    pass


class RequestTimeout(LoomError, asyncio.TimeoutError):
    """No reply arrived for a request within its timeout."""
