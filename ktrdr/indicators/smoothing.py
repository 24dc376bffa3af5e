"""Moving averages shared by the indicators: simple, and recursively smoothed with an SMA seed."""

from __future__ import annotations

import numpy as np
import pandas as pd


def rolling_mean(values: np.ndarray, period: int) -> np.ndarray:
    """Simple moving average; NaN until ``period`` values are available.

    pandas' rolling mean is an O(n) compensated running sum in C: as fast as a cumsum
    difference without its rounding drift over millions of bars.
    """
    return pd.Series(values).rolling(period, min_periods=period).mean().to_numpy()


def seeded_ewm(values: np.ndarray, period: int, alpha: float) -> np.ndarray:
    """Recursive smoothing ``s[i] = s[i-1] + alpha * (x[i] - s[i-1])``.

    Seeded with the mean of the first ``period`` valid values, placed on the last of them, as in
    Wilder's and the textbook EMA definitions; earlier values are NaN. Leading NaNs (an input that
    is itself an indicator still warming up) are skipped.
    """
    n = len(values)
    out = np.full(n, np.nan)
    valid = np.flatnonzero(~np.isnan(values))
    if len(valid) == 0:
        return out
    first = int(valid[0])
    seed_at = first + period - 1
    if seed_at >= n:
        return out
    series = values[seed_at:].copy()
    series[0] = values[first:seed_at + 1].mean()
    # pandas' ewm(adjust=False) is exactly this recursion, run in C.
    out[seed_at:] = pd.Series(series).ewm(alpha=alpha, adjust=False).mean().to_numpy()
    return out
