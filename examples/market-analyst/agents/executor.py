"""Executor agent: PAPER TRADING ONLY. Records each plan's simulated execution once (idempotent by
plan id: a plan delivered again — a replay, a resend after a reconnect, a restarted planner — is
logged and skipped) and emits `execution.complete`. There is no code path that places a real
order: no exchange client, no keys.

Environment: EXECUTOR_CASH (starting paper cash, default 100000), EXECUTOR_NOTIONAL (paper order
size at confidence 1.0, default 1000).
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any, Dict

import loom
from market_common import env_float, setup_logging

log = logging.getLogger("executor")

MAX_REMEMBERED = 100_000


class PaperBook:
    def __init__(self, cash: float, notional: float) -> None:
        self.cash = cash
        self.notional = notional
        self.positions: Dict[str, float] = collections.defaultdict(float)
        self.executed: "collections.OrderedDict[str, Dict[str, Any]]" = collections.OrderedDict()
        self.duplicates = 0

    def fill(self, plan: Dict[str, Any]) -> Dict[str, Any]:
        symbol, action, price = plan["symbol"], plan["action"], float(plan["price"])
        qty = 0.0
        if action == "BUY" and price > 0:
            qty = min(self.cash, self.notional * float(plan["confidence"])) / price
            self.cash -= qty * price
            self.positions[symbol] += qty
        elif action == "SELL" and price > 0:
            qty = min(self.positions[symbol], self.notional * float(plan["confidence"]) / price)
            self.cash += qty * price
            self.positions[symbol] -= qty
        return {"status": "filled" if qty > 0 else "no_trade", "qty": round(qty, 8), "fill_price": price,
                "cash": round(self.cash, 2), "position": round(self.positions[symbol], 8)}


book = PaperBook(env_float("EXECUTOR_CASH", 100_000.0), env_float("EXECUTOR_NOTIONAL", 1_000.0))


def valid_plan(plan: Any) -> bool:
    return (isinstance(plan, dict) and isinstance(plan.get("plan_id"), str) and 0 < len(plan["plan_id"]) <= 256
            and isinstance(plan.get("symbol"), str) and 0 < len(plan["symbol"]) <= 32 and plan.get("action") in ("BUY", "SELL", "HOLD")
            and isinstance(plan.get("price"), (int, float)) and isinstance(plan.get("confidence"), (int, float)))


async def on_event(ctx: loom.Context, topic: str, msg: loom.Message) -> None:
    try:
        plan = msg.json()
    except ValueError:
        plan = None
    if not valid_plan(plan):
        log.warning("ignored a malformed plan (event %s)", msg.id)
        return
    plan_id = plan["plan_id"]
    if plan_id in book.executed:
        book.duplicates += 1
        log.info("duplicate plan_id=%s ignored: already executed (duplicates so far: %d)", plan_id, book.duplicates)
        return
    result = book.fill(plan)
    record = {"plan_id": plan_id, "tick_id": plan.get("tick_id"), "symbol": plan["symbol"], "action": plan["action"],
              "paper": True, "executed_ms": int(time.time() * 1000), **result}
    book.executed[plan_id] = record
    while len(book.executed) > MAX_REMEMBERED:
        book.executed.popitem(last=False)
    await ctx.emit("execution.complete", record, event_type="execution.complete", correlation_id=plan.get("tick_id"))
    log.info("executed plan_id=%s %s %s %s qty=%.6f (paper) cash=%.2f", plan_id, plan["symbol"], plan["action"],
             result["status"], result["qty"], result["cash"])


if __name__ == "__main__":
    setup_logging()
    loom.Agent("executor", topics=["plan.ready"], on_event=on_event).run()
