"""Trend analyst: short vs long moving average of each symbol's price, as a score in [-1, 1]."""

import math
from statistics import fmean

from market_common import run_analyst, setup_logging


def analyze(tick, prices):
    short = fmean(list(prices)[-5:])
    long = fmean(prices)
    gap = (short - long) / long if long else 0.0
    score = math.tanh(gap * 400.0 + float(tick.get("price_change_percent", 0.0)) * 0.05)
    direction = "up" if score > 0.1 else "down" if score < -0.1 else "flat"
    return {"score": round(score, 3), "direction": direction, "sma_short": round(short, 4), "sma_long": round(long, 4)}


if __name__ == "__main__":
    setup_logging()
    run_analyst("trend", analyze, (120, 260))
