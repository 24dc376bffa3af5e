"""A strategy's warm-up is computed from its own indicators, and a backtest given that many bars
before its window trades a signal in the window's first bars that a cold one cannot see, without
ever looking past a bar it trades on."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ktrdr.backtest import BacktestConfig, run_backtest
from ktrdr.backtest.block import run_block
from ktrdr.strategy import load_strategy, with_parameters
from ktrdr.strategy.warmup import warmup_bars

CONFIG = BacktestConfig(timeframe="1h", symbol="V", close_at_end=False)
WINDOW = 198  # the window opens two bars before the prices turn up


def v_shape() -> pd.DataFrame:
    """200 bars falling, then 100 rising: the 5-bar average crosses above the 20-bar one a few bars
    after the turn, inside the window's first 20 bars."""
    close = np.r_[np.linspace(200, 100, 200), np.linspace(100, 150, 100)]
    index = pd.date_range("2024-01-01", periods=len(close), freq="h", tz="UTC", name="timestamp")
    return pd.DataFrame({"open": close, "high": close + 0.5, "low": close - 0.5, "close": close,
                         "volume": np.full(len(close), 1000.0)}, index=index)


def crossover(fast: int, slow: int):  # noqa: ANN201 - a strategy
    return with_parameters(load_strategy("sma_crossover"), {"fast": fast, "slow": slow})


@pytest.mark.parametrize("fast, slow, needs", [(5, 20, 20), (30, 100, 100), (10, 200, 200)])
def test_a_crossovers_warmup_is_its_slowest_average(fast: int, slow: int, needs: int) -> None:
    assert warmup_bars(crossover(fast, slow)) == needs


def test_other_indicators_say_themselves_when_they_are_ready() -> None:
    assert warmup_bars(load_strategy("rsi_mean_reversion")) == 15  # RSI 14: the first change, then 14
    assert warmup_bars(load_strategy("neuro_mean_reversion")) > 0


def test_a_cross_in_the_first_bars_of_a_window_is_traded_with_warmup_and_not_without() -> None:
    bars, strategy = v_shape(), crossover(5, 20)
    warm = warmup_bars(strategy)
    cold = run_backtest(bars.iloc[WINDOW:], strategy, CONFIG)
    hot = run_backtest(bars.iloc[WINDOW - warm:], strategy, CONFIG, trade_from=warm)
    assert hot.index_ns[0] == cold.index_ns[0] == bars.index[WINDOW].value  # both start at the window
    assert len(hot.equity) == len(cold.equity) == len(bars) - WINDOW
    assert len(cold.trades["entry_bar"]) == 0 and cold.open_position is None  # the cross came before its slow average
    entry = int(hot.open_position["entry_bar"]) if hot.open_position else None  # type: ignore[index]
    assert entry is not None and entry < warm  # bought within the window's first 20 bars


def test_a_warmed_up_backtest_never_depends_on_later_bars() -> None:
    bars, strategy = v_shape(), crossover(5, 20)
    whole = run_backtest(bars.iloc[WINDOW - 20:], strategy, CONFIG, trade_from=20)
    cut = run_backtest(bars.iloc[WINDOW - 20:WINDOW + 40], strategy, CONFIG, trade_from=20)
    assert np.array_equal(whole.equity[:40], cut.equity)


def test_a_block_warms_up_as_a_lone_backtest_does() -> None:
    bars, strategy = v_shape(), load_strategy("sma_crossover")
    variants = [{"fast": 5, "slow": 20}, {"fast": 3, "slow": 10}]
    block = run_block(bars.iloc[WINDOW - 20:], strategy, variants, CONFIG, trade_from=20)
    assert block.bars == len(bars) - WINDOW
    for i, variant in enumerate(variants):
        alone = run_backtest(bars.iloc[WINDOW - 20:], with_parameters(strategy, variant), CONFIG, trade_from=20)
        assert block.variant_metrics(i) == json.loads(alone.to_json_bytes(include_curves=False))["metrics"]
