"""Agents through a real loom-bridge: delivery, tracing, request/reply, capabilities, failures."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from typing import List

import pytest
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode

import loom
from loom.agent import Message

from sdk_harness import BridgeProcess, free_port, wait_for

pytestmark = pytest.mark.timeout(60)
FAST = loom.RetryPolicy(initial_s=0.05, max_s=0.3, start_attempts=20)


def by_name(spans, name):
    return [s for s in spans.get_finished_spans() if s.name == name]


def test_emit_is_received_inside_an_on_event_span_parented_by_bridge_forward(bridge, spans) -> None:
    got: List[Message] = []
    seen_span = {}

    async def on_event(ctx, topic, msg):
        seen_span["ctx"] = trace.get_current_span().get_span_context()
        got.append(msg)

    async def scenario():
        b = loom.Agent("b", topics=["sensor.*"], on_event=on_event, bridge_addr=bridge.url, retry=FAST)
        a = loom.Agent("a", bridge_addr=bridge.url, retry=FAST)
        async with b, a:
            event_id = await a.context.emit("sensor.data", {"value": 21.5}, event_type="reading")
            await wait_for(lambda: got, what="delivery")
            return event_id

    event_id = asyncio.run(scenario())
    msg = got[0]
    assert (msg.topic, msg.id, msg.type, msg.json()) == ("sensor.data", event_id, "reading", {"value": 21.5})
    assert msg.envelope.sender == "a"

    emit = by_name(spans, "agent.emit")
    on_event_spans = by_name(spans, "agent.on_event")
    assert len(emit) == 1 and len(on_event_spans) == 1
    emit, consumer = emit[0], on_event_spans[0]
    assert emit.kind == SpanKind.PRODUCER and consumer.kind == SpanKind.CONSUMER
    # One trace; the consumer's parent is the bridge.forward span named by the delivery.
    assert consumer.context.trace_id == emit.context.trace_id
    assert f"{consumer.parent.span_id:016x}" == msg.envelope.span_id
    assert consumer.parent.span_id != emit.context.span_id, "bridge spans sit between them"
    assert consumer.parent.is_remote
    assert seen_span["ctx"].span_id == consumer.context.span_id, "the handler runs inside agent.on_event"
    attrs = consumer.attributes
    assert attrs["loom.agent.id"] == "b"
    assert attrs["loom.topic"] == "sensor.data" and attrs["messaging.destination.name"] == "sensor.data"
    assert attrs["loom.event.id"] == event_id and attrs["messaging.message.id"] == event_id
    assert attrs["loom.event.type"] == "reading" and attrs["messaging.system"] == "loom"
    assert emit.attributes["loom.agent.id"] == "a"


def test_an_active_user_span_is_propagated_without_an_emit_span(bridge, spans) -> None:
    got: List[Message] = []

    async def scenario():
        b = loom.Agent("b2", topics=["t"], on_event=lambda ctx, t, m: got.append(m), bridge_addr=bridge.url, retry=FAST)
        a = loom.Agent("a2", bridge_addr=bridge.url, retry=FAST)
        async with b, a:
            with trace.get_tracer("user").start_as_current_span("sensor.emit_data") as root:
                await a.context.emit("t", "x")
            await wait_for(lambda: got, what="delivery")
            return root.get_span_context()

    root = asyncio.run(scenario())
    assert by_name(spans, "agent.emit") == []
    assert got[0].envelope.trace_id == f"{root.trace_id:032x}"
    consumer = by_name(spans, "agent.on_event")[0]
    assert consumer.context.trace_id == root.trace_id


def test_emits_from_a_handler_continue_the_trace(bridge, spans) -> None:
    out: List[Message] = []

    async def processor(ctx, topic, msg):
        await ctx.emit("processed.data", {"value": msg.json()["value"] * 1.5})

    async def scenario():
        p = loom.Agent("processor", topics=["sensor.data"], on_event=processor, bridge_addr=bridge.url, retry=FAST)
        o = loom.Agent("output", topics=["processed.data"], on_event=lambda c, t, m: out.append(m), bridge_addr=bridge.url, retry=FAST)
        s = loom.Agent("sensor", bridge_addr=bridge.url, retry=FAST)
        async with p, o, s:
            await s.context.emit("sensor.data", {"value": 2})
            await wait_for(lambda: out, what="processed event")

    asyncio.run(scenario())
    assert out[0].json() == {"value": 3.0}
    assert out[0].envelope.hop == 1
    handlers = by_name(spans, "agent.on_event")
    assert len({s.context.trace_id for s in handlers}) == 1 and len(handlers) == 2
    assert by_name(spans, "agent.emit")[0].context.trace_id == handlers[0].context.trace_id


def test_request_reply_and_its_timeout(bridge, spans) -> None:
    async def echo(ctx, topic, msg):
        await ctx.reply(msg, {"echo": msg.json()})

    async def scenario():
        server = loom.Agent("echo", topics=["echo.req"], on_event=echo, bridge_addr=bridge.url, retry=FAST)
        client = loom.Agent("asker", bridge_addr=bridge.url, retry=FAST)
        async with server, client:
            reply = await client.context.request("echo.req", {"q": "hi"}, timeout=5)
            assert reply.json() == {"echo": {"q": "hi"}}
            with pytest.raises(loom.RequestTimeout, match="nobody.home"):
                await client.context.request("nobody.home", "hi", timeout=0.3)

    asyncio.run(scenario())


def test_capability_calls_with_timeouts_and_errors(bridge, spans) -> None:
    math = loom.Agent("math", bridge_addr=bridge.url, retry=FAST)
    parents: List[str] = []

    @math.capability("double")
    async def double(ctx, req):
        parents.append(req.envelope.span_id)
        return req.json() * 2

    @math.capability()
    async def slow(ctx, req):
        await asyncio.sleep(5)

    @math.capability()
    def broken(ctx, req):
        raise RuntimeError("kaput")

    async def scenario():
        caller = loom.Agent("caller", bridge_addr=bridge.url, retry=FAST)
        async with math, caller:
            assert await caller.context.call_json("double", 21, timeout=5) == 42
            with pytest.raises(loom.ActionTimeout):
                await caller.context.call("slow", timeout=0.3)
            with pytest.raises(loom.UnknownCapability):
                await caller.context.call("nope", timeout=2)
            with pytest.raises(loom.ActionError, match="kaput"):
                await caller.context.call("broken", timeout=2)
            assert await caller.context.call_json("double", 5, timeout=5) == 10, "still serving"

    asyncio.run(scenario())
    served = [s for s in by_name(spans, "agent.capability") if s.attributes["loom.capability"] == "double"]
    calls = [s for s in by_name(spans, "agent.call") if s.attributes["loom.capability"] == "double"]
    assert len(served) == 2 and len(calls) == 2
    assert all(s.kind == SpanKind.SERVER for s in served)
    # Each served call continues its caller's trace, parented by the span the call carried.
    assert {s.context.trace_id for s in served} == {c.context.trace_id for c in calls}
    assert {f"{s.parent.span_id:016x}" for s in served} == set(parents)
    assert all(s.parent.span_id != c.context.span_id for s in served for c in calls), "bridge/broker spans in between"
    broken_span = [s for s in by_name(spans, "agent.capability") if s.attributes["loom.capability"] == "broken"][0]
    assert broken_span.status.status_code == StatusCode.ERROR


def test_handler_exceptions_are_recorded_and_the_agent_survives(bridge, spans) -> None:
    handled: List[str] = []

    def on_event(ctx, topic, msg):
        if msg.text() == "boom":
            raise ValueError("bad reading")
        handled.append(msg.text())

    async def scenario():
        b = loom.Agent("fragile", topics=["t"], on_event=on_event, bridge_addr=bridge.url, retry=FAST)
        a = loom.Agent("pusher", bridge_addr=bridge.url, retry=FAST)
        async with b, a:
            await a.context.emit("t", "boom")
            await a.context.emit("t", "fine")
            await wait_for(lambda: handled == ["fine"], what="the next event after the failure")
            return b.stats.handler_errors

    assert asyncio.run(scenario()) == 1
    failed = [s for s in by_name(spans, "agent.on_event") if s.status.status_code == StatusCode.ERROR]
    assert len(failed) == 1
    assert "ValueError: bad reading" in failed[0].status.description
    ev = [e for e in failed[0].events if e.name == "exception"]
    assert ev and ev[0].attributes["exception.type"] == "ValueError"


def test_agent_reconnects_after_a_bridge_restart_and_buffers_meanwhile(spans) -> None:
    port = free_port()
    first = BridgeProcess(port=port).start()
    got: List[str] = []
    url = f"http://127.0.0.1:{port}"

    async def scenario():
        nonlocal first
        b = loom.Agent("rb", topics=["t"], on_event=lambda c, t, m: got.append(m.text()), bridge_addr=url, retry=FAST)
        a = loom.Agent("ra", bridge_addr=url, retry=FAST, max_buffered=3)
        async with b, a:
            await a.context.emit("t", "before")
            await wait_for(lambda: got == ["before"], what="first delivery")
            first.stop()
            await wait_for(lambda: not a.connected and not b.connected, what="disconnect noticed")
            # Five events while down, room for three: two dropped, counted, never silent.
            for i in range(5):
                await a.context.emit("t", f"down-{i}", wait=False)
            assert a.stats.dropped_while_disconnected == 2
            second = BridgeProcess(port=port).start()
            try:
                await wait_for(lambda: a.connected and b.connected, timeout=20, what="reconnect")
                await a.context.emit("t", "after")
                await wait_for(lambda: "after" in got, what="delivery after restart")
                return a.stats.reconnects, second
            except BaseException:
                second.stop()
                raise

    try:
        reconnects, second = asyncio.run(scenario())
        second.stop()
    finally:
        first.stop()
    assert reconnects >= 1
    assert got[0] == "before" and got[-1] == "after"
    # The buffered events that fit were sent after the reconnect; b may have re-subscribed
    # slightly after a's resend, so each is delivered at most once.
    assert set(got[1:-1]) <= {"down-2", "down-3", "down-4"}


def test_bridge_unreachable_at_start_fails_clearly_after_the_retry_budget() -> None:
    port = free_port()

    async def scenario():
        a = loom.Agent("lonely", bridge_addr=f"http://127.0.0.1:{port}",
                       retry=loom.RetryPolicy(initial_s=0.02, max_s=0.05, start_attempts=3))
        t0 = time.monotonic()
        with pytest.raises(loom.LoomConnectionError, match="unreachable after 3 attempts"):
            await a.start()
        return time.monotonic() - t0

    assert asyncio.run(scenario()) < 20


def test_invalid_topic_and_oversized_payload_are_refused(bridge) -> None:
    async def scenario():
        a = loom.Agent("picky", bridge_addr=bridge.url, retry=FAST)
        async with a:
            with pytest.raises(ValueError, match="topic"):
                await a.context.emit("", "x")
            with pytest.raises(loom.PublishError) as bad_topic:
                await a.context.emit("has space", "x")
            assert bad_topic.value.code == 3
            with pytest.raises(loom.PublishError) as too_big:
                await a.context.emit("t", b"x" * 100_000)
            assert too_big.value.code == 8 and "65536" in too_big.value.message
            await a.context.emit("t", "still fine")
        with pytest.raises(ValueError, match="agent_id"):
            loom.Agent("bad id")
        with pytest.raises(ValueError, match="topics"):
            loom.Agent("x", topics=[""])

    asyncio.run(scenario())


def test_malformed_traceparent_in_a_delivery_is_handled_as_no_parent(spans) -> None:
    handled = []

    async def scenario():
        a = loom.Agent("parser", on_event=lambda c, t, m: handled.append(m), telemetry=False)
        msg = Message.from_proto("t", loom.v1.loom_pb2.Event(id="e1", metadata={"traceparent": "00-garbage-01"}))
        await a._dispatch(msg)

    import loom.v1.loom_pb2  # noqa: F401

    asyncio.run(scenario())
    assert len(handled) == 1
    span = by_name(spans, "agent.on_event")[0]
    assert span.parent is None, "a root span: the garbage context is ignored"


AUTO_SCRIPT = """
import os, sys
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
import loom
loom.Agent("auto-x")
p = trace.get_tracer_provider()
print("TracerProvider" if isinstance(p, TracerProvider) else type(p).__name__, getattr(p, "resource", None) and p.resource.attributes.get("service.name"),
      getattr(p, "resource", None) and p.resource.attributes.get("loom.agent.id"))
"""


@pytest.mark.parametrize("auto,expect", [("0", "ProxyTracerProvider None None"), ("1", "TracerProvider agent-auto-x auto-x")])
def test_loom_telemetry_auto(auto: str, expect: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    env["LOOM_TELEMETRY_AUTO"] = auto
    out = subprocess.run([sys.executable, "-c", AUTO_SCRIPT], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == expect


def test_unknown_sampler_name_is_a_clear_error() -> None:
    with pytest.raises(loom.tracing.TelemetryConfigError, match="OTEL_TRACE_SAMPLER='sometimes'.*parentbased_traceidratio"):
        loom.tracing.sampler_from_env({"OTEL_TRACE_SAMPLER": "sometimes"})
    s = loom.tracing.sampler_from_env({"OTEL_TRACE_SAMPLER": "always_off", "OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "0.25"})
    assert "0.25" in s.get_description()
    assert "ParentBased" in loom.tracing.sampler_from_env({}).get_description()
