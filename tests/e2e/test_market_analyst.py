"""End to end: examples/market-analyst (data → trend ∥ risk ∥ sentiment → planner → executor, plus
the OpenAI stand-in) through the real sidecar and bridge, started by the same runner as `loom run`;
spans read back from the sidecar's file exporter."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Dict, Iterator, List

import pytest

import loom
from loom._runner import free_port
from loom._traces import Span
from e2e_harness import MARKET_PROJECT, AgentEnv, Run, project_runs, settle, span_extras, wait_until

pytestmark = pytest.mark.timeout(120)

MODEL = "standin-planner"
ANALYSTS = ("trend", "risk", "sentiment")
ERROR = 2


@pytest.fixture
def start_market(tmp_path: Path) -> Iterator[Callable[..., Run]]:
    """Starts the demo on free ports (bridge, sidecar, and the stand-in LLM)."""

    def standin_env() -> AgentEnv:
        port = free_port()
        return {
            "llm-standin": {"STANDIN_PORT": str(port), "STANDIN_LATENCY_MS": "30,120"},
            "planner": {"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1", "OPENAI_API_KEY": "",
                        "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": ""},
        }

    with project_runs(MARKET_PROJECT, tmp_path / "spans.jsonl", standin_env) as start:
        yield start


class BusClient:
    """A plain Loom agent inside the test (no telemetry): records plan.ready and can publish."""

    def __init__(self, bridge_address: str, topics: List[str]) -> None:
        self.plans: List[dict] = []
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="e2e-bus", daemon=True)
        self.thread.start()

        def on_event(ctx: loom.Context, topic: str, msg: loom.Message) -> None:
            self.plans.append(msg.json())

        self.agent = loom.Agent("e2e-observer", topics=topics, on_event=on_event,
                                bridge_addr=f"http://{bridge_address}", telemetry=False)
        self._call(self.agent.start(), 30)

    def _call(self, coro, timeout: float):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def emit(self, topic: str, payload: dict) -> None:
        self._call(self.agent.context.emit(topic, payload, event_type=topic), 10)

    def close(self) -> None:
        try:
            self._call(self.agent.stop(), 15)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)


# ----- what a tick's trace must look like ------------------------------------------------------


def data_trace_ids(run: Run) -> List[str]:
    return [m.group(1) for m in run.logged("data", r"tick=\S+ price=\S+ trace_id=([0-9a-f]{32})")]


def analysis_spans(spans: List[Span]) -> Dict[str, List[Span]]:
    out: Dict[str, List[Span]] = {}
    for s in spans:
        kind = s.service[len("agent-"):]
        if s.name == "agent.on_event" and kind in ANALYSTS and str(s.attributes.get("loom.topic", "")).startswith("market.price."):
            out.setdefault(kind, []).append(s)
    return out


def ancestors(span: Span, by_id: Dict[str, Span]) -> List[str]:
    out, node = [], span
    while node.parent_span_id and node.parent_span_id in by_id and len(out) < 100:
        node = by_id[node.parent_span_id]
        out.append(node.span_id)
    return out


def llm_problems(llm: Span, plan: Span) -> List[str]:
    problems = []
    a = llm.attributes
    if llm.name != f"chat {MODEL}" or llm.kind_name != "CLIENT":
        problems.append(f"LLM span is {llm.name} [{llm.kind_name}]")
    if llm.parent_span_id != plan.span_id:
        problems.append("LLM span is not a child of planner.make_plan")
    want = {"gen_ai.operation.name": "chat", "gen_ai.provider.name": "openai", "gen_ai.request.model": MODEL}
    for k, v in want.items():
        if a.get(k) != v:
            problems.append(f"LLM span {k}={a.get(k)!r}, expected {v!r}")
    if llm.status_code != ERROR:
        for k in ("gen_ai.usage.input_tokens", "gen_ai.usage.output_tokens"):
            if not isinstance(a.get(k), int) or a[k] <= 0:
                problems.append(f"LLM span {k}={a.get(k)!r}")
        if a.get("gen_ai.response.finish_reasons") != ["stop"]:
            problems.append(f"LLM span finish_reasons={a.get('gen_ai.response.finish_reasons')!r}")
    # Message content is off unless OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true.
    for k in ("gen_ai.input.messages", "gen_ai.output.messages"):
        if k in a:
            problems.append(f"LLM span records {k} without the opt-in")
    return problems


def tick_problems(spans: List[Span], extras: Dict[str, dict], analysts=ANALYSTS) -> List[str]:
    """Everything wrong with one tick's trace (empty list: complete)."""
    problems: List[str] = []
    by_id = {s.span_id: s for s in spans}
    roots = [s for s in spans if not s.parent_span_id]
    if [r.name for r in roots] != ["data.tick"]:
        problems.append(f"roots: {[r.name for r in roots]}")
    orphans = [s.name for s in spans if s.parent_span_id and s.parent_span_id not in by_id]
    if orphans:
        problems.append(f"orphans: {orphans}")
    services = {s.service for s in spans}
    want_services = {f"agent-{n}" for n in ("data", *analysts, "planner", "executor")} | {"loom-bridge"}
    if not want_services <= services:
        problems.append(f"services missing: {sorted(want_services - services)}")
    if len(spans) < 15:
        problems.append(f"{len(spans)} spans (< 15)")
    found = analysis_spans(spans)
    if sorted(found) != sorted(analysts) or any(len(v) != 1 for v in found.values()):
        return problems + [f"analysis spans: { {k: len(v) for k, v in found.items()} }"]
    analysis = {k: v[0] for k, v in found.items()}
    # Parallel branches: each analysis under its own bridge.forward, all forwards siblings under
    # the tick's one event_bus.publish.
    forwards = [by_id.get(a.parent_span_id) for a in analysis.values()]
    if any(f is None or f.name != "bridge.forward" for f in forwards):
        problems.append("an analysis span is not under a bridge.forward")
    else:
        fanout = {f.parent_span_id for f in forwards}
        if len({f.span_id for f in forwards}) != len(forwards) or len(fanout) != 1 or by_id.get(fanout.pop(), roots[0]).name != "event_bus.publish":
            problems.append("analysis branches do not fan out from one event_bus.publish")
    if len(analysis) > 1 and max(a.start_ns for a in analysis.values()) >= min(a.end_ns for a in analysis.values()):
        problems.append("analysis spans do not overlap in time")
    plans = [s for s in spans if s.name == "planner.make_plan"]
    if len(plans) != 1:
        return problems + [f"{len(plans)} planner.make_plan spans"]
    plan = plans[0]
    links = extras.get(plan.span_id, {}).get("links", [])
    got = sorted((l["span_id"], l["trace_id"], l["attributes"].get("market.analysis")) for l in links)
    want = sorted((a.span_id, a.trace_id, k) for k, a in analysis.items())
    if got != want:
        problems.append(f"plan links {got} != analysis spans {want}")
    llms = [s for s in spans if s.parent_span_id == plan.span_id and s.kind_name == "CLIENT"]
    if len(llms) != 1:
        problems.append(f"{len(llms)} LLM spans under the plan")
    else:
        problems += llm_problems(llms[0], plan)
    execs = [s for s in spans if s.name == "agent.on_event" and s.service == "agent-executor"]
    if len(execs) != 1 or plan.span_id not in ancestors(execs[0], by_id):
        problems.append(f"{len(execs)} executor spans, or not under the plan")
    return problems


def plan_spans(run: Run) -> List[Span]:
    return sorted((s for v in run.traces().values() for s in v if s.name == "planner.make_plan"), key=lambda s: s.start_ns)


def quiesce(run: Run) -> None:
    """Stops the ticks and waits until the last one's spans are in (the planner's timeout included)."""
    run.runner.stop_agent("data")
    settle(run, quiet=2.5)


def executed(run: Run) -> List[str]:
    return [m.group(1) for m in run.logged("executor", r"executed plan_id=(\S+)")]


# ----- the demo -------------------------------------------------------------------------------


def test_every_tick_is_one_fan_out_fan_in_trace(start_market) -> None:
    secret = f"sk-e2e-{uuid.uuid4().hex}"
    run = start_market({"data": {"DATA_COUNT": "3", "DATA_INTERVAL_S": "0.5"},
                        "planner": {"PLANNER_DEDUPE_WINDOW_S": "0", "OPENAI_API_KEY": secret}})
    wait_until(lambda: len(executed(run)) >= 6, 60, "6 executed plans (3 rounds × 2 symbols)")
    settle(run)
    ticks = data_trace_ids(run)
    assert len(ticks) == 6
    traces = run.traces()
    assert set(traces) == set(ticks), "one trace per tick, nothing else"
    extras = span_extras(run.trace_file)
    for tid in ticks:
        assert tick_problems(traces[tid], extras) == [], f"trace {tid}"
        plan = next(s for s in traces[tid] if s.name == "planner.make_plan")
        assert plan.attributes["market.plan.complete"] is True
        assert plan.attributes["market.plan.source"] == "llm"
        assert not extras[plan.span_id]["events"], "no fallback, no duplicate"
    assert len(set(executed(run))) == 6
    # The API key reached the endpoint but no span, log line or runner output.
    assert secret not in run.trace_file.read_text(encoding="utf-8")
    assert not [line for line in list(run.lines) if secret in line]


def test_a_stopped_analyst_still_gives_plans_on_time_with_two_links(start_market) -> None:
    run = start_market({"data": {"DATA_INTERVAL_S": "0.5"},
                        "planner": {"PLANNER_TIMEOUT_S": "1", "PLANNER_DEDUPE_WINDOW_S": "0"}})
    wait_until(lambda: len(executed(run)) >= 2, 60, "2 executed plans before the stop")
    run.runner.stop_agent("sentiment")
    stopped_ns = time.time_ns()

    def after_stop() -> List[Span]:
        return [s for s in plan_spans(run) if s.start_ns > stopped_ns + 1_500_000_000]

    wait_until(lambda: len(after_stop()) >= 3, 30, "3 plans after sentiment stopped")
    quiesce(run)
    traces = run.traces()
    extras = span_extras(run.trace_file)
    for plan in after_stop()[:3]:
        spans = traces[plan.trace_id]
        assert tick_problems(spans, extras, analysts=("trend", "risk")) == [], f"trace {plan.trace_id}"
        assert plan.attributes["market.plan.complete"] is False
        assert plan.attributes["market.plan.missing"] == ["sentiment"]
        assert {l["attributes"]["market.analysis"] for l in extras[plan.span_id]["links"]} == {"trend", "risk"}
        # On time: the planner waited its 1 s for sentiment, then planned.
        assert 900 <= plan.attributes["market.plan.wait_ms"] <= 1500
        root = next(s for s in spans if s.name == "data.tick")
        assert plan.start_ns - root.start_ns < 2_500_000_000


def test_llm_failures_fall_back_to_rules(start_market) -> None:
    run = start_market({"data": {"DATA_INTERVAL_S": "0.4"}, "planner": {"PLANNER_DEDUPE_WINDOW_S": "0"},
                        "llm-standin": {"STANDIN_MODE": "non_json"}})

    def fallbacks(marker: str) -> List[Span]:
        extras = span_extras(run.trace_file)
        return [p for p in plan_spans(run)
                if any(e["name"] == "llm_fallback" and marker in str(e["attributes"].get("reason"))
                       for e in extras.get(p.span_id, {}).get("events", []))]

    phases = [("non_json", "JSONDecodeError", True), ("garbage", "answer is not JSON", False),
              ("down", "APIConnectionError", True)]
    for mode, marker, llm_error in phases:
        if mode == "garbage":
            run.runner.stop_agent("llm-standin")
            run.runner.agent_env["llm-standin"]["STANDIN_MODE"] = "garbage"
            run.runner.start_agent("llm-standin")
        elif mode == "down":
            run.runner.stop_agent("llm-standin")
        wait_until(lambda: len(fallbacks(marker)) >= 2, 30, f"2 fallback plans with the endpoint {mode}")
    quiesce(run)
    traces = run.traces()
    for mode, marker, llm_error in phases:
        for plan in fallbacks(marker)[:2]:
            spans = traces[plan.trace_id]
            assert plan.attributes["market.plan.source"] == "rules", mode
            assert plan.attributes["market.plan.action"] in ("BUY", "SELL", "HOLD")
            llm = [s for s in spans if s.parent_span_id == plan.span_id and s.kind_name == "CLIENT"]
            assert len(llm) == 1, mode
            assert (llm[0].status_code == ERROR) is llm_error, f"{mode}: LLM span status {llm[0].status_code}"
            if llm_error:
                assert llm[0].attributes.get("error.type"), mode
            # The fallback plan still goes out and is executed.
            by_id = {s.span_id: s for s in spans}
            execs = [s for s in spans if s.service == "agent-executor" and plan.span_id in ancestors(s, by_id)]
            assert execs, f"{mode}: fallback plan not executed"


def test_late_analyses_counted_identical_plans_held_back_content_opt_in(start_market) -> None:
    # Sentiment answers after the planner's timeout; the stand-in gives the same plan every time.
    fixed = json.dumps({"action": "HOLD", "confidence": 0.5, "reasoning": "fixed answer"})
    run = start_market({"data": {"DATA_INTERVAL_S": "0.3", "MARKET_SYMBOLS": "BTC-USDT"},
                        "sentiment": {"ANALYST_LATENCY_MS": "1300,1400"},
                        "planner": {"PLANNER_DEDUPE_WINDOW_S": "60", "PLANNER_TIMEOUT_S": "0.8",
                                    "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "true"},
                        "llm-standin": {"STANDIN_PLAN": fixed}})
    wait_until(lambda: len(plan_spans(run)) >= 5, 40, "5 plans")
    quiesce(run)
    plans = plan_spans(run)
    extras = span_extras(run.trace_file)
    traces = run.traces()
    # Late: each tick's sentiment arrived after its plan, and each was counted.
    late = [m.group(1) for m in run.logged("planner", r"late analysis sentiment for tick=(\S+)")]
    assert len(late) >= len(plans) - 1 and len(late) == len(set(late))
    late_events = [e for v in traces.values() for s in v if s.service == "agent-planner" and s.name == "agent.on_event"
                   for e in extras[s.span_id]["events"] if e["name"] == "late_analysis"]
    assert len(late_events) == len(late)
    assert max(e["attributes"]["market.late_total"] for e in late_events) == len(late)
    for p in plans:
        assert p.attributes["market.plan.missing"] == ["sentiment"]
    # Duplicates: one plan goes out, every identical one within the window is held back.
    emitted = [p for p in plans if p.attributes.get("market.plan.emitted") is True]
    assert len(emitted) == 1
    first_id = emitted[0].attributes["market.plan.id"]
    for p in plans:
        if p is emitted[0]:
            continue
        events = [e for e in extras[p.span_id]["events"] if e["name"] == "duplicate_plan"]
        assert len(events) == 1 and events[0]["attributes"]["market.plan.previous_id"] == first_id
        assert not [s for s in traces[p.trace_id] if s.name == "bridge.publish" and s.parent_span_id == p.span_id]
    assert executed(run) == [first_id]
    # With the opt-in, the LLM spans carry the prompt and the answer.
    llms = [s for v in traces.values() for s in v if s.kind_name == "CLIENT" and s.name == f"chat {MODEL}"]
    assert len(llms) == len(plans)
    for s in llms:
        assert "INPUT:" in str(s.attributes.get("gen_ai.input.messages"))
        assert "fixed answer" in str(s.attributes.get("gen_ai.output.messages"))


def test_restarting_the_planner_never_executes_a_plan_twice(start_market) -> None:
    run = start_market({"data": {"DATA_INTERVAL_S": "0.4"}, "planner": {"PLANNER_DEDUPE_WINDOW_S": "0"}})
    bus = BusClient(run.runner.bridge_address, ["plan.ready"])
    try:
        wait_until(lambda: len(executed(run)) >= 3, 60, "3 executed plans before the restart")
        run.runner.stop_agent("planner", signal.SIGKILL)
        time.sleep(1.0)
        before = len(executed(run))
        run.runner.start_agent("planner")
        wait_until(lambda: len(executed(run)) >= before + 3, 30, "3 executed plans after the restart")
        # Deliver plans again, as a resend after a reconnect or a second planner would.
        replay = [p for p in list(bus.plans) if isinstance(p, dict)][:4]
        assert len(replay) == 4
        for plan in replay:
            bus.emit("plan.ready", plan)
        wait_until(lambda: len(run.logged("executor", r"duplicate plan_id=")) >= len(replay), 20, "replays refused")
    finally:
        bus.close()
    ids = executed(run)
    assert len(ids) == len(set(ids)), "a plan was executed twice"
    dups = [m.group(1) for m in run.logged("executor", r"duplicate plan_id=(\S+) ignored")]
    assert sorted(dups) == sorted(p["plan_id"] for p in replay)
    assert run.runner.check_alive() == []
