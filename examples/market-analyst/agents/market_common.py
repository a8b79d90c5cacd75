"""Shared pieces of the market-analyst agents: env parsing, logging, and the analyst loop that
trend, risk and sentiment run (subscribe to `market.price.*`, think for a while, emit
`analysis.<kind>` with the tick's correlation id)."""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import random
from typing import Any, Callable, Deque, Dict, Optional, Tuple

from opentelemetry import trace

import loom

PRICE_TOPICS = "market.price.*"
# Event metadata key naming the analyst's own span (W3C traceparent form). The planner links to
# it: the delivery's own `traceparent` names the bridge's `bridge.forward` span, not the analyst's.
ANALYSIS_SPAN_KEY = "market.analysis.traceparent"
MAX_HISTORY = 120
MAX_SYMBOLS = 64

Analyze = Callable[[Dict[str, Any], Deque[float]], Dict[str, Any]]


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        return default
    try:
        return float(raw)
    except ValueError:
        raise SystemExit(f"{name}={raw!r}: expected a number") from None


def env_range_ms(name: str, default: Tuple[float, float]) -> Tuple[float, float]:
    """`"min,max"` milliseconds → seconds."""
    raw = os.environ.get(name)
    if raw is None or not raw.strip():
        lo, hi = default
    else:
        try:
            lo, hi = (float(x) for x in raw.split(","))
        except ValueError:
            raise SystemExit(f"{name}={raw!r}: expected 'min,max' in milliseconds") from None
    return max(0.0, min(lo, hi)) / 1000.0, max(lo, hi) / 1000.0


def current_traceparent() -> Optional[str]:
    sc = trace.get_current_span().get_span_context()
    if not sc.is_valid:
        return None
    return f"00-{sc.trace_id:032x}-{sc.span_id:016x}-{int(sc.trace_flags):02x}"


def valid_tick(tick: Any) -> bool:
    return (isinstance(tick, dict) and isinstance(tick.get("symbol"), str)
            and isinstance(tick.get("price"), (int, float)) and tick["price"] > 0)


def run_analyst(kind: str, analyze: Analyze, latency_ms: Tuple[float, float]) -> None:
    """Runs one analyst agent until SIGINT/SIGTERM. Each tick is handled in its own task
    (handler_concurrency), so a slow analysis never delays the next tick."""
    log = logging.getLogger(kind)
    latency = env_range_ms("ANALYST_LATENCY_MS", latency_ms)
    history: Dict[str, Deque[float]] = {}

    async def on_event(ctx: loom.Context, topic: str, msg: loom.Message) -> None:
        try:
            tick = msg.json()
        except ValueError:
            log.warning("ignored a tick on %s that is not JSON", topic)
            return
        if not valid_tick(tick):
            log.warning("ignored a malformed tick on %s", topic)
            return
        symbol = tick["symbol"][:32]
        if symbol not in history and len(history) >= MAX_SYMBOLS:
            log.warning("ignored tick for %s: already tracking %d symbols", symbol, MAX_SYMBOLS)
            return
        prices = history.setdefault(symbol, collections.deque(maxlen=MAX_HISTORY))
        prices.append(float(tick["price"]))
        # Stands in for the real work (indicator maths, a model, a news lookup): its latency varies.
        delay = random.uniform(*latency)
        await asyncio.sleep(delay)
        result = analyze(tick, prices)
        tick_id = msg.envelope.correlation_id or tick.get("tick_id")
        payload = {"kind": kind, "tick_id": tick_id, "symbol": symbol, "price": tick["price"],
                   "latency_ms": round(delay * 1000, 1), **result}
        md = {}
        tp = current_traceparent()
        if tp:
            md[ANALYSIS_SPAN_KEY] = tp
        await ctx.emit(f"analysis.{kind}", payload, event_type=f"analysis.{kind}",
                       correlation_id=tick_id, metadata=md)
        log.info("tick=%s %s score=%+.2f latency=%.0fms", tick_id, symbol, result.get("score", 0.0), delay * 1000)

    concurrency = int(env_float("ANALYST_CONCURRENCY", 8))
    loom.Agent(kind, topics=[PRICE_TOPICS], on_event=on_event, handler_concurrency=max(1, concurrency)).run()
