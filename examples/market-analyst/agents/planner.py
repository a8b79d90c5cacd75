"""Planner agent: fan-in of the three analyses of each tick (by correlation id), one
`planner.make_plan` span per tick with an OpenTelemetry link to each analysis span it used, an LLM
plan (official `openai` client, traced by opentelemetry-instrumentation-openai-v2) checked and
replaced by rules when the LLM fails, and `plan.ready`.

Environment: PLANNER_TIMEOUT_S (3), PLANNER_DEDUPE_WINDOW_S (10; 0 turns the duplicate check
off), PLANNER_EXPECTS ("trend,risk,sentiment"); the LLM endpoint from loom.toml `[llm]`, overridden
by OPENAI_BASE_URL / OPENAI_API_KEY / LLM_MODEL.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

try:
    import tomllib  # Python 3.11+
except ModuleNotFoundError:  # pragma: no cover
    import tomli as tomllib  # type: ignore[no-redef]

# The instrumentation's newest GenAI conventions (gen_ai.provider.name, ...); set before it loads.
os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
# `true` is the documented switch for message content; the GenAI utilities name the same choice
# `span_only` (and ignore `true`), so translate it. Anything else is passed through unchanged.
if os.environ.get("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "").strip().lower() == "true":
    os.environ["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = "span_only"

from opentelemetry import trace  # noqa: E402
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, TraceFlags  # noqa: E402

import loom  # noqa: E402
from market_common import ANALYSIS_SPAN_KEY, env_float, setup_logging  # noqa: E402

log = logging.getLogger("planner")

ACTIONS = ("BUY", "SELL", "HOLD")
MAX_PENDING = 1000
MAX_REMEMBERED = 5000
MAX_REASONING = 500
_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$")

SYSTEM_PROMPT = (
    "You are a cautious trading planner for a paper-trading demo. Given market analyses, answer "
    "ONLY a JSON object {\"action\": \"BUY\"|\"SELL\"|\"HOLD\", \"confidence\": number from 0 to 1, "
    "\"reasoning\": short string}. No prose, no code fences."
)


class PlanError(ValueError):
    """The LLM's answer is not a usable plan."""


@dataclass
class LLMConfig:
    base_url: str
    model: str
    api_key: str
    timeout_s: float

    @classmethod
    def load(cls) -> "LLMConfig":
        manifest = Path(__file__).resolve().parents[1] / "loom.toml"
        table: Dict[str, Any] = {}
        try:
            table = tomllib.loads(manifest.read_text(encoding="utf-8")).get("llm", {})
        except (OSError, tomllib.TOMLDecodeError) as exc:
            log.warning("%s: [llm] not read (%s); using the environment only", manifest, exc)
        key_env = str(table.get("api_key_env", "OPENAI_API_KEY"))
        base_url = os.environ.get("OPENAI_BASE_URL") or str(table.get("base_url", "http://127.0.0.1:18089/v1"))
        return cls(
            base_url=base_url,
            model=os.environ.get("LLM_MODEL") or str(table.get("model", "standin-planner")),
            # The stand-in needs no key, but the client insists on one.
            api_key=os.environ.get(key_env) or "no-key-needed-by-the-standin",
            timeout_s=env_float("LLM_TIMEOUT_S", float(table.get("timeout_s", 10.0))),
        )


@dataclass
class Analysis:
    kind: str
    payload: Dict[str, Any]
    span: Optional[SpanContext]
    event_id: str


@dataclass
class Pending:
    tick_id: str
    symbol: str
    price: float
    first_at: float
    parent: SpanContext
    analyses: Dict[str, Analysis] = field(default_factory=dict)
    complete: asyncio.Event = field(default_factory=asyncio.Event)


def parse_traceparent(value: Optional[str]) -> Optional[SpanContext]:
    m = _TRACEPARENT.match(value or "")
    if not m:
        return None
    sc = SpanContext(int(m.group(1), 16), int(m.group(2), 16), is_remote=True,
                     trace_flags=TraceFlags(int(m.group(3), 16)))
    return sc if sc.is_valid else None


def check_plan(content: Optional[str]) -> Dict[str, Any]:
    """The LLM's answer as a plan, or PlanError naming what is wrong with it."""
    if not content or not content.strip():
        raise PlanError("empty answer")
    text = content.strip()
    fenced = re.match(r"^```(?:json)?\s*(.*?)\s*```$", text, re.S)
    if fenced:
        text = fenced.group(1)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise PlanError(f"answer is not JSON ({exc.msg} at char {exc.pos})") from None
    if not isinstance(obj, dict):
        raise PlanError("answer is not a JSON object")
    action = obj.get("action")
    if not isinstance(action, str) or action.strip().upper() not in ACTIONS:
        raise PlanError(f"action {str(action)[:20]!r} is not BUY, SELL or HOLD")
    conf = obj.get("confidence")
    if isinstance(conf, bool) or not isinstance(conf, (int, float)) or not 0.0 <= float(conf) <= 1.0:
        raise PlanError(f"confidence {str(conf)[:20]!r} is not a number from 0 to 1")
    reasoning = obj.get("reasoning")
    if not isinstance(reasoning, str) or not reasoning.strip():
        raise PlanError("reasoning is missing")
    return {"action": action.strip().upper(), "confidence": round(float(conf), 3), "reasoning": reasoning.strip()[:MAX_REASONING]}


def prompt_fields(payload: Dict[str, Any]) -> Dict[str, Any]:
    """What of an analysis goes into the prompt: scalar fields only, bounded (an analysis is
    untrusted input and the prompt costs tokens)."""
    out: Dict[str, Any] = {}
    for k, v in payload.items():
        if len(out) >= 16 or k == "tick_id" or not isinstance(k, str) or len(k) > 40:
            continue
        if isinstance(v, (bool, int, float)) or (isinstance(v, str) and len(v) <= 64):
            out[k] = v
    return out


def rules_plan(p: Pending) -> Dict[str, Any]:
    """The fallback: a plain rule over the scores the planner has."""

    def score(kind: str, key: str = "score", default: float = 0.0) -> float:
        a = p.analyses.get(kind)
        v = a.payload.get(key, default) if a else default
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else default

    trend, sentiment, risk = score("trend"), score("sentiment"), score("risk", "risk_level", 0.5)
    edge = 0.6 * trend + 0.4 * sentiment
    if risk > 0.75 or abs(edge) < 0.25:
        action = "HOLD"
    else:
        action = "BUY" if edge > 0 else "SELL"
    conf = round(min(0.9, 0.3 + abs(edge) * 0.5) * (1.0 - 0.5 * risk), 3)
    return {"action": action, "confidence": conf,
            "reasoning": f"rules: trend {trend:+.2f}, sentiment {sentiment:+.2f}, risk {risk:.2f}"}


class Planner:
    def __init__(self) -> None:
        self.timeout = env_float("PLANNER_TIMEOUT_S", 3.0)
        self.window = env_float("PLANNER_DEDUPE_WINDOW_S", 10.0)
        self.expects = [k.strip() for k in os.environ.get("PLANNER_EXPECTS", "trend,risk,sentiment").split(",") if k.strip()]
        self.llm = LLMConfig.load()
        self.agent = loom.Agent("planner", topics=[f"analysis.{k}" for k in self.expects], on_event=self.on_event)
        self.client: Optional[asyncio.Future] = None
        self.tracer = trace.get_tracer("market-analyst.planner")
        self.pending: "collections.OrderedDict[str, Pending]" = collections.OrderedDict()
        self.planned: "collections.OrderedDict[str, None]" = collections.OrderedDict()
        self.recent: Dict[Tuple[str, str, float], Tuple[str, float]] = {}
        self.tasks: set = set()
        self.late = 0
        self.plans = 0
        self.fallbacks = 0

    def _redact(self, text: str) -> str:
        key = self.llm.api_key
        return text.replace(key, "***") if key and len(key) >= 4 else text

    async def on_event(self, ctx: loom.Context, topic: str, msg: loom.Message) -> None:
        kind = topic.split(".", 1)[1]
        span = trace.get_current_span()
        try:
            payload = msg.json()
        except ValueError:
            payload = None
        tick_id = (msg.envelope.correlation_id or "")[:200]
        if not isinstance(payload, dict) or not tick_id or kind not in self.expects:
            log.warning("ignored an analysis on %s without a JSON object or a correlation id", topic)
            return
        if tick_id in self.planned:
            self.late += 1
            span.add_event("late_analysis", {"market.analysis": kind, "market.tick_id": tick_id, "market.late_total": self.late})
            log.warning("late analysis %s for tick=%s: plan already made (late so far: %d)", kind, tick_id, self.late)
            return
        p = self.pending.get(tick_id)
        if p is None:
            if len(self.pending) >= MAX_PENDING:
                old_id, old = self.pending.popitem(last=False)
                old.complete.set()
                log.warning("more than %d ticks waiting: planning tick=%s early", MAX_PENDING, old_id)
            price = payload.get("price")
            p = Pending(tick_id=tick_id, symbol=str(payload.get("symbol", "?"))[:32],
                        price=float(price) if isinstance(price, (int, float)) else 0.0,
                        first_at=time.monotonic(), parent=span.get_span_context())
            self.pending[tick_id] = p
            task = asyncio.get_running_loop().create_task(self._wait_and_plan(p))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)
        if kind in p.analyses:
            log.warning("second %s analysis for tick=%s ignored", kind, tick_id)
            return
        p.analyses[kind] = Analysis(kind, payload, parse_traceparent(msg.metadata.get(ANALYSIS_SPAN_KEY)), msg.id)
        # The plan hangs under the delivery that completed (or last fed) the fan-in.
        p.parent = span.get_span_context()
        if all(k in p.analyses for k in self.expects):
            p.complete.set()

    async def _wait_and_plan(self, p: Pending) -> None:
        try:
            await asyncio.wait_for(p.complete.wait(), self.timeout)
        except asyncio.TimeoutError:
            pass
        self.pending.pop(p.tick_id, None)
        self.planned[p.tick_id] = None
        while len(self.planned) > MAX_REMEMBERED:
            self.planned.popitem(last=False)
        try:
            await self.make_plan(p)
        except Exception:  # noqa: BLE001 - one bad tick must not stop the planner
            log.exception("planning tick=%s failed", p.tick_id)

    def load_client(self) -> Any:
        """Imports and instruments the `openai` client (about a second of imports, so it runs in
        a thread while the planner already joins the bus). Called after the Agent exists: its
        TracerProvider is the global one the instrumentation picks up."""
        import openai
        from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

        OpenAIInstrumentor().instrument()
        return openai.AsyncOpenAI(base_url=self.llm.base_url, api_key=self.llm.api_key,
                                  timeout=self.llm.timeout_s, max_retries=0)

    async def ask_llm(self, p: Pending, missing: List[str]) -> Dict[str, Any]:
        facts = {"symbol": p.symbol, "price": p.price, "missing": missing,
                 "analyses": {k: prompt_fields(a.payload) for k, a in p.analyses.items()}}
        assert self.client is not None
        client = await asyncio.shield(self.client)
        resp = await client.chat.completions.create(
            model=self.llm.model,
            messages=[{"role": "system", "content": SYSTEM_PROMPT},
                      {"role": "user", "content": "Plan the next paper trade.\nINPUT:\n" + json.dumps(facts, sort_keys=True)}],
            temperature=0.2,
            max_tokens=200,
        )
        if not resp.choices:
            raise PlanError("answer has no choices")
        return check_plan(resp.choices[0].message.content)

    async def make_plan(self, p: Pending) -> None:
        missing = [k for k in self.expects if k not in p.analyses]
        links = [Link(a.span, {"market.analysis": k, "loom.agent.id": k, "loom.event.id": a.event_id})
                 for k, a in sorted(p.analyses.items()) if a.span is not None]
        parent = trace.set_span_in_context(NonRecordingSpan(p.parent))
        plan_id = f"plan-{p.tick_id}"
        with self.tracer.start_as_current_span("planner.make_plan", context=parent, links=links, attributes={
            "loom.agent.id": "planner", "loom.topic": "plan.ready", "loom.correlation_id": p.tick_id,
            "market.symbol": p.symbol, "market.plan.id": plan_id, "market.plan.complete": not missing,
            "market.plan.analyses": sorted(p.analyses), "market.plan.missing": missing,
            "market.plan.wait_ms": round((time.monotonic() - p.first_at) * 1000, 1),
        }) as span:
            try:
                plan, source = await self.ask_llm(p, missing), "llm"
            except Exception as exc:  # noqa: BLE001 - any LLM failure means the rules plan
                reason = self._redact(f"{type(exc).__name__}: {exc}")[:300]
                self.fallbacks += 1
                span.add_event("llm_fallback", {"reason": reason})
                log.warning("tick=%s LLM plan unusable (%s): falling back to rules", p.tick_id, reason)
                plan, source = rules_plan(p), "rules"
            span.set_attributes({"market.plan.action": plan["action"], "market.plan.confidence": plan["confidence"],
                                 "market.plan.source": source})
            # "Identical": same symbol and action, confidence within the same 0.05 step.
            key = (p.symbol, plan["action"], round(plan["confidence"] * 20) / 20)
            now = time.monotonic()
            self.recent = {k: v for k, v in self.recent.items() if now - v[1] < self.window}
            prev = self.recent.get(key)
            if prev is not None:
                span.add_event("duplicate_plan", {"market.plan.previous_id": prev[0], "market.plan.age_s": round(now - prev[1], 2)})
                span.set_attribute("market.plan.emitted", False)
                log.info("tick=%s %s %s repeats %s within %.0fs: not emitted", p.tick_id, p.symbol, plan["action"], prev[0], self.window)
                return
            if self.window > 0:
                self.recent[key] = (plan_id, now)
            span.set_attribute("market.plan.emitted", True)
            out = {"plan_id": plan_id, "tick_id": p.tick_id, "symbol": p.symbol, "price": p.price, **plan,
                   "source": source, "complete": not missing, "analyses": sorted(p.analyses), "missing": missing,
                   "model": self.llm.model if source == "llm" else None, "created_ms": int(time.time() * 1000)}
            await self.agent.context.emit("plan.ready", out, event_type="plan.ready", correlation_id=p.tick_id)
            self.plans += 1
            log.info("plan_id=%s %s %s conf=%.2f source=%s complete=%s links=%d", plan_id, p.symbol, plan["action"],
                     plan["confidence"], source, not missing, len(links))


async def main() -> None:
    planner = Planner()
    log.info("LLM endpoint %s model=%s timeout=%.0fs; fan-in timeout %.1fs", planner.llm.base_url, planner.llm.model,
             planner.llm.timeout_s, planner.timeout)
    await planner.agent.start()
    planner.client = asyncio.get_running_loop().run_in_executor(None, planner.load_client)
    try:
        await planner.agent.run_forever()
    finally:
        for t in list(planner.tasks):
            t.cancel()
        if planner.client.done() and planner.client.exception() is None:
            await planner.client.result().close()


if __name__ == "__main__":
    setup_logging()
    # httpx logs every request URL at INFO; keep the demo output to the planner's own lines.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    asyncio.run(main())
