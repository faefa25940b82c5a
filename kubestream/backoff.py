"""Retry delays: capped exponential backoff with "equal jitter".

``delay = d/2 + uniform(0, d/2)`` with ``d = min(cap, base * 2**attempt)``.
Equal jitter (rather than "full jitter", ``uniform(0, d)``) keeps at least
half of the exponential delay, so a launcher hammered by 429s/5xx never
retries in a hot loop, while the random half still spreads retries of many
launchers apart.
"""

from __future__ import annotations

import math
import random

# 2**64 times any sane base is above any sane cap; avoids float overflow.
_MAX_EXPONENT = 64


def backoff_delay(attempt: int, *, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Seconds to wait before retry number ``attempt`` (0 = first retry).

    Pure apart from the random draw: pass a seeded ``rng`` for determinism
    (default: the ``random`` module's generator). Result is in ``[d/2, d]``.
    """
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if not (base >= 0 and cap >= 0) or math.isinf(base):
        raise ValueError(f"base and cap must be finite numbers >= 0, got base={base} cap={cap}")
    ceiling = min(cap, base * 2.0 ** min(attempt, _MAX_EXPONENT))
    half = ceiling / 2.0
    draw = (rng or random).uniform(0.0, half) if half > 0 else 0.0
    return min(ceiling, half + draw)
