from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from ktrdr.ib.limits import (
    LIMITS,
    TIMEFRAMES,
    Segment,
    duration_str,
    limit_for,
    parse_duration_str,
    plan_segments,
)


def test_every_ktrdr_timeframe_has_a_limit() -> None:
    assert TIMEFRAMES == ("1m", "5m", "15m", "30m", "1h", "4h", "1d", "1w")
    assert limit_for("1h").max_duration == timedelta(days=30)
    assert limit_for("1d").max_duration == timedelta(days=365)
    assert limit_for("5m").max_duration == timedelta(days=7)
    assert limit_for("1h").bar_size == "1 hour"
    with pytest.raises(ValueError, match="unknown timeframe"):
        limit_for("2h")


@pytest.mark.parametrize("timeframe", list(LIMITS))
def test_segments_cover_the_range_within_the_limit(timeframe: str) -> None:
    start = datetime(2023, 1, 1, tzinfo=UTC)
    end = datetime(2024, 7, 15, 6, 30, tzinfo=UTC)
    segments = (
        plan_segments(start, end, timeframe)
        if timeframe != "1m"
        else plan_segments(start, start + timedelta(days=5, hours=3), timeframe)
    )
    limit = limit_for(timeframe).max_duration
    assert segments[0].start == start
    for a, b in zip(segments, segments[1:], strict=False):
        assert a.end == b.start  # contiguous, no overlap
    assert all(s.span <= limit for s in segments)
    # Only the oldest segment may be short: the others are anchored on the end.
    assert all(s.span == limit for s in segments[1:])
    for s in segments:
        assert parse_duration_str(duration_str(s.span, timeframe)) >= s.span


def test_newest_first_and_empty_ranges() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    end = start + timedelta(days=70)
    old_first = plan_segments(start, end, "1h")
    assert plan_segments(start, end, "1h", newest_first=True) == old_first[::-1]
    assert plan_segments(end, start, "1h") == []
    # Naive datetimes are UTC.
    assert plan_segments(datetime(2024, 1, 1), datetime(2024, 1, 2), "1d") == [
        Segment(start, start + timedelta(days=1))
    ]


def test_duration_strings() -> None:
    assert duration_str(timedelta(hours=6), "5m") == "21600 S"
    assert duration_str(timedelta(days=1), "1m") == "86400 S"
    assert duration_str(timedelta(days=6, hours=1), "5m") == "7 D"
    assert duration_str(timedelta(hours=3), "1d") == "1 D"  # no seconds for daily bars
    assert duration_str(timedelta(days=365), "1d") == "365 D"
    assert duration_str(timedelta(days=400), "1w") == "2 Y"
