"""The bar timeframes ktrdr knows and the arithmetic that depends on them."""

from __future__ import annotations

from typing import Final

import pandas as pd

from subjects.fields import TIMEFRAMES

_MINUTES: Final = {"1m": 1, "5m": 5, "15m": 15, "30m": 30, "1h": 60, "4h": 240, "1d": 1440, "1w": 10080}

# Trading days per year: the first ktrdr annualised with sqrt(252) and users compare against it.
TRADING_DAYS_PER_YEAR: Final = 252


def validate_timeframe(timeframe: str) -> str:
    if timeframe not in _MINUTES:
        raise ValueError(f"unknown timeframe {timeframe!r}; one of {', '.join(TIMEFRAMES)}")
    return timeframe


def timeframe_delta(timeframe: str) -> pd.Timedelta:
    return pd.Timedelta(minutes=_MINUTES[validate_timeframe(timeframe)])


def periods_per_year(timeframe: str) -> float:
    """Bars per year used to annualise: 252 trading days of round-the-clock bars, 52 weeks for 1w.

    Intraday bars count 24 h per trading day, which fits FX and crypto; for a 6.5 h equity session
    the factor overstates the bar count, so results always state the factor they used.
    """
    minutes = _MINUTES[validate_timeframe(timeframe)]
    if timeframe == "1w":
        return 52.0
    return TRADING_DAYS_PER_YEAR * 1440.0 / minutes


def infer_timeframe(index: pd.DatetimeIndex) -> str | None:
    """The known timeframe equal to the index's most common spacing, or None."""
    if len(index) < 2:
        return None
    step = pd.Series(index[1:] - index[:-1]).mode().iloc[0]
    for name, minutes in _MINUTES.items():
        if step == pd.Timedelta(minutes=minutes):
            return name
    return None
