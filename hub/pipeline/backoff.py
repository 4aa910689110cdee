"""Exponential backoff with jitter for redelivery schedules."""

from __future__ import annotations

import random
from datetime import timedelta


def backoff_delay(attempt: int, *, base_s: float, max_s: float, rng: random.Random | None = None) -> timedelta:
    """Delay before retry number ``attempt`` (1-based): ``base·2^(attempt-1)``, capped, jittered.

    "Equal jitter" (half fixed, half random) keeps retries spread out after an outage
    without ever retrying immediately.
    """
    if attempt < 1:
        raise ValueError("attempt is 1-based")
    ceiling = min(max_s, base_s * (2 ** min(attempt - 1, 32)))
    draw = (rng or random).uniform(0.0, ceiling / 2)
    return timedelta(seconds=ceiling / 2 + draw)
