"""Deterministic synthetic bars: regime-switching geometric Brownian motion.

Regimes switch at random (mean length ``regime_bars``) between calm, normal and volatile
volatility and a small up/down/flat drift. With ``mean_reversion == 0`` standardised returns are
independent given the regime, and the drift is kept at 2 % of a bar's volatility, so nothing
observable in past prices predicts the next return beyond noise.

``mean_reversion = k > 0`` plants a learnable pattern: the next standardised return has mean
``-k * z`` where ``z`` is the standardised return of the last ``lookback`` bars -- after a run up
(high RSI) prices tend to fall, after a run down they tend to rise. ``k = 0.3`` gives a lag
correlation of about -0.3, which a classifier on RSI-like features learns easily.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ktrdr.data.timeframes import periods_per_year, timeframe_delta
from ktrdr.data.validation import OHLCV

_VOL_STATES = np.array([0.6, 1.0, 1.8])
_DRIFT_STATES = np.array([-0.02, 0.0, 0.02])  # in units of the regime's per-bar volatility


def synth(
    symbol: str = "SYNTH",
    timeframe: str = "1h",
    start: object = "2020-01-01",
    bars: int = 10_000,
    seed: int = 0,
    *,
    price: float = 100.0,
    volatility: float | None = None,
    regime_bars: int = 500,
    mean_reversion: float = 0.0,
    lookback: int = 14,
) -> pd.DataFrame:
    """``bars`` OHLCV bars from ``start`` at the timeframe's spacing (no session or weekend closes).

    ``volatility`` is per bar (default: 20 % a year at :func:`periods_per_year`).
    """
    if bars < 1:
        raise ValueError("bars must be >= 1")
    if not 0.0 <= mean_reversion <= 1.0:
        raise ValueError("mean_reversion must be in [0, 1]")
    rng = np.random.default_rng(seed)
    sigma = volatility if volatility is not None else 0.20 / np.sqrt(periods_per_year(timeframe))

    segment = np.cumsum(rng.random(bars) < 1.0 / max(regime_bars, 1))
    n_seg = int(segment[-1]) + 1
    vol = _VOL_STATES[rng.integers(0, 3, n_seg)][segment] * sigma
    drift = _DRIFT_STATES[rng.integers(0, 3, n_seg)][segment]
    eps = rng.standard_normal(bars)

    z = eps + drift
    if mean_reversion > 0:
        z = _plant_mean_reversion(z, mean_reversion, lookback)
    returns = z * vol - 0.5 * vol**2  # Ito correction: the median path does not drift

    close = price * np.exp(np.cumsum(returns))
    open_ = np.concatenate(([price], close[:-1]))
    wick = np.abs(rng.standard_normal((2, bars))) * 0.5 * vol
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])
    volume = np.round(rng.lognormal(mean=7.0, sigma=0.5, size=bars) * vol / sigma)

    first = pd.Timestamp(start)  # type: ignore[arg-type]
    first = first.tz_localize("UTC") if first.tzinfo is None else first.tz_convert("UTC")
    ns = first.value + np.arange(bars, dtype=np.int64) * timeframe_delta(timeframe).value
    index = pd.DatetimeIndex(pd.to_datetime(ns, utc=True), name="timestamp")
    df = pd.DataFrame(dict(zip(OHLCV, (open_, high, low, close, volume), strict=True)), index=index)
    df.attrs.update(symbol=symbol, timeframe=timeframe)
    return df


def _plant_mean_reversion(z: np.ndarray, k: float, lookback: int) -> np.ndarray:
    # Recursive by nature (each return feeds the next state), so a plain loop over floats.
    coef = k / np.sqrt(lookback)
    out = np.empty_like(z)
    window = np.zeros(lookback)
    total = 0.0
    for t, shock in enumerate(z.tolist()):
        x = shock - coef * total
        out[t] = x
        slot = t % lookback
        total += x - window[slot]
        window[slot] = x
    return out
