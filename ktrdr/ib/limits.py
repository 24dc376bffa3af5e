"""IB historical-data request limits per ktrdr timeframe, and splitting a range into requests.

IB caps how much history one ``reqHistoricalData`` may cover, depending on the bar size
(the "valid duration / bar size" table of the TWS API). Values here stay inside that table:

==========  ===============  ============  =========================================
timeframe   barSizeSetting   max per req   why
==========  ===============  ============  =========================================
1m          ``1 min``        1 day         IB's table allows 1 min bars up to "1 D"
5m          ``5 mins``       7 days        "1 W" is the documented maximum
15m         ``15 mins``      14 days       "2 W" keeps responses under ~1,400 bars
30m         ``30 mins``      30 days       "1 M" is the documented maximum
1h          ``1 hour``       30 days       "1 M" is the documented maximum
4h          ``4 hours``      30 days       "1 Y" only starts at 1-day bars, so "1 M"
1d          ``1 day``        365 days      "1 Y"
1w          ``1 week``       365 days      "1 Y" (longer works in practice, not documented)
==========  ===============  ============  =========================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta


@dataclass(frozen=True, kw_only=True)
class TimeframeLimit:
    timeframe: str
    bar_size: str  # IB barSizeSetting
    bar: timedelta
    max_duration: timedelta


def _limit(timeframe: str, bar_size: str, bar: timedelta, max_duration: timedelta) -> TimeframeLimit:
    return TimeframeLimit(timeframe=timeframe, bar_size=bar_size, bar=bar, max_duration=max_duration)


LIMITS: dict[str, TimeframeLimit] = {
    limit.timeframe: limit
    for limit in (
        _limit("1m", "1 min", timedelta(minutes=1), timedelta(days=1)),
        _limit("5m", "5 mins", timedelta(minutes=5), timedelta(days=7)),
        _limit("15m", "15 mins", timedelta(minutes=15), timedelta(days=14)),
        _limit("30m", "30 mins", timedelta(minutes=30), timedelta(days=30)),
        _limit("1h", "1 hour", timedelta(hours=1), timedelta(days=30)),
        _limit("4h", "4 hours", timedelta(hours=4), timedelta(days=30)),
        _limit("1d", "1 day", timedelta(days=1), timedelta(days=365)),
        _limit("1w", "1 week", timedelta(weeks=1), timedelta(days=365)),
    )
}
TIMEFRAMES: tuple[str, ...] = tuple(LIMITS)

_ONE_DAY = timedelta(days=1)


def limit_for(timeframe: str) -> TimeframeLimit:
    try:
        return LIMITS[timeframe]
    except KeyError:
        raise ValueError(f"unknown timeframe {timeframe!r}; expected one of {', '.join(TIMEFRAMES)}") from None


def duration_str(span: timedelta, timeframe: str) -> str:
    """The smallest IB ``durationStr`` that covers ``span`` for this timeframe.

    IB only accepts whole units, seconds only up to one day, and days for daily/weekly bars,
    so the duration is rounded up; callers trim the answer to the range they asked for.
    """
    if span <= timedelta(0):
        raise ValueError("duration must be positive")
    bar = limit_for(timeframe).bar
    if bar < _ONE_DAY and span <= _ONE_DAY:
        return f"{math.ceil(span.total_seconds())} S"
    days = math.ceil(span / _ONE_DAY)
    if days <= 365:
        return f"{days} D"
    return f"{math.ceil(days / 365)} Y"


def parse_duration_str(value: str) -> timedelta:
    """Inverse of :func:`duration_str` (IB's units: S, D, W, M ≈ 30 days, Y ≈ 365 days)."""
    amount, unit = value.split()
    n = int(amount)
    unit_days = {"D": 1, "W": 7, "M": 30, "Y": 365}
    if unit == "S":
        return timedelta(seconds=n)
    if unit not in unit_days:
        raise ValueError(f"bad durationStr {value!r}")
    return timedelta(days=n * unit_days[unit])


@dataclass(frozen=True, order=True)
class Segment:
    """One request's worth of history: bars whose start lies in [start, end)."""

    start: datetime
    end: datetime

    @property
    def span(self) -> timedelta:
        return self.end - self.start

    def to_dict(self) -> dict[str, str]:
        return {"start": self.start.isoformat(), "end": self.end.isoformat()}

    @classmethod
    def from_dict(cls, data: dict[str, str]) -> Segment:
        return cls(datetime.fromisoformat(data["start"]), datetime.fromisoformat(data["end"]))

    def __str__(self) -> str:
        return f"{self.start:%Y-%m-%d %H:%M} → {self.end:%Y-%m-%d %H:%M}"


def as_utc(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC (ktrdr stores UTC everywhere)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def plan_segments(
    start: datetime,
    end: datetime,
    timeframe: str,
    *,
    max_duration: timedelta | None = None,
    newest_first: bool = False,
) -> list[Segment]:
    """Split [start, end) into consecutive segments no longer than the timeframe's limit.

    Segments are cut backwards from ``end`` because IB requests are anchored on their end
    time; only the oldest segment may be shorter than the limit.
    """
    start, end = as_utc(start), as_utc(end)
    limit = max_duration or limit_for(timeframe).max_duration
    if limit <= timedelta(0):
        raise ValueError("max_duration must be positive")
    segments: list[Segment] = []
    cursor = end
    while cursor > start:
        seg_start = max(start, cursor - limit)
        segments.append(Segment(seg_start, cursor))
        cursor = seg_start
    return segments if newest_first else segments[::-1]
