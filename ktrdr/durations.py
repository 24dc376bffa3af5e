"""Durations as people type them: ``90s``, ``30m``, ``12h``, ``7d``, ``26w`` (or a number of seconds).

One reading for every place that takes one (a walk-forward's windows, a prune's age). Months and
years vary in length, so they are refused rather than guessed.
"""

from __future__ import annotations

import re
from datetime import timedelta

_DURATION = re.compile(r"^(\d+(?:\.\d+)?)\s*([a-z]+)$")
_SECONDS = {"s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(value: str | float | int) -> timedelta:
    """``7d``, ``12h``, ``30m``/``30min``, ``2w``, ``90s``, or a number of seconds; ValueError otherwise."""
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"invalid duration {value!r}: a duration is not negative")
        return timedelta(seconds=float(value))
    found = _DURATION.match(value.strip().lower())
    if found is None or found.group(2) not in _SECONDS:
        raise ValueError(f"invalid duration {value!r}: a number and a unit (s, m, h, d, w), e.g. 7d, 12h, 26w")
    return timedelta(seconds=float(found.group(1)) * _SECONDS[found.group(2)])
