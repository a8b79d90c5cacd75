"""Risk analyst: recent volatility and where the price sits in its 24 h range, as a risk level in
[0, 1] (and a score in [-1, 0]: risk only ever argues against acting)."""

import math
from statistics import pstdev

from market_common import run_analyst, setup_logging


def analyze(tick, prices):
    p = list(prices)
    returns = [(b - a) / a for a, b in zip(p, p[1:]) if a]
    vol = pstdev(returns) if len(returns) >= 2 else 0.0
    lo, hi = float(tick.get("low_24h") or 0.0), float(tick.get("high_24h") or 0.0)
    pos = (tick["price"] - lo) / (hi - lo) if hi > lo else 0.5
    # Near either end of the daily range, or moving fast: riskier.
    level = min(1.0, math.tanh(vol * 300.0) * 0.7 + abs(pos - 0.5) * 0.6)
    return {"score": round(-level, 3), "risk_level": round(level, 3), "volatility": round(vol, 6), "range_position": round(pos, 3)}


if __name__ == "__main__":
    setup_logging()
    run_analyst("risk", analyze, (150, 320))
