"""Gaps in a bar series, measured against its timeframe.

Choice: every missing stretch is reported, and each one is flagged ``weekend`` when it overlaps
a Saturday or Sunday (UTC) and lasts no more than three days plus one bar -- a market closed from
Friday's close to Monday's open. Callers that only care about unexpected holes filter on
``not gap.weekend``; overnight closes of session-based markets are reported as ordinary gaps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ktrdr.data.timeframes import timeframe_delta


@dataclass(frozen=True, kw_only=True)
class Gap:
    after: pd.Timestamp  # the last bar before the hole
    before: pd.Timestamp  # the first bar after it
    missing_bars: int
    weekend: bool

    def to_dict(self) -> dict[str, object]:
        return {"after": self.after.isoformat(), "before": self.before.isoformat(),
                "missing_bars": self.missing_bars, "weekend": self.weekend}


def find_gaps(index: pd.DatetimeIndex, timeframe: str) -> list[Gap]:
    if len(index) < 2:
        return []
    step = timeframe_delta(timeframe).value
    ts = index.as_unit("ns").asi8
    diffs = np.diff(ts)
    where = np.flatnonzero(diffs > step)
    gaps: list[Gap] = []
    weekend_span = pd.Timedelta(days=3).value + step
    for i in where.tolist():
        after, before = index[i], index[i + 1]
        missing = int(diffs[i] // step) - 1
        if missing <= 0:  # off-grid spacing shorter than two bars is not a hole
            continue
        touches_weekend = _touches_weekend(after, before) and timeframe != "1w"
        gaps.append(Gap(after=after, before=before, missing_bars=missing,
                        weekend=bool(touches_weekend and diffs[i] <= weekend_span)))
    return gaps


def _touches_weekend(after: pd.Timestamp, before: pd.Timestamp) -> bool:
    days = pd.date_range(after.normalize(), before.normalize(), freq="D")
    return bool((days.day_of_week >= 5).any())
