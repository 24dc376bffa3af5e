"""Trend indicators: SMA, EMA and MACD."""

from __future__ import annotations

import pandas as pd

from ktrdr.indicators.inputs import check_period, source_values
from ktrdr.indicators.smoothing import rolling_mean, seeded_ewm


def sma(df: pd.DataFrame, *, period: int = 20, source: str = "close") -> pd.Series:
    check_period("period", period)
    return pd.Series(rolling_mean(source_values(df, source), int(period)), index=df.index, name=f"sma_{period}")


def ema(df: pd.DataFrame, *, period: int = 20, source: str = "close") -> pd.Series:
    """Exponential moving average, alpha = 2 / (period + 1), seeded with the SMA of the first period."""
    check_period("period", period)
    values = seeded_ewm(source_values(df, source), int(period), 2.0 / (period + 1))
    return pd.Series(values, index=df.index, name=f"ema_{period}")


def macd(df: pd.DataFrame, *, fast_period: int = 12, slow_period: int = 26, signal_period: int = 9,
         source: str = "close") -> pd.DataFrame:
    """MACD line = EMA(fast) - EMA(slow); signal = EMA(signal_period) of the line; histogram = line - signal."""
    for name, value in (("fast_period", fast_period), ("slow_period", slow_period), ("signal_period", signal_period)):
        check_period(name, value)
    if fast_period >= slow_period:
        raise ValueError(f"fast_period ({fast_period}) must be < slow_period ({slow_period})")
    x = source_values(df, source)
    line = seeded_ewm(x, fast_period, 2.0 / (fast_period + 1)) - seeded_ewm(x, slow_period, 2.0 / (slow_period + 1))
    signal = seeded_ewm(line, signal_period, 2.0 / (signal_period + 1))
    return pd.DataFrame({"macd": line, "signal": signal, "histogram": line - signal}, index=df.index)
