"""Volatility indicators: Bollinger Bands and ATR."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ktrdr.indicators.inputs import check_period, source_values
from ktrdr.indicators.smoothing import rolling_mean, seeded_ewm


def bollinger(df: pd.DataFrame, *, period: int = 20, std: float = 2.0, source: str = "close") -> pd.DataFrame:
    """Middle = SMA(period); upper/lower = middle +- std * population standard deviation (Bollinger's ddof=0)."""
    check_period("period", period)
    if std <= 0:
        raise ValueError(f"std must be > 0, got {std!r}")
    x = source_values(df, source)
    middle = rolling_mean(x, int(period))
    sd = pd.Series(x).rolling(period, min_periods=period).std(ddof=0).to_numpy()
    upper, lower = middle + std * sd, middle - std * sd
    with np.errstate(divide="ignore", invalid="ignore"):
        percent_b = np.where(upper > lower, (x - lower) / (upper - lower), 0.5)
    percent_b = np.where(np.isnan(middle), np.nan, percent_b)
    return pd.DataFrame({"upper": upper, "middle": middle, "lower": lower, "percent_b": percent_b}, index=df.index)


def true_range(df: pd.DataFrame) -> np.ndarray:
    high, low = df["high"].to_numpy(dtype=np.float64), df["low"].to_numpy(dtype=np.float64)
    prev_close = np.concatenate(([np.nan], df["close"].to_numpy(dtype=np.float64)[:-1]))
    # The first bar has no previous close: its range is high - low (fmax ignores the NaNs).
    return np.fmax(high - low, np.fmax(np.abs(high - prev_close), np.abs(low - prev_close)))


def atr(df: pd.DataFrame, *, period: int = 14) -> pd.Series:
    """Wilder's average true range: TR smoothed with alpha = 1/period, seeded with the mean of the first period."""
    check_period("period", period)
    return pd.Series(seeded_ewm(true_range(df), int(period), 1.0 / period), index=df.index, name=f"atr_{period}")
