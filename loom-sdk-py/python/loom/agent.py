"""Agent: a Python participant on the Loom bus, connected to loom-bridge over gRPC.

Tracing is automatic: ``Context.emit`` writes the current span's W3C context into the event
(opening an ``agent.emit`` PRODUCER span when the caller has none), and every delivery runs the
handler inside an ``agent.on_event`` CONSUMER span whose parent is the delivery's
``traceparent`` — the bridge's ``bridge.forward`` span. Anything emitted from a handler continues
the same trace.

Agents written against upstream loom-py's API (``Agent(agent_id, topics, capabilities=[fn],
address=…)``, ``ctx.emit(topic, type=…, payload=bytes)``, ``ctx.request``/``reply``/``tool``,
``event.trace_id``…) run unchanged: those shapes are accepted beside this SDK's own
(docs/migrating-from-upstream.md).
"""

from __future__ import annotations

import asyncio
import collections
import inspect
import json
import logging
import os
import random
import signal
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, Deque, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import grpc
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from loom import tracing as lt
from loom.capabilities import CapabilitySpec, specs_of
from loom.envelope import Envelope
from loom.errors import (
    ActionError,
    ActionTimeout,
    LoomConnectionError,
    PublishError,
    RegistrationRefused,
    RequestTimeout,
    UnknownCapability,
)
from loom.v1 import loom_pb2 as pb
from loom.v1 import loom_pb2_grpc as pbg

log = logging.getLogger("loom.agent")

# Refusals that come back the same however often the agent asks: a live agent already holds the
# id, or the bridge will not accept this caller. Retrying them only hides the bridge's message.
FINAL_REFUSALS = (
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
)

DEFAULT_BRIDGE_ADDR = "http://127.0.0.1:50051"
REPLY_TOPIC_PREFIX = "_loom.reply."


def upstream_reply_topic(agent_id: str) -> str:
    """Upstream loom-py's reply topic of an agent: where its peers reply when a request names no
    ``reply_to``. Every agent subscribes to it besides its own reply topic."""
    return f"agent.{agent_id}.replies"

Payload = Union[bytes, bytearray, memoryview, str, int, float, bool, None, dict, list]
Handler = Callable[["Context", str, "Event"], Union[None, Awaitable[None]]]
CapabilityFn = Callable[["Context", "ActionRequest"], Any]

_GRPC_OK = 0


def encode_payload(payload: Payload) -> bytes:
    """bytes pass through, str is UTF-8, anything else is JSON."""
    if payload is None:
        return b""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    if isinstance(payload, str):
        return payload.encode("utf-8")
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


@dataclass(frozen=True)
class BridgeCredentials:
    """How an agent proves itself to the bridge: a bearer token and/or TLS material (paths to PEM
    files). Each comes from its argument, else its environment variable."""

    token: Optional[str] = None
    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None

    def __repr__(self) -> str:  # never show the token
        return (f"BridgeCredentials(token={'<set>' if self.token else None}, ca_file={self.ca_file!r}, "
                f"cert_file={self.cert_file!r}, key_file={self.key_file!r})")

    @classmethod
    def resolve(cls, token: Optional[str], ca_file: Optional[str], cert_file: Optional[str],
                key_file: Optional[str]) -> "BridgeCredentials":
        env = os.environ
        c = cls(
            token=token or env.get("LOOM_BRIDGE_TOKEN") or None,
            ca_file=ca_file or env.get("LOOM_BRIDGE_CA_FILE") or None,
            cert_file=cert_file or env.get("LOOM_BRIDGE_CERT_FILE") or None,
            key_file=key_file or env.get("LOOM_BRIDGE_KEY_FILE") or None,
        )
        if c.token is not None and (not c.token.isascii() or any(ch.isspace() or not ch.isprintable() for ch in c.token)):
            raise ValueError("bridge token (token= / LOOM_BRIDGE_TOKEN) must be printable ASCII without spaces")
        if (c.cert_file is None) != (c.key_file is None):
            raise ValueError("a client certificate needs both cert_file and key_file (LOOM_BRIDGE_CERT_FILE / LOOM_BRIDGE_KEY_FILE)")
        return c

    @property
    def wants_tls(self) -> bool:
        return self.ca_file is not None or self.cert_file is not None

    def channel_credentials(self) -> "grpc.ChannelCredentials":
        """TLS credentials: the CA to trust (system roots when none) and the client certificate."""

        def read(path: Optional[str], what: str) -> Optional[bytes]:
            if path is None:
                return None
            try:
                with open(path, "rb") as f:
                    return f.read()
            except OSError as e:
                raise LoomConnectionError(f"cannot read the bridge {what} {path!r}: {e}") from None

        return grpc.ssl_channel_credentials(
            root_certificates=read(self.ca_file, "CA file"),
            private_key=read(self.key_file, "client key file"),
            certificate_chain=read(self.cert_file, "client certificate file"),
        )

    def call_metadata(self) -> Tuple[Tuple[str, str], ...]:
        """What every RPC carries: the token as `authorization: Bearer …` when there is one."""
        return (("authorization", f"Bearer {self.token}"),) if self.token else ()


def _target(addr: str) -> Tuple[str, bool]:
    """gRPC target and whether TLS is wanted, from `http(s)://host:port` or `host:port`."""
    if addr.startswith("https://"):
        return addr[len("https://"):].rstrip("/"), True
    if addr.startswith("http://"):
        return addr[len("http://"):].rstrip("/"), False
    return addr.rstrip("/"), False


@dataclass
class Message:
    """One delivered event."""

    topic: str
    id: str
    type: str
    payload: bytes
    metadata: Dict[str, str]
    envelope: Envelope
    timestamp_unix_nano: int = 0

    def text(self) -> str:
        return self.payload.decode("utf-8")

    def json(self) -> Any:
        return json.loads(self.payload) if self.payload else None

    @classmethod
    def from_proto(cls, topic: str, ev: "pb.Event") -> "Message":
        md = dict(ev.metadata)
        return cls(
            topic=topic or ev.topic,
            id=ev.id,
            type=ev.type,
            payload=bytes(ev.payload),
            metadata=md,
            envelope=Envelope.from_metadata(md),
            timestamp_unix_nano=ev.timestamp_unix_nano,
        )


@dataclass
class Event(Message):
    """A delivered event as handlers receive it: this SDK's ``Message`` plus the fields of
    upstream loom-py's envelope (``event.trace_id``, ``event.sender``, …), read from the
    metadata by loom-core's codec. ``payload`` is bytes in both."""

    @property
    def trace_id(self) -> Optional[str]:
        """32 hex digits of the trace this event belongs to (None: untraced)."""
        return self.envelope.trace_id

    @property
    def span_id(self) -> Optional[str]:
        """16 hex digits of the span that is this event's parent."""
        return self.envelope.span_id

    @property
    def trace_flags(self) -> Optional[str]:
        """The W3C flags as two hex digits (``"01"``: sampled), as upstream reports them."""
        flags = self.envelope.trace_flags
        return None if flags is None or self.envelope.trace_id is None else format(flags, "02x")

    @property
    def sender(self) -> Optional[str]:
        return self.envelope.sender

    @property
    def thread_id(self) -> Optional[str]:
        return self.envelope.thread_id

    @property
    def correlation_id(self) -> Optional[str]:
        return self.envelope.correlation_id

    @property
    def reply_to(self) -> Optional[str]:
        return self.envelope.reply_to

    @property
    def timestamp_ms(self) -> int:
        return self.timestamp_unix_nano // 1_000_000

    @property
    def source(self) -> str:
        return self.envelope.sender or ""


def _upstream_payload(payload: Any) -> bytes:
    """Upstream's encoding of a tool payload: bytes as they are, anything else as JSON."""
    if payload is None:
        return b""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        return bytes(payload)
    return json.dumps(payload, separators=(",", ":")).encode("utf-8")


def _envelope_of(value: Any) -> Optional[Envelope]:
    """The envelope an upstream-style ``envelope=`` argument names (an Envelope or an event)."""
    if value is None:
        return None
    if isinstance(value, Message):
        return value.envelope
    if isinstance(value, Envelope):
        return value
    raise TypeError(f"envelope must be a loom.Envelope or a delivered event, not {type(value).__name__}")


@dataclass
class ActionRequest:
    """One call to a capability this agent serves."""

    capability: str
    call_id: str
    args: bytes
    caller: str
    envelope: Envelope

    def json(self) -> Any:
        return json.loads(self.args) if self.args else None

    def text(self) -> str:
        return self.args.decode("utf-8")


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter between connection attempts."""

    initial_s: float = 0.1
    max_s: float = 5.0
    multiplier: float = 2.0
    # Attempts before start() gives up while the bridge has never been reached (None: forever).
    start_attempts: Optional[int] = 10

    def delay(self, attempt: int) -> float:
        cap = min(self.max_s, self.initial_s * (self.multiplier ** max(0, attempt)))
        return random.uniform(cap / 2, cap)


@dataclass
class AgentStats:
    published: int = 0
    publish_rejected: int = 0
    delivered: int = 0
    handler_errors: int = 0
    actions_served: int = 0
    reconnects: int = 0
    # Events emitted while disconnected that did not fit the buffer (oldest dropped first).
    dropped_while_disconnected: int = 0
    buffered: int = 0


class Context:
    """What a handler or capability can do: emit, request, reply, call."""

    def __init__(self, agent: "Agent", message: Optional[Message] = None) -> None:
        self._agent = agent
        self.message = message

    @property
    def agent_id(self) -> str:
        return self._agent.agent_id

    async def emit(
        self,
        topic: str,
        payload: Payload = None,
        *,
        event_type: str = "",
        thread_id: Optional[str] = None,
        correlation_id: Optional[str] = None,
        reply_to: Optional[str] = None,
        metadata: Optional[Mapping[str, str]] = None,
        wait: bool = True,
        type: Optional[str] = None,
        envelope: Optional[Union[Envelope, Message]] = None,
    ) -> str:
        """Publishes an event; returns its id. With ``wait`` (default) it returns once the bridge
        accepted it and raises ``PublishError`` if the bridge refused it. While disconnected the
        event is buffered (bounded) and sent on reconnect.

        Upstream's shape ``emit(topic, type=…, payload=b"…", envelope=…)`` works too: ``type``
        is ``event_type``, and ``envelope`` lends its thread, correlation id, reply_to and ttl."""
        if not isinstance(topic, str) or not topic:
            raise ValueError("topic must be a non-empty string")
        if type is not None:
            event_type = type
        md: Dict[str, str] = dict(metadata or {})
        env = Envelope.from_metadata(md)
        given = _envelope_of(envelope)
        if given is not None:
            env.thread_id = env.thread_id or given.thread_id
            env.correlation_id = env.correlation_id or given.correlation_id
            env.reply_to = env.reply_to or given.reply_to
            env.ttl = env.ttl if env.ttl is not None else given.ttl
        env.sender = self._agent.agent_id
        parent = self.message.envelope if self.message is not None else None
        env.thread_id = thread_id or env.thread_id or (parent.thread_id if parent else None)
        if correlation_id is not None:
            env.correlation_id = correlation_id
        if reply_to is not None:
            env.reply_to = reply_to
        if parent is not None:
            env.hop = (parent.hop or 0) + 1
        event = pb.Event(
            id=str(uuid.uuid4()),
            type=event_type,
            topic=topic,
            payload=encode_payload(payload),
            timestamp_unix_nano=time.time_ns(),
        )
        current = trace.get_current_span()
        if lt.has_valid_context(current):
            env.inject_trace_context(current)
            env.write_metadata(md)
            event.metadata.update(md)
            return await self._agent._publish(topic, event, wait)
        with lt.start_event_span(
            lt.SPAN_EMIT,
            kind=SpanKind.PRODUCER,
            agent_id=self._agent.agent_id,
            topic=topic,
            event_id=event.id,
            event_type=event.type,
            env=env,
            operation="send",
        ) as span:
            env.inject_trace_context(span)
            env.write_metadata(md)
            event.metadata.update(md)
            return await self._agent._publish(topic, event, wait)

    async def request(
        self,
        topic: str,
        payload: Payload = None,
        *,
        timeout: float = 10.0,
        event_type: str = "",
        type: Optional[str] = None,
        timeout_ms: Optional[int] = None,
    ) -> Event:
        """Emits to ``topic`` with reply_to/correlation_id and waits for the reply (the reply
        event). Upstream's ``type=`` / ``timeout_ms=`` are accepted; ``RequestTimeout`` is also
        an ``asyncio.TimeoutError``, which upstream raised."""
        if type is not None:
            event_type = type
        if timeout_ms is not None:
            timeout = timeout_ms / 1000.0
        corr = str(uuid.uuid4())
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._agent._pending_requests[corr] = fut
        try:
            await self.emit(topic, payload, event_type=event_type, correlation_id=corr, reply_to=self._agent.reply_topic)
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            raise RequestTimeout(f"no reply on {topic} within {timeout:g}s (correlation_id {corr})") from None
        finally:
            self._agent._pending_requests.pop(corr, None)

    async def reply(
        self, message: Message, payload: Payload = None, *, event_type: str = "", type: Optional[str] = None
    ) -> str:
        """Answers a request: emits to its reply_to with its correlation id. As upstream does, a
        request without reply_to is answered on its sender's ``agent.{sender}.replies`` and one
        without correlation id is matched by its event id."""
        reply_to = message.envelope.reply_to
        if not reply_to and message.envelope.sender:
            reply_to = upstream_reply_topic(message.envelope.sender)
        if not reply_to:
            raise ValueError(f"message {message.id} on {message.topic} has no reply_to")
        return await self.emit(
            reply_to,
            payload,
            event_type=type if type is not None else event_type,
            correlation_id=message.envelope.correlation_id or message.id,
            thread_id=message.envelope.thread_id,
        )

    async def call(
        self,
        capability: str,
        args: Payload = None,
        *,
        timeout: float = 10.0,
        headers: Optional[Mapping[str, str]] = None,
    ) -> bytes:
        """Invokes a capability (served by any agent or Rust provider) through the bridge;
        returns its output bytes or raises ``ActionError`` (``UnknownCapability``, ``ActionTimeout``)."""
        if not capability:
            raise ValueError("capability must be a non-empty string")
        env = Envelope()
        env.sender = self._agent.agent_id
        call = pb.ActionCall(
            id=str(uuid.uuid4()),
            capability=capability,
            args=encode_payload(args),
            timeout_ms=max(1, int(timeout * 1000)),
            caller=self._agent.agent_id,
        )
        if headers:
            call.headers.update(headers)
        current = trace.get_current_span()
        if lt.has_valid_context(current):
            env.inject_trace_context(current)
            call.headers.update(env.to_metadata())
            return await self._agent._forward_action(call, timeout)
        with lt.start_current_span(
            lt.SPAN_CALL,
            kind=SpanKind.CLIENT,
            attributes={lt.ATTR_AGENT_ID: self._agent.agent_id, lt.ATTR_CAPABILITY: capability},
        ) as span:
            env.inject_trace_context(span)
            call.headers.update(env.to_metadata())
            return await self._agent._forward_action(call, timeout)

    async def call_json(self, capability: str, args: Payload = None, *, timeout: float = 10.0) -> Any:
        out = await self.call(capability, args, timeout=timeout)
        return json.loads(out) if out else None

    async def tool(
        self,
        name: str,
        *,
        version: str = "1.0",
        payload: Any = None,
        timeout_ms: int = 5000,
        headers: Optional[Mapping[str, str]] = None,
    ) -> bytes:
        """Upstream's capability call: ``payload`` bytes as they are, anything else as JSON;
        returns the output bytes. Failures raise ``ActionError``, which is also the
        ``RuntimeError`` upstream raised. ``headers`` travel with the call (the envelope's own
        keys win); ``version`` travels as ``loom.capability.version`` (the bridge routes by name)."""
        extra = {str(k): str(v) for k, v in (headers or {}).items()}
        extra["loom.capability.version"] = str(version)
        return await self.call(name, _upstream_payload(payload), timeout=max(1, timeout_ms) / 1000.0,
                               headers=extra)


_STATUS_NAMES = {v: k for k, v in pb.ActionStatus.items()}


class Agent:
    """A Loom agent: registers with the bridge, keeps its event stream and heartbeats, and
    reconnects with backoff when the bridge goes away.

    ``on_event(ctx, topic, event)`` (sync or async) runs for every delivery, in order, one at a
    time by default (``handler_concurrency``), inside an ``agent.on_event`` span.

    ``capabilities`` is either this SDK's ``{name: fn(ctx, request)}`` mapping or upstream's list
    of ``@loom.capability`` functions; ``address`` (upstream's name, also accepted as the fourth
    positional argument when it is a string) is ``bridge_addr``.

    A bridge that asks for a bearer token gets ``token`` (else ``LOOM_BRIDGE_TOKEN``) on every
    call. TLS is used for an ``https://`` address or when a certificate file is given:
    ``ca_file`` (``LOOM_BRIDGE_CA_FILE``; the system roots when unset) is the CA the bridge's
    certificate must chain to, ``cert_file``/``key_file`` (``LOOM_BRIDGE_CERT_FILE``,
    ``LOOM_BRIDGE_KEY_FILE``) the agent's own certificate for a bridge with mutual TLS.
    """

    def __init__(
        self,
        agent_id: str,
        topics: Iterable[str] = (),
        capabilities: Optional[Union[Mapping[str, CapabilityFn], Iterable[Callable[..., Any]]]] = None,
        on_event: Optional[Union[Handler, str]] = None,
        *,
        bridge_addr: Optional[str] = None,
        address: Optional[str] = None,
        qos: str = "realtime",
        max_buffered: int = 1000,
        handler_queue: int = 1000,
        handler_concurrency: int = 1,
        ack_timeout: float = 10.0,
        retry: Optional[RetryPolicy] = None,
        metadata: Optional[Mapping[str, str]] = None,
        telemetry: bool = True,
        token: Optional[str] = None,
        ca_file: Optional[str] = None,
        cert_file: Optional[str] = None,
        key_file: Optional[str] = None,
    ) -> None:
        if not agent_id or any(c.isspace() for c in agent_id):
            raise ValueError("agent_id must be a non-empty string without whitespace")
        if qos not in ("realtime", "reliable"):
            raise ValueError("qos must be 'realtime' (drop oldest when slow) or 'reliable' (backpressure)")
        if isinstance(on_event, str):
            # Upstream's positional order is (agent_id, topics, capabilities, address, on_event).
            address, on_event = address or on_event, None
        self.agent_id = agent_id
        if isinstance(topics, str):
            raise ValueError("topics must be a list of topic patterns, not one string")
        self.topics = list(topics)
        for t in self.topics:
            if not isinstance(t, str) or not t:
                raise ValueError(f"topics: {t!r} is not a non-empty topic pattern")
        self._capabilities: Dict[str, CapabilityFn] = {}
        #: Upstream-style capabilities (``@loom.capability`` functions) by name.
        self.capability_specs: Dict[str, CapabilitySpec] = {}
        if isinstance(capabilities, Mapping):
            self._capabilities.update(capabilities)
        elif capabilities is not None:
            for spec in specs_of(capabilities):
                if spec.name in self.capability_specs:
                    raise ValueError(f"capabilities: {spec.name!r} is declared twice")
                self.capability_specs[spec.name] = spec
                self._capabilities[spec.name] = _serve_spec(spec)
        self._on_event = on_event
        self.bridge_addr = bridge_addr or address or os.environ.get("LOOM_BRIDGE_ADDR") or DEFAULT_BRIDGE_ADDR
        self._credentials = BridgeCredentials.resolve(token, ca_file, cert_file, key_file)
        self._call_md = self._credentials.call_metadata()
        self._qos = pb.QOS_RELIABLE if qos == "reliable" else pb.QOS_REALTIME
        self.max_buffered = max(0, max_buffered)
        self._handler_queue_size = max(1, handler_queue)
        self._handler_concurrency = max(1, handler_concurrency)
        self.ack_timeout = ack_timeout
        self.retry = retry or RetryPolicy()
        self._metadata = dict(metadata or {})
        for spec in self.capability_specs.values():
            for key, value in spec.metadata.items():
                self._metadata.setdefault(key, value)
        self.reply_topic = f"{REPLY_TOPIC_PREFIX}{agent_id}"
        self.upstream_reply_topic = upstream_reply_topic(agent_id)
        self.stats = AgentStats()
        self.context = Context(self)
        # Upstream loom-py's names for the agent's own context (its sensor example uses `_ctx`).
        self._ctx = self.context

        self._channel: Optional[grpc.aio.Channel] = None
        self._stub: Optional[pbg.BridgeStub] = None
        self._session_id: Optional[str] = None
        self._outbound: Optional[asyncio.Queue] = None
        self._connected = asyncio.Event()
        self._stopping = False
        self._started = False
        self._main: Optional[asyncio.Task] = None
        self._workers: List[asyncio.Task] = []
        self._side_tasks: set = set()
        self._handler_q: Optional[asyncio.Queue] = None
        self._pending_acks: Dict[str, asyncio.Future] = {}
        self._inflight: Dict[str, "pb.ClientMessage"] = {}
        self._buffer: Deque["pb.ClientMessage"] = collections.deque()
        self._pending_requests: Dict[str, asyncio.Future] = {}
        self._ready: Optional[asyncio.Future] = None

        self.telemetry_provider = lt.auto_init(agent_id) if telemetry else None

    # ----- public API -------------------------------------------------------------------

    def capability(self, name: Optional[str] = None) -> Callable[[CapabilityFn], CapabilityFn]:
        """Decorator registering ``fn(ctx, request)`` as a capability (before ``start``)."""

        def deco(fn: CapabilityFn) -> CapabilityFn:
            if self._started:
                raise RuntimeError("capabilities must be declared before the agent starts")
            self._capabilities[name or fn.__name__] = fn
            return fn

        return deco

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    @property
    def ctx(self) -> Context:
        """The agent's own context (upstream loom-py's ``agent.ctx``): emit outside handlers."""
        return self.context

    async def start(self) -> "Agent":
        """Connects, registers and opens the event stream. Raises ``LoomConnectionError`` when the
        bridge cannot be reached within ``retry.start_attempts`` attempts, and at once
        ``RegistrationRefused`` (a ``LoomConnectionError``) carrying the bridge's message when it
        refuses with a code retrying cannot fix: ALREADY_EXISTS (a live agent holds the id),
        UNAUTHENTICATED or PERMISSION_DENIED."""
        if self._started:
            return self
        target, tls = _target(self.bridge_addr)
        creds = self._credentials
        # Before anything starts, so an unreadable certificate file leaves the agent as it was.
        tls_creds = creds.channel_credentials() if tls or creds.wants_tls else None
        self._started = True
        self._stopping = False
        _exit_cleanly_on_sigterm()
        loop = asyncio.get_running_loop()
        if tls_creds is not None:
            self._channel = grpc.aio.secure_channel(target, tls_creds)
        else:
            self._channel = grpc.aio.insecure_channel(target)
        self._stub = pbg.BridgeStub(self._channel)
        self._handler_q = asyncio.Queue(maxsize=self._handler_queue_size)
        self._workers = [loop.create_task(self._handler_worker(), name=f"loom-{self.agent_id}-handler-{i}") for i in range(self._handler_concurrency)]
        self._ready = loop.create_future()
        self._main = loop.create_task(self._run(), name=f"loom-{self.agent_id}-stream")
        try:
            await self._ready
        except BaseException:
            await self.stop()
            raise
        return self

    async def stop(self, timeout: float = 5.0) -> None:
        """Closes the stream (the bridge deregisters the agent), finishes the handler in progress,
        and flushes telemetry."""
        self._stopping = True
        if self._outbound is not None:
            try:
                self._outbound.put_nowait(None)
            except asyncio.QueueFull:
                pass
        tasks = [t for t in [self._main, *self._workers, *self._side_tasks] if t is not None]
        if self._main is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._main), timeout)
            except (asyncio.TimeoutError, asyncio.CancelledError, Exception):
                pass
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for fut in list(self._pending_acks.values()):
            if not fut.done():
                fut.set_exception(PublishError(14, "agent stopped before the bridge acknowledged the event"))
        self._pending_acks.clear()
        if self._channel is not None:
            await self._channel.close()
        self._connected.clear()
        self._started = False
        await asyncio.get_running_loop().run_in_executor(None, lt.force_flush)

    async def __aenter__(self) -> "Agent":
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def run_forever(self) -> None:
        """Starts (if needed) and runs until cancelled or SIGINT/SIGTERM, then stops cleanly."""
        await self.start()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop.set)
            except (NotImplementedError, RuntimeError):
                pass
        try:
            await stop.wait()
        finally:
            await self.stop()

    def run(self) -> None:
        """Blocking convenience: ``asyncio.run(agent.run_forever())``."""
        asyncio.run(self.run_forever())

    # ----- connection ---------------------------------------------------------------------

    async def _run(self) -> None:
        attempt = 0
        ever_connected = False
        while not self._stopping:
            try:
                call = await self._connect_once()
                ever_connected = True
                attempt = 0
                if self._ready is not None and not self._ready.done():
                    self._ready.set_result(None)
                await self._stream(call)
                if self._stopping:
                    break
                log.warning("agent %s: stream to the bridge ended; reconnecting", self.agent_id)
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                if self._stopping:
                    break
                if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    self._fail_start(ValueError(f"bridge refused the registration: {e.details()}"))
                    return
                if e.code() in FINAL_REFUSALS and not ever_connected:
                    # start() raises at once with the bridge's words; nothing is sent again.
                    self._fail_start(RegistrationRefused(self.agent_id, e.code().name, e.details() or ""))
                    return
                # Once connected, ALREADY_EXISTS is usually this agent's own stale session the
                # bridge has not yet expired, so reconnecting (with backoff) can succeed.
                log.warning("agent %s: bridge %s: %s: %s", self.agent_id, self.bridge_addr, e.code().name, e.details())
            except Exception:  # noqa: BLE001 - keep the agent alive whatever the transport does
                log.exception("agent %s: connection error", self.agent_id)
            finally:
                self._on_disconnect()
            if self._stopping:
                break
            limit = self.retry.start_attempts
            if not ever_connected and limit is not None and attempt + 1 >= limit:
                self._fail_start(LoomConnectionError(
                    f"agent {self.agent_id}: bridge at {self.bridge_addr} unreachable after {attempt + 1} attempts"
                ))
                return
            delay = self.retry.delay(attempt)
            attempt += 1
            if ever_connected:
                self.stats.reconnects += 1
            await asyncio.sleep(delay)

    def _fail_start(self, exc: BaseException) -> None:
        if self._ready is not None and not self._ready.done():
            self._ready.set_exception(exc)
        else:
            log.error("agent %s: %s", self.agent_id, exc)

    async def _connect_once(self) -> "grpc.aio.StreamStreamCall":
        assert self._stub is not None
        subs = [pb.Subscription(pattern=t, qos=self._qos) for t in self.topics]
        subs.append(pb.Subscription(pattern=self.reply_topic, qos=pb.QOS_RELIABLE))
        if self.upstream_reply_topic not in self.topics:
            subs.append(pb.Subscription(pattern=self.upstream_reply_topic, qos=pb.QOS_RELIABLE))
        resp = await self._stub.RegisterAgent(
            pb.RegisterAgentRequest(
                agent_id=self.agent_id,
                subscriptions=subs,
                capabilities=sorted(self._capabilities),
                metadata=self._metadata,
            ),
            timeout=5.0,
            metadata=self._call_md,
        )
        self._session_id = resp.session_id
        outbound: asyncio.Queue = asyncio.Queue(maxsize=1024)
        outbound.put_nowait(pb.ClientMessage(hello=pb.Hello(agent_id=self.agent_id, session_id=resp.session_id)))

        async def requests() -> Any:
            while True:
                m = await outbound.get()
                if m is None:
                    return
                yield m

        call = self._stub.EventStream(requests(), metadata=self._call_md)
        # The bridge answers with headers only once it has read the Hello, attached the stream
        # and subscribed it: until then a publish could find no subscriber here and a capability
        # call would find this agent "not connected".
        await call.initial_metadata()
        if call.done():
            await call.read()  # raises the bridge's refusal; an empty end reads as a disconnect
            raise LoomConnectionError(f"agent {self.agent_id}: the bridge ended the stream at once")
        self._outbound = outbound
        interval = max(0.05, (resp.heartbeat_interval_ms or 5000) / 1000.0)
        hb = asyncio.get_running_loop().create_task(self._heartbeat(call, resp.session_id, interval))
        self._side_tasks.add(hb)
        hb.add_done_callback(self._side_tasks.discard)
        self._connected.set()
        # Resend what was in flight or buffered while disconnected, oldest first.
        pending = list(self._buffer)
        self._buffer.clear()
        self.stats.buffered = 0
        for m in pending:
            self._inflight[m.publish.event.id] = m
            await outbound.put(m)
        if pending:
            log.info("agent %s: resent %d events buffered while disconnected", self.agent_id, len(pending))
        log.info("agent %s: connected to %s", self.agent_id, self.bridge_addr)
        return call

    def _on_disconnect(self) -> None:
        self._connected.clear()
        if self._outbound is not None:
            try:
                self._outbound.put_nowait(None)
            except asyncio.QueueFull:
                pass
        self._outbound = None
        # Unacknowledged publishes go back to the front of the buffer: at-least-once.
        if self._inflight:
            for m in reversed(list(self._inflight.values())):
                self._buffer.appendleft(m)
            self._inflight.clear()
            self._trim_buffer()
        self.stats.buffered = len(self._buffer)

    def _trim_buffer(self) -> None:
        while len(self._buffer) > self.max_buffered:
            dropped = self._buffer.popleft()
            self.stats.dropped_while_disconnected += 1
            fut = self._pending_acks.pop(dropped.publish.event.id, None)
            if fut is not None and not fut.done():
                fut.set_exception(PublishError(8, "dropped: disconnect buffer full", dropped.publish.event.id))
            log.warning(
                "agent %s: disconnected and the buffer (%d) is full: dropped event %s on %s (%d dropped so far)",
                self.agent_id, self.max_buffered, dropped.publish.event.id, dropped.publish.topic,
                self.stats.dropped_while_disconnected,
            )

    async def _heartbeat(self, call: "grpc.aio.StreamStreamCall", session_id: str, interval: float) -> None:
        assert self._stub is not None
        while not call.done():
            await asyncio.sleep(interval)
            try:
                await self._stub.Heartbeat(
                    pb.HeartbeatRequest(agent_id=self.agent_id, session_id=session_id),
                    timeout=max(1.0, interval),
                    metadata=self._call_md,
                )
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.NOT_FOUND:
                    log.warning("agent %s: bridge forgot this session; reconnecting", self.agent_id)
                    call.cancel()
                    return

    async def _stream(self, call: "grpc.aio.StreamStreamCall") -> None:
        async for sm in call:
            kind = sm.WhichOneof("msg")
            if kind == "publish_ack":
                self._on_ack(sm.publish_ack)
            elif kind == "delivery":
                await self._on_delivery(sm.delivery)
            elif kind == "action_call":
                t = asyncio.get_running_loop().create_task(self._serve_action(sm.action_call))
                self._side_tasks.add(t)
                t.add_done_callback(self._side_tasks.discard)

    def _on_ack(self, ack: "pb.PublishAck") -> None:
        self._inflight.pop(ack.event_id, None)
        fut = self._pending_acks.pop(ack.event_id, None)
        if ack.code == _GRPC_OK:
            self.stats.published += 1
        else:
            self.stats.publish_rejected += 1
        if fut is not None and not fut.done():
            fut.set_result(ack)
        elif ack.code != _GRPC_OK:
            log.warning("agent %s: bridge refused event %s (code %d): %s", self.agent_id, ack.event_id, ack.code, ack.message)

    async def _on_delivery(self, d: "pb.Delivery") -> None:
        msg = Event.from_proto(d.topic, d.event)
        self.stats.delivered += 1
        if d.topic == self.upstream_reply_topic and self.upstream_reply_topic in self.topics:
            # Subscribed on purpose: a matching reply resolves its request, the rest are events.
            fut = self._pending_requests.get(msg.envelope.correlation_id or "")
            if fut is not None and not fut.done():
                fut.set_result(msg)
                return
        elif d.topic in (self.reply_topic, self.upstream_reply_topic):
            fut = self._pending_requests.get(msg.envelope.correlation_id or "")
            if fut is not None and not fut.done():
                fut.set_result(msg)
            else:
                log.debug("agent %s: reply %s matches no pending request", self.agent_id, msg.id)
            return
        assert self._handler_q is not None
        await self._handler_q.put(msg)

    # ----- publishing ---------------------------------------------------------------------

    async def _publish(self, topic: str, event: "pb.Event", wait: bool) -> str:
        if not self._started:
            raise RuntimeError("agent is not started: call `await agent.start()` first")
        msg = pb.ClientMessage(publish=pb.Publish(topic=topic, event=event))
        fut: asyncio.Future = asyncio.get_running_loop().create_future()
        self._pending_acks[event.id] = fut
        outbound = self._outbound
        if outbound is None or not self._connected.is_set():
            # Sent on reconnect; a waiting caller gets the ack then (or the ack timeout).
            self._buffer.append(msg)
            self._trim_buffer()
            self.stats.buffered = len(self._buffer)
        else:
            self._inflight[event.id] = msg
            await outbound.put(msg)
        if not wait:
            fut.add_done_callback(_consume)
            return event.id
        try:
            ack = await asyncio.wait_for(asyncio.shield(fut), self.ack_timeout)
        except asyncio.TimeoutError:
            self._pending_acks.pop(event.id, None)
            fut.add_done_callback(_consume)
            raise PublishError(4, f"no acknowledgement within {self.ack_timeout:g}s (still queued for resend)", event.id) from None
        if ack.code != _GRPC_OK:
            raise PublishError(ack.code, ack.message, event.id)
        return event.id

    # ----- handlers and capabilities -------------------------------------------------------

    async def _handler_worker(self) -> None:
        assert self._handler_q is not None
        while True:
            msg = await self._handler_q.get()
            try:
                await self._dispatch(msg)
            finally:
                self._handler_q.task_done()

    async def _dispatch(self, msg: Event) -> None:
        with lt.start_event_span(
            lt.SPAN_ON_EVENT,
            kind=SpanKind.CONSUMER,
            agent_id=self.agent_id,
            topic=msg.topic,
            event_id=msg.id,
            event_type=msg.type,
            env=msg.envelope,
            operation="process",
            envelope=msg.envelope,
            record_exception=False,
        ) as span:
            if self._on_event is None:
                return
            try:
                result = self._on_event(Context(self, msg), msg.topic, msg)
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # noqa: BLE001 - a handler error must not kill the agent
                self.stats.handler_errors += 1
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                log.exception("agent %s: on_event failed for %s on %s", self.agent_id, msg.id, msg.topic)
        if self._outbound is not None:
            try:
                self._outbound.put_nowait(pb.ClientMessage(ack=pb.Ack(event_id=msg.id)))
            except asyncio.QueueFull:
                pass

    async def _serve_action(self, call: "pb.ActionCall") -> None:
        env = Envelope.from_metadata(dict(call.headers))
        fn = self._capabilities.get(call.capability)
        req = ActionRequest(call.capability, call.id, bytes(call.args), call.caller, env)
        result = pb.ActionResult(call_id=call.id)
        with lt.start_current_span(
            lt.SPAN_CAPABILITY,
            envelope=env,
            kind=SpanKind.SERVER,
            attributes={lt.ATTR_AGENT_ID: self.agent_id, lt.ATTR_CAPABILITY: call.capability, "loom.call.id": call.id},
            record_exception=False,
        ) as span:
            if fn is None:
                result.status = pb.ACTION_STATUS_UNKNOWN_CAPABILITY
                result.error = f"agent {self.agent_id} does not serve {call.capability!r}"
            else:
                try:
                    out = fn(Context(self), req)
                    if inspect.isawaitable(out):
                        out = await out
                    result.status = pb.ACTION_STATUS_OK
                    result.output = encode_payload(out)
                except Exception as exc:  # noqa: BLE001
                    span.record_exception(exc)
                    span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
                    log.exception("agent %s: capability %s failed", self.agent_id, call.capability)
                    result.status = pb.ACTION_STATUS_FAILED
                    result.error = f"{type(exc).__name__}: {exc}"
        self.stats.actions_served += 1
        if self._outbound is not None:
            await self._outbound.put(pb.ClientMessage(action_result=result))

    async def _forward_action(self, call: "pb.ActionCall", timeout: float) -> bytes:
        if self._stub is None:
            raise RuntimeError("agent is not started: call `await agent.start()` first")
        try:
            res = await self._stub.ForwardAction(call, timeout=timeout + 2.0, metadata=self._call_md)
        except grpc.aio.AioRpcError as e:
            raise ActionError(e.code().name, e.details() or "", call.capability) from None
        if res.status == pb.ACTION_STATUS_OK:
            return bytes(res.output)
        name = _STATUS_NAMES.get(res.status, str(res.status))
        if res.status == pb.ACTION_STATUS_UNKNOWN_CAPABILITY:
            raise UnknownCapability(name, res.error, call.capability)
        if res.status == pb.ACTION_STATUS_TIMEOUT:
            raise ActionTimeout(name, res.error, call.capability)
        raise ActionError(name, res.error, call.capability)


def _serve_spec(spec: CapabilitySpec) -> CapabilityFn:
    """This SDK's capability shape around an upstream-style one: JSON object in, keyword
    arguments to the function, its result JSON-encoded."""

    async def serve(ctx: Context, request: ActionRequest) -> bytes:
        return await spec.invoke(request.args)

    serve.__name__ = getattr(spec.func, "__name__", spec.name)
    return serve


def _exit_cleanly_on_sigterm() -> None:
    """SIGTERM (how `loom run` and process managers stop an agent) leaves by ``SystemExit``
    instead of the default instant death, so the tracer provider's exit hook still exports the
    last spans. Agents that handle SIGTERM themselves (``run_forever``, ``loop.add_signal_handler``)
    keep their handler: this only replaces the default, from the main thread."""
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return

        def leave(signum: int, _frame: object) -> None:
            raise SystemExit(128 + signum)

        signal.signal(signal.SIGTERM, leave)
    except (ValueError, OSError, AttributeError):
        pass


def _consume(fut: asyncio.Future) -> None:
    """Marks a fire-and-forget future's exception as retrieved (it was already logged)."""
    if not fut.cancelled():
        fut.exception()
