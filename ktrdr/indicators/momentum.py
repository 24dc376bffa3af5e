"""Momentum oscillators: RSI, Stochastic and rate of change."""

from __future__ import annotations

import numpy as np
import pandas as pd

from ktrdr.indicators.inputs import check_period, source_values
from ktrdr.indicators.smoothing import rolling_mean, seeded_ewm


def rsi(df: pd.DataFrame, *, period: int = 14, source: str = "close") -> pd.Series:
    """Wilder's RSI: gains and losses smoothed with alpha = 1/period, seeded with their first-period mean.

    All-gain windows give 100, all-loss windows 0, and a flat window (no change at all) 50.
    """
    check_period("period", period)
    x = source_values(df, source)
    delta = np.concatenate(([np.nan], np.diff(x)))
    avg_gain = seeded_ewm(np.where(np.isnan(delta), np.nan, np.maximum(delta, 0.0)), int(period), 1.0 / period)
    avg_loss = seeded_ewm(np.where(np.isnan(delta), np.nan, np.maximum(-delta, 0.0)), int(period), 1.0 / period)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = 100.0 - 100.0 / (1.0 + avg_gain / avg_loss)
    value = np.where(avg_loss == 0, np.where(avg_gain == 0, 50.0, 100.0), value)
    value = np.where(np.isnan(avg_gain), np.nan, value)
    return pd.Series(value, index=df.index, name=f"rsi_{period}")


def stochastic(df: pd.DataFrame, *, k_period: int = 14, d_period: int = 3, smooth: int = 1) -> pd.DataFrame:
    """%K = 100 (close - lowest low) / (highest high - lowest low) over k_period, optionally SMA-smoothed
    over ``smooth`` bars (3 gives the "slow" stochastic); %D = SMA(d_period) of %K. A flat range gives 50."""
    for name, value in (("k_period", k_period), ("d_period", d_period), ("smooth", smooth)):
        check_period(name, value)
    lowest = df["low"].rolling(k_period, min_periods=k_period).min().to_numpy()
    highest = df["high"].rolling(k_period, min_periods=k_period).max().to_numpy()
    close = df["close"].to_numpy(dtype=np.float64)
    span = highest - lowest
    with np.errstate(divide="ignore", invalid="ignore"):
        k = np.where(span > 0, 100.0 * (close - lowest) / span, np.where(np.isnan(span), np.nan, 50.0))
    if smooth > 1:
        k = rolling_mean(k, smooth)
    d = rolling_mean(k, d_period)
    return pd.DataFrame({"k": k, "d": d}, index=df.index)


def roc(df: pd.DataFrame, *, period: int = 10, source: str = "close") -> pd.Series:
    """Rate of change in percent: 100 (x[i] / x[i - period] - 1)."""
    check_period("period", period)
    x = source_values(df, source)
    out = np.full(len(x), np.nan)
    if len(x) > period:
        out[period:] = 100.0 * (x[period:] / x[:-period] - 1.0)
    return pd.Series(out, index=df.index, name=f"roc_{period}")
