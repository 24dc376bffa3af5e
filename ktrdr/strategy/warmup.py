"""How many bars a strategy's indicators need before they have a value: its warm-up.

Computed, not declared: every indicator of the strategy is computed on a synthetic series, and the
warm-up is the first bar from which all of them have a value on every bar, plus one (a crossover
compares a bar with the bar before). Whatever an indicator is (a 200-bar average, MACD's signal
line over its slow average, RSI's first change), its own output says when it is ready, so a new
indicator needs no table entry here. A backtest given that many bars before its window trades from
the window's first bar with its indicators warm (``BacktestParams.warmup_bars``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ktrdr.indicators import compute
from ktrdr.strategy.schema import Strategy

# Synthetic bars tried first; doubled while some indicator has no value by the last one.
FIRST_LENGTH = 1_024
MAX_LENGTH = 1 << 20


class WarmupUnknown(ValueError):
    """An indicator has no value even after ``MAX_LENGTH`` bars."""


def _bars(n: int) -> pd.DataFrame:
    # A positive random walk with ranges and volume: every indicator has something to compute on.
    rng = np.random.default_rng(0)
    close = 100.0 * np.exp(np.cumsum(rng.normal(0, 0.01, n)))
    spread = close * 0.005
    index = pd.date_range("2000-01-01", periods=n, freq="h", tz="UTC", name="timestamp")
    return pd.DataFrame({"open": close, "high": close + spread, "low": close - spread, "close": close,
                         "volume": np.full(n, 1000.0)}, index=index)


def _ready_from(values: pd.Series | pd.DataFrame) -> int | None:
    """The first bar from which every column has a value on every bar; None if the last has none."""
    data = np.asarray(values, dtype=float)
    if data.ndim == 1:
        data = data[:, None]
    missing = ~np.isfinite(data).all(axis=1)
    if len(missing) == 0 or missing[-1]:
        return None
    gaps = np.flatnonzero(missing)
    return int(gaps[-1]) + 1 if len(gaps) else 0


def warmup_bars(strategy: Strategy) -> int:
    """The bars ``strategy``'s indicators need before its first possible signal."""
    specs = list(strategy.indicator_specs().values())
    if not specs:
        return 0
    n = FIRST_LENGTH
    while True:
        bars = _bars(n)
        ready = [_ready_from(compute(spec, bars)) for spec in specs]
        known = [r for r in ready if r is not None]
        if len(known) == len(ready):
            return max(known) + 1
        if n >= MAX_LENGTH:
            raise WarmupUnknown(f"an indicator of {strategy.name} has no value after {n:,} bars")
        n *= 2
