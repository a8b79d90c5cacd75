"""Upstream loom-py's API shapes on this SDK, through a real loom-bridge: upstream-style agents
(`Agent(agent_id, topics, capabilities=[fn], address=…)`, `(ctx, topic, event)` handlers,
`ctx.emit/request/reply/tool` with upstream's keywords) beside native ones, in one trace; and
events that carry only upstream's bare trace keys continuing their trace across the bridge."""

from __future__ import annotations

import asyncio
import json
import re
import time
import uuid
from typing import Any, Dict, List, Optional

import pytest
from opentelemetry import trace

import loom
from loom.v1 import loom_pb2 as pb

from sdk_harness import wait_for

pytestmark = pytest.mark.timeout(60)
FAST = loom.RetryPolicy(initial_s=0.05, max_s=0.3, start_attempts=20)
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SPAN = "00f067aa0ba902b7"


# ----- the shapes, without a bridge ---------------------------------------------------------------


def test_capability_decorator_derives_the_schema_and_checks_keyword_arguments() -> None:
    @loom.capability("weather.get", version="2.1")
    async def get_weather(city: str, days: int = 1, detailed: bool = False) -> dict:
        return {"city": city, "days": days}

    spec = get_weather.__loom_capability__
    assert isinstance(spec, loom.CapabilitySpec)
    assert (spec.name, spec.version) == ("weather.get", "2.1")
    assert spec.input_schema == {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}, "detailed": {"type": "boolean"}},
        "required": ["city"],
        "additionalProperties": False,
    }
    assert json.loads(spec.metadata["capability.weather.get.input_schema"]) == spec.input_schema
    assert asyncio.run(spec.invoke(b'{"city":"Oslo","days":3}')) == b'{"city":"Oslo","days":3}'

    @loom.capability("opt")
    def opt(n: Optional[int] = None, m: int = 0) -> None:
        return None

    assert opt.__loom_capability__.bind(b'{"n": null}') == {"n": None}
    assert asyncio.run(opt.__loom_capability__.invoke(b"")) == b""
    with pytest.raises(ValueError, match="m must be integer"):
        opt.__loom_capability__.bind(b'{"m": null}')
    for raw, problem in [
        (b"{}", "missing argument(s) city"),
        (b'{"city":"x","days":"3"}', "days must be integer"),
        (b'{"city":"x","days":true}', "days must be integer"),
        (b'{"city":"x","color":"red"}', "unknown argument(s) color"),
        (b"[1,2]", "must be a JSON object"),
        (b"\xff\xfe", "not JSON"),
        (b"{not json", "not JSON"),
    ]:
        with pytest.raises(ValueError, match=re.escape(problem)):
            spec.bind(raw)


def test_agent_accepts_upstreams_constructor_and_refuses_undecorated_capabilities() -> None:
    @loom.capability("echo")
    def echo(text: str) -> str:
        return text

    async def handler(ctx, topic, event):
        return None

    a = loom.Agent("up", ["t"], [echo], "127.0.0.1:1", telemetry=False)
    assert a.bridge_addr == "127.0.0.1:1" and a._on_event is None
    b = loom.Agent(agent_id="up2", topics=["t"], capabilities=[echo], address="127.0.0.1:2", on_event=handler,
                   telemetry=False)
    assert b.bridge_addr == "127.0.0.1:2" and b._on_event is handler
    assert set(b.capability_specs) == {"echo"} and "echo" in b._capabilities
    assert b._ctx is b.ctx is b.context
    # This SDK's own mapping shape is unchanged.
    c = loom.Agent("native", capabilities={"x": lambda ctx, req: b""}, telemetry=False)
    assert set(c._capabilities) == {"x"} and not c.capability_specs

    def plain(text: str) -> str:
        return text

    with pytest.raises(TypeError, match="'plain' is not decorated with @loom.capability"):
        loom.Agent("bad", [], [plain], telemetry=False)
    with pytest.raises(ValueError, match="declared twice"):
        loom.Agent("dup", [], [echo, echo], telemetry=False)
    with pytest.raises(ValueError, match="not one string"):
        loom.Agent("str", "sensor.data", telemetry=False)


def test_errors_are_also_the_builtin_types_upstream_raised() -> None:
    assert isinstance(loom.RequestTimeout("x"), asyncio.TimeoutError)
    assert isinstance(loom.ActionError("FAILED", "x"), RuntimeError)
    assert isinstance(loom.UnknownCapability("UNKNOWN", "x"), RuntimeError)


def test_python_envelope_reads_upstreams_bare_keys_and_writes_w3c_only() -> None:
    env = loom.Envelope.from_metadata({"trace_id": TRACE, "span_id": SPAN, "trace_flags": "01", "sender": "legacy",
                                       "reply_to": "agent.legacy.replies", "correlation_id": "c-1"})
    assert env.traceparent == f"00-{TRACE}-{SPAN}-01"
    assert (env.sender, env.reply_to, env.correlation_id) == ("legacy", "agent.legacy.replies", "c-1")
    sc = env.extract_trace_context()
    assert sc is not None and f"{sc.trace_id:032x}" == TRACE and sc.trace_flags.sampled
    md = env.to_metadata()
    assert md["traceparent"] == f"00-{TRACE}-{SPAN}-01" and "trace_id" not in md and md["loom.sender"] == "legacy"
    for bad in ({"trace_id": TRACE.upper(), "span_id": SPAN}, {"trace_id": "0" * 32, "span_id": SPAN},
                {"trace_id": TRACE, "span_id": SPAN, "trace_flags": "1"}, {"trace_id": TRACE},
                {"traceparent": "garbage", "trace_id": TRACE, "span_id": SPAN}):
        assert loom.Envelope.from_metadata(bad).traceparent is None, bad


# ----- through a real bridge ------------------------------------------------------------------------


def test_upstream_style_handler_gets_upstreams_event_fields_and_emits_with_its_keywords(bridge, spans) -> None:
    got: List[Any] = []
    inside: Dict[str, Any] = {}

    async def processor(ctx, topic: str, event) -> None:
        inside["span"] = trace.get_current_span().get_span_context()
        data = json.loads(event.payload.decode("utf-8"))
        await ctx.emit("out.data", type="processed", payload=json.dumps({"v": data["v"] * 2}).encode(),
                       envelope=loom.Envelope(thread_id="th-9", correlation_id="c-9"))

    async def sink(ctx, topic, event):
        got.append(event)

    async def scenario() -> str:
        addr = bridge.url[len("http://"):]  # upstream passes host:port
        proc = loom.Agent(agent_id="proc-agent", topics=["in.data"], on_event=processor, address=addr)
        out = loom.Agent(agent_id="out-agent", topics=["out.data"], on_event=sink, address=addr)
        src = loom.Agent(agent_id="src-agent", topics=[], on_event=None, address=addr)
        for a in (proc, out, src):
            a.retry = FAST
            await a.start()
        try:
            with trace.get_tracer("test").start_as_current_span("src.root") as root:
                await src._ctx.emit("in.data", type="reading", payload=b'{"v": 21}')
                tid = format(root.get_span_context().trace_id, "032x")
            await wait_for(lambda: got, what="the processed event")
            return tid
        finally:
            for a in (src, out, proc):
                await a.stop()

    tid = asyncio.run(scenario())
    event = got[0]
    assert isinstance(event, loom.Event) and isinstance(event, loom.Message)
    assert (event.type, event.payload, event.json()) == ("processed", b'{"v": 42}', {"v": 42})
    assert event.sender == "proc-agent" and event.source == "proc-agent"
    assert event.trace_id == tid and len(event.span_id or "") == 16
    # Two hex digits as upstream reports them; sampled (the bridge may add W3C's random-id bit).
    assert re.fullmatch(r"[0-9a-f]{2}", event.trace_flags or "") and int(event.trace_flags, 16) & 1
    assert (event.thread_id, event.correlation_id, event.reply_to) == ("th-9", "c-9", None), "envelope= lent them"
    assert event.metadata["traceparent"] == f"00-{event.trace_id}-{event.span_id}-{event.trace_flags}"
    assert event.timestamp_ms > 0 and event.envelope.sender == "proc-agent"
    assert f"{inside['span'].trace_id:032x}" == tid
    on_event = [s for s in spans.get_finished_spans() if s.name == "agent.on_event"]
    assert {f"{s.context.trace_id:032x}" for s in on_event} == {tid}


def test_mixed_upstream_and_native_agents_request_reply_and_call_capabilities_in_one_trace(bridge, spans) -> None:
    @loom.capability("upstream.double", version="2.0")
    def double(x: int, note: str = "") -> dict:
        return {"y": 2 * x, "note": note}

    async def upstream_handler(ctx, topic: str, event) -> None:
        n = json.loads(event.payload)["n"]
        # Upstream's reply shape: reply(original, *, type, payload).
        await ctx.reply(event, type="answer", payload=json.dumps({"from": "up", "n": n + 1}).encode())

    async def native_triple(ctx: loom.Context, req: loom.ActionRequest) -> Any:
        return {"z": 3 * req.json()["n"], "caller": req.caller}

    async def native_handler(ctx: loom.Context, topic: str, msg: loom.Message) -> None:
        if topic == "ask.legacy":
            # What a replier of upstream's SDK does with a request that names no reply_to: answer on
            # the sender's agent.{sender}.replies with the request's correlation id.
            await ctx.emit(f"agent.{msg.envelope.sender}.replies", {"legacy": True},
                           correlation_id=msg.envelope.correlation_id)
            return
        await ctx.reply(msg, {"from": "native", "n": msg.json()["n"] + 1})

    results: Dict[str, Any] = {}

    async def scenario() -> str:
        up = loom.Agent("up", ["ask.up"], capabilities=[double], address=bridge.url, on_event=upstream_handler)
        nat = loom.Agent("nat", topics=["ask.nat", "ask.legacy"], capabilities={"native.triple": native_triple},
                         on_event=native_handler, bridge_addr=bridge.url, retry=FAST)
        up.retry = FAST
        # Subscribers first: a publish right after start() can precede the bridge's subscription.
        async with nat, up:
            with trace.get_tracer("test").start_as_current_span("mixed.root") as root:
                reply = await up.ctx.request("ask.nat", type="question", payload=b'{"n": 1}', timeout_ms=5000)
                results["up→nat reply"] = (reply.json(), reply.sender, reply.type)
                results["up→nat tool"] = json.loads(await up.ctx.tool("native.triple", payload={"n": 2},
                                                                       timeout_ms=5000))
                r2 = await nat.context.request("ask.up", {"n": 10}, timeout=5)
                results["nat→up reply"] = (r2.json(), r2.type, r2.envelope.sender)
                results["nat→up call"] = json.loads(await nat.context.call("upstream.double", {"x": 5}))
                r3 = await up.ctx.request("ask.legacy", type="q", payload=b"{}", timeout_ms=5000)
                results["legacy reply"] = r3.json()
                with pytest.raises(loom.ActionError, match="x must be integer") as bad:
                    await nat.context.call("upstream.double", {"x": "five"})
                results["bad call is RuntimeError"] = isinstance(bad.value, RuntimeError)
                with pytest.raises(asyncio.TimeoutError):
                    await up.ctx.request("nobody.listens", type="q", payload=b"", timeout_ms=200)
                return format(root.get_span_context().trace_id, "032x")

    tid = asyncio.run(scenario())
    assert results["up→nat reply"] == ({"from": "native", "n": 2}, "nat", "")
    assert results["up→nat tool"] == {"z": 6, "caller": "up"}
    assert results["nat→up reply"] == ({"from": "up", "n": 11}, "answer", "up")
    assert results["nat→up call"] == {"y": 10, "note": ""}
    assert results["legacy reply"] == {"legacy": True}
    assert results["bad call is RuntimeError"]
    finished = spans.get_finished_spans()
    names = [s.name for s in finished]
    for name in ("agent.on_event", "agent.capability"):
        assert name in names
    # Every span either side made belongs to the one trace the root opened.
    assert {f"{s.context.trace_id:032x}" for s in finished} == {tid}
    served = {s.attributes["loom.capability"]: s for s in finished if s.name == "agent.capability"}
    assert set(served) >= {"native.triple", "upstream.double"}
    assert served["upstream.double"].attributes["loom.agent.id"] == "up"
    assert all(s.parent is not None and s.parent.is_remote for s in served.values()), "parent came over the wire"


def test_an_event_with_only_upstreams_bare_trace_keys_continues_its_trace_through_the_bridge(bridge, spans) -> None:
    got: List[Any] = []

    async def sink(ctx, topic, event):
        got.append((event, trace.get_current_span().get_span_context()))

    async def scenario() -> None:
        sink_agent = loom.Agent("sink", topics=["legacy.*"], on_event=sink, bridge_addr=bridge.url, retry=FAST)
        sender = loom.Agent("raw", bridge_addr=bridge.url, retry=FAST)
        async with sink_agent, sender:
            await asyncio.sleep(0.3)
            for topic, md in [
                # Upstream's writer: bare keys only, no traceparent.
                ("legacy.valid", {"trace_id": TRACE, "span_id": SPAN, "trace_flags": "01", "sender": "legacy-agent"}),
                # Invalid bare keys are ignored: the event flows and starts a new trace.
                ("legacy.invalid", {"trace_id": TRACE.upper(), "span_id": SPAN, "trace_flags": "01"}),
            ]:
                ev = pb.Event(id=str(uuid.uuid4()), type="reading", topic=topic, payload=b"{}", metadata=md,
                              timestamp_unix_nano=time.time_ns())
                # The raw publish path, as a client that is not this SDK would use it.
                await sender._publish(topic, ev, True)
            await wait_for(lambda: len(got) == 2, what="both deliveries")

    asyncio.run(scenario())
    by_topic = {e.topic: (e, sc) for e, sc in got}
    event, sc = by_topic["legacy.valid"]
    assert f"{sc.trace_id:032x}" == TRACE, "the bridge took the bare keys as the parent"
    assert event.trace_id == TRACE and event.span_id != SPAN, "bridge spans sit between"
    # The bridge stamps loom.sender with the publishing session's agent, which wins over a bare key.
    assert event.sender == "raw" and event.metadata["sender"] == "legacy-agent"
    consumer = [s for s in spans.get_finished_spans() if s.name == "agent.on_event"
                and s.attributes.get("loom.topic") == "legacy.valid"]
    assert len(consumer) == 1 and f"{consumer[0].context.trace_id:032x}" == TRACE
    invalid, isc = by_topic["legacy.invalid"]
    assert f"{isc.trace_id:032x}" != TRACE and invalid.trace_id not in (None, TRACE)


def test_reply_without_reply_to_goes_to_the_senders_upstream_reply_topic(bridge, spans) -> None:
    got: List[Any] = []

    async def asker_events(ctx, topic, event):
        got.append((topic, event))

    async def answerer(ctx, topic, event):
        # Upstream's reply: no reply_to on the request → agent.{sender}.replies; no correlation
        # id → the request's own event id.
        await ctx.reply(event, type="answer", payload=b"ok")

    async def scenario() -> List[str]:
        b = loom.Agent(agent_id="b", topics=["ask.b"], on_event=answerer, address=bridge.url)
        # Listing agent.a.replies in its own topics hands unmatched replies to on_event.
        a = loom.Agent(agent_id="a", topics=["agent.a.replies"], on_event=asker_events, address=bridge.url)
        for x in (b, a):
            x.retry = FAST
        async with b, a:
            await asyncio.sleep(0.2)
            first = await a.ctx.emit("ask.b", type="q", payload=b"", envelope=loom.Envelope(correlation_id="c-42"))
            second = await a.ctx.emit("ask.b", type="q", payload=b"")
            await wait_for(lambda: len(got) == 2, what="both replies")
            return [first, second]

    first, second = asyncio.run(scenario())
    by_corr = {e.correlation_id: (topic, e) for topic, e in got}
    assert set(by_corr) == {"c-42", second}, "the second request is matched by its event id"
    for topic, e in by_corr.values():
        assert (topic, e.type, e.payload, e.sender) == ("agent.a.replies", "answer", b"ok", "b")
    assert first not in by_corr
