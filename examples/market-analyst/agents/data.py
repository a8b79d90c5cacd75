"""Data agent: every DATA_INTERVAL_S seconds (default 2) one tick per symbol on
`market.price.<SYMBOL>`, each the root span (`data.tick`) of its own trace.

Source: a seeded random walk (default, offline). `MARKET_SOURCE=live` reads the public OKX ticker
REST API instead (no key; network needed); a failed fetch skips that tick and logs why.

Environment: MARKET_SYMBOLS (default "BTC-USDT,ETH-USDT"), DATA_INTERVAL_S, DATA_COUNT (> 0 stops
after that many rounds), MARKET_SEED (default 42), MARKET_SOURCE (sim | live).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import signal
import time
import urllib.request
import uuid
from typing import Any, Dict, Optional

from opentelemetry import trace

import loom
from market_common import env_float, setup_logging

log = logging.getLogger("data")

START_PRICES = {"BTC-USDT": 97000.0, "ETH-USDT": 3600.0, "SOL-USDT": 230.0}
LIVE_URL = "https://www.okx.com/api/v5/market/ticker?instId={symbol}"


class RandomWalk:
    """Geometric random walk with a 24 h window, seeded so runs repeat."""

    def __init__(self, symbol: str, seed: int) -> None:
        self.symbol = symbol
        self.rng = random.Random(f"{seed}:{symbol}")
        self.open = START_PRICES.get(symbol, 100.0)
        self.price = self.open
        self.high = self.low = self.price

    def next(self) -> Dict[str, Any]:
        self.price *= 1.0 + self.rng.gauss(0.0, 0.002)
        self.high, self.low = max(self.high, self.price), min(self.low, self.price)
        return {
            "symbol": self.symbol,
            "price": round(self.price, 4),
            "volume": round(self.rng.uniform(5, 50) * (1000.0 / max(self.price, 1.0)) * 100, 4),
            "price_change_percent": round((self.price - self.open) / self.open * 100.0, 4),
            "high_24h": round(self.high, 4),
            "low_24h": round(self.low, 4),
            "timestamp_ms": int(time.time() * 1000),
            "source": "simulator",
        }


def fetch_live(symbol: str) -> Optional[Dict[str, Any]]:
    """One ticker from OKX's public REST API; None (logged) when it fails."""
    try:
        with urllib.request.urlopen(LIVE_URL.format(symbol=symbol), timeout=3) as resp:
            body = json.loads(resp.read(64 * 1024))
        d = body["data"][0]
        last, open24 = float(d["last"]), float(d["open24h"])
        return {
            "symbol": symbol,
            "price": last,
            "volume": float(d["vol24h"]),
            "price_change_percent": round((last - open24) / open24 * 100.0, 4) if open24 else 0.0,
            "high_24h": float(d["high24h"]),
            "low_24h": float(d["low24h"]),
            "timestamp_ms": int(d.get("ts") or time.time() * 1000),
            "source": "okx",
        }
    except Exception as exc:  # noqa: BLE001 - a flaky feed must not stop the agent
        log.warning("live feed for %s failed: %s", symbol, str(exc)[:200])
        return None


async def main() -> None:
    interval = env_float("DATA_INTERVAL_S", 2.0)
    count = int(env_float("DATA_COUNT", 0))
    seed = int(env_float("MARKET_SEED", 42))
    source = os.environ.get("MARKET_SOURCE", "sim").strip().lower()
    if source not in ("sim", "live"):
        raise SystemExit(f"MARKET_SOURCE={source!r}: expected sim or live")
    symbols = [s.strip() for s in os.environ.get("MARKET_SYMBOLS", "BTC-USDT,ETH-USDT").split(",") if s.strip()]
    walks = {s: RandomWalk(s, seed) for s in symbols}
    agent = loom.Agent("data")
    await agent.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    tracer = trace.get_tracer("market-analyst.data")
    rounds = 0
    log.info("source=%s symbols=%s interval=%.2fs", source, ",".join(symbols), interval)
    try:
        while not stop.is_set() and (count == 0 or rounds < count):
            for symbol in symbols:
                tick = walks[symbol].next() if source == "sim" else await loop.run_in_executor(None, fetch_live, symbol)
                if tick is None:
                    continue
                tick_id = f"{symbol}-{rounds}-{uuid.uuid4().hex[:8]}"
                topic = f"market.price.{symbol}"
                # The root of the tick's trace; emit() carries its context to every analyst.
                with tracer.start_as_current_span("data.tick", attributes={
                    "loom.agent.id": "data", "loom.topic": topic, "loom.correlation_id": tick_id,
                    "market.symbol": symbol, "market.price": tick["price"], "market.source": tick["source"],
                }) as span:
                    await agent.context.emit(topic, {**tick, "tick_id": tick_id}, event_type="market.tick",
                                             correlation_id=tick_id)
                    trace_id = format(span.get_span_context().trace_id, "032x")
                log.info("tick=%s price=%.4f trace_id=%s", tick_id, tick["price"], trace_id)
            rounds += 1
            try:
                await asyncio.wait_for(stop.wait(), interval)
            except asyncio.TimeoutError:
                pass
        if count:
            log.info("sent %d rounds", rounds)
            await stop.wait()
    finally:
        await agent.stop()


if __name__ == "__main__":
    setup_logging()
    asyncio.run(main())
