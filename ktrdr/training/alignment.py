"""Aligning higher-timeframe series onto the base timeframe without look-ahead.

Bar timestamps are bar *open* times. A bar stamped ``t`` on timeframe ``tf`` closes at
``t + duration(tf)``, and only then are its close-derived values (indicators, memberships)
known. The rule applied here:

    a higher-timeframe bar stamped ``h`` may be used by the base bar stamped ``b`` only when
    ``h + duration(higher) <= b + duration(base)``

i.e. the higher bar has closed no later than the base bar closes. Example: the 1h bar
stamped 10:00 closes at 11:00; a 5m base bar stamped 10:50 (closing 10:55) still sees the
09:00 bar, and the 5m bar stamped 10:55 (closing 11:00) is the first to see the 10:00 bar.
Each base bar takes the most recent higher bar satisfying the rule (as-of join); base bars
before the first closed higher bar get NaN.

Durations are nominal (1d = 24h, 1w = 7d). That is conservative for session-based daily
bars, which close earlier than their nominal end, so it can delay but never leak.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

_UNITS = {"m": "min", "h": "h", "d": "D", "w": "W"}
_TIMEFRAME = re.compile(r"^(\d+)([mhdw])$")


def timeframe_duration(timeframe: str) -> pd.Timedelta:
    match = _TIMEFRAME.match(timeframe.strip().lower())
    if not match:
        raise ValueError(f"unknown timeframe {timeframe!r} (expected like 5m, 1h, 4h, 1d, 1w)")
    count, unit = int(match.group(1)), match.group(2)
    if unit == "w":
        return pd.Timedelta(days=7 * count)
    return pd.Timedelta(count, unit=_UNITS[unit])


def base_timeframe(timeframes: list[str]) -> str:
    """The shortest timeframe: features and labels live on its bars."""
    if not timeframes:
        raise ValueError("no timeframes given")
    return min(timeframes, key=timeframe_duration)


def align_to_base(frame: pd.DataFrame, timeframe: str, base_index: pd.DatetimeIndex, base_tf: str) -> pd.DataFrame:
    """Re-index ``frame`` (stamped by bar open on ``timeframe``) onto base bars, see module doc."""
    if not frame.index.is_monotonic_increasing:
        frame = frame.sort_index()
    if timeframe_duration(timeframe) == timeframe_duration(base_tf) and frame.index.equals(base_index):
        return frame
    # as_unit: pandas may hold the two indexes at different resolutions (ns vs us).
    available_at = (frame.index + timeframe_duration(timeframe)).as_unit("ns").asi8
    base_close = (base_index + timeframe_duration(base_tf)).as_unit("ns").asi8
    # searchsorted 'right' lets a higher bar closing exactly at the base close be used.
    pos = np.searchsorted(available_at, base_close, side="right") - 1
    values = frame.to_numpy(dtype=np.float64)
    out = np.full((len(base_index), values.shape[1]), np.nan)
    ok = pos >= 0
    out[ok] = values[pos[ok]]
    return pd.DataFrame(out, index=base_index, columns=frame.columns)
