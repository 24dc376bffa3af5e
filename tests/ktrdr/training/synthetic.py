"""Seeded synthetic bars and a tiny indicator function for the training tests.

Kept here (not in ktrdr/data) so the training tests do not depend on other modules' progress.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ktrdr.indicators import names as indicator_names
from ktrdr.indicators import register


def make_bars(
    n: int, *, seed: int = 0, pattern: str = "none", freq: str = "1h", start: str = "2024-01-01"
) -> pd.DataFrame:
    """OHLCV bars stamped by open time (UTC).

    ``pattern="none"``: a random walk (iid log returns), nothing to learn.
    ``pattern="mean_reversion"``: log price is pulled back toward its recent mean, so a
    stretched price predicts the direction of the next few bars.
    """
    rng = np.random.default_rng(seed)
    noise = rng.normal(0.0, 0.004, n)
    log_p = np.empty(n)
    log_p[0] = np.log(100.0)
    if pattern == "none":
        log_p[1:] = log_p[0] + np.cumsum(noise[1:])
    elif pattern == "mean_reversion":
        anchor = log_p[0]
        for t in range(1, n):
            anchor += rng.normal(0.0, 0.0005)
            log_p[t] = log_p[t - 1] - 0.15 * (log_p[t - 1] - anchor) + noise[t]
    else:
        raise ValueError(pattern)
    close = np.exp(log_p)
    open_ = np.concatenate([[close[0]], close[:-1]])
    spread = np.abs(rng.normal(0.0, 0.001, n)) * close
    index = pd.date_range(start, periods=n, freq=freq, tz="UTC")
    return pd.DataFrame(
        {
            "open": open_,
            "high": np.maximum(open_, close) + spread,
            "low": np.minimum(open_, close) - spread,
            "close": close,
            "volume": rng.integers(100, 1000, n).astype(float),
        },
        index=index,
    )


def resample(bars: pd.DataFrame, freq: str) -> pd.DataFrame:
    """Higher-timeframe bars stamped by their open time, as a data provider would give them."""
    agg = {"open": "first", "high": "max", "low": "min", "close": "last", "volume": "sum"}
    return bars.resample(freq, label="left", closed="left").agg(agg).dropna()


def zscore(bars: pd.DataFrame, *, period: int = 20) -> pd.Series:
    close = bars["close"]
    mean = close.rolling(period).mean()
    return (close - mean) / close.rolling(period).std()


# Training validates the strategy, indicators included, against the registry: make zscore known
# (computed here by ``compute`` all the same).
if "zscore" not in indicator_names():
    register("zscore", zscore)


def compute(spec: Mapping[str, Any], df: pd.DataFrame) -> pd.Series | pd.DataFrame:
    """A minimal stand-in for ktrdr.indicators.compute: rsi, zscore, macd (multi-output)."""
    kind = spec["type"]
    close = df["close"]
    if kind == "rsi":
        period = int(spec.get("period", 14))
        delta = close.diff()
        gain = delta.clip(lower=0).ewm(alpha=1 / period, adjust=False, min_periods=period).mean()
        loss = (-delta.clip(upper=0)).ewm(alpha=1 / period, adjust=False, min_periods=period).mean()
        return 100 - 100 / (1 + gain / loss)
    if kind == "zscore":
        return zscore(df, period=int(spec.get("period", 20)))
    if kind == "macd":
        fast = close.ewm(span=int(spec.get("fast", 12)), adjust=False).mean()
        slow = close.ewm(span=int(spec.get("slow", 26)), adjust=False).mean()
        macd = fast - slow
        signal = macd.ewm(span=int(spec.get("signal", 9)), adjust=False).mean()
        return pd.DataFrame({"macd": macd, "signal": signal, "histogram": macd - signal})
    raise ValueError(f"unknown indicator {kind}")


def strategy(
    *, hidden: list[int] | None = None, epochs: int = 30, timeframes: list[str] | None = None, **training: Any
) -> dict[str, Any]:
    return {
        "name": "synthetic",
        "version": "3.0",
        "indicators": {"zscore_20": {"type": "zscore", "period": 20}, "rsi_14": {"type": "rsi", "period": 14}},
        "fuzzy_sets": {
            "stretch": {
                "indicator": "zscore_20",
                "low": [-4, -4, -2, -0.5],
                "mid": {"type": "gaussian", "mean": 0, "sigma": 0.7},
                "high": [0.5, 2, 4, 4],
            },
            "rsi_momentum": {"indicator": "rsi_14", "oversold": [0, 25, 40], "overbought": [60, 75, 100]},
        },
        "nn_inputs": [
            {"fuzzy_set": "stretch", "timeframes": timeframes or ["1h"]},
            {"fuzzy_set": "rsi_momentum", "timeframes": timeframes or ["1h"]},
        ],
        "model": {"type": "mlp", "architecture": {"hidden_layers": hidden or [16, 8], "dropout": 0.1}},
        "decisions": {"output_format": "classification", "confidence_threshold": 0.5},
        "training": {
            "epochs": epochs,
            "batch_size": 64,
            "learning_rate": 0.003,
            "labels": {"source": "forward_return", "threshold": 0.003, "horizon": 4},
            "early_stopping": {"patience": 5, "min_delta": 0.001},
            **training,
        },
        "training_data": {"symbols": ["SYN"], "timeframes": timeframes or ["1h"]},
    }
