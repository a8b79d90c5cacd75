"""Sentiment analyst. Offline there is no news or social feed, so this stands in for one: a
mood that follows the day's change and the volume, plus seeded noise, as a score in [-1, 1]."""

import math
import os
import random

from market_common import run_analyst, setup_logging

_rng = random.Random(int(os.environ.get("MARKET_SEED", "42")) + 7)


def analyze(tick, prices):
    change = float(tick.get("price_change_percent", 0.0))
    mood = math.tanh(change / 3.0) * 0.7 + _rng.gauss(0.0, 0.25)
    score = max(-1.0, min(1.0, mood))
    label = "bullish" if score > 0.2 else "bearish" if score < -0.2 else "neutral"
    return {"score": round(score, 3), "label": label, "source": "simulated"}


if __name__ == "__main__":
    setup_logging()
    run_analyst("sentiment", analyze, (180, 480))
