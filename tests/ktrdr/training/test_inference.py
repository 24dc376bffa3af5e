"""Model-driven positions: a model trained on a planted pattern trades it better than chance."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ktrdr.backtest import BacktestConfig, run_backtest
from ktrdr.strategy import load_strategy
from ktrdr.training import train_strategy
from ktrdr.training.inference import model_positions
from tests.ktrdr.training.planted import STRATEGY_YAML, planted_bars


@pytest.fixture(scope="module")
def trained() -> tuple[bytes, pd.DataFrame]:
    """Trained on the first 4000 bars; the last 2000 are never seen in training."""
    bars = planted_bars(6000)
    result = train_strategy(STRATEGY_YAML, {"1h": bars.iloc[:4000]}, device="cpu")
    return result.bundle, bars.iloc[4000:]


def total_return(bars: pd.DataFrame, wanted: np.ndarray) -> float:
    result = run_backtest(bars, load_strategy(STRATEGY_YAML), BacktestConfig(), wanted=wanted)
    return float(result.metrics["total_return_pct"])


def test_positions_are_one_per_base_bar_and_flat_during_warm_up(trained: tuple[bytes, pd.DataFrame]) -> None:
    bundle, unseen = trained
    positions = model_positions(bundle, {"1h": unseen})
    assert positions.shape == (len(unseen),)
    assert set(np.unique(positions)) <= {0, 1}  # SELL means flat: the strategy does not allow shorts
    assert (positions[:14] == 0).all()  # RSI(14) warm-up: no features, no position
    assert 0 < positions.mean() < 1


def test_model_driven_backtest_beats_random_signals(trained: tuple[bytes, pd.DataFrame]) -> None:
    bundle, unseen = trained
    positions = model_positions(bundle, {"1h": unseen})
    model = total_return(unseen, positions)
    coin_flips = [total_return(unseen, np.random.default_rng(seed).integers(0, 2, len(unseen)))
                  for seed in range(3)]
    # The same positions at the wrong times: same exposure and turnover, no information.
    shifted = [total_return(unseen, np.roll(positions, shift)) for shift in (300, 700, 1100)]
    assert model > 0
    assert model > max(coin_flips)
    assert model > max(shifted)


def test_a_carried_position_is_where_the_decisions_walk_on_from(trained: tuple[bytes, pd.DataFrame]) -> None:
    """Carried in at a bar, the model holds what was carried until its first BUY or SELL from that bar
    on, then trades as ever: a HOLD keeps the carried position, it does not replay the bars before."""
    bundle, unseen = trained
    plain = model_positions(bundle, {"1h": unseen})
    at = 200
    held = int(plain[at - 1])
    same = model_positions(bundle, {"1h": unseen}, carried=(at, held))
    assert (same[:at] == 0).all() and same[at:].tolist() == plain[at:].tolist()
    other = model_positions(bundle, {"1h": unseen}, carried=(at, 1 - held))
    differ = np.flatnonzero(other[at:] != plain[at:])
    assert differ.tolist() == list(range(len(differ))) and 0 < len(differ) < len(plain) - at
    assert (other[at:at + len(differ)] == 1 - held).all()
    # Long-only: a carried short is no position the model can hold.
    assert model_positions(bundle, {"1h": unseen}, carried=(at, -1)).tolist() == model_positions(
        bundle, {"1h": unseen}, carried=(at, 0)).tolist()
