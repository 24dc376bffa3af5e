from __future__ import annotations

import numpy as np
import pytest

from ktrdr.backtest import BacktestConfig, simulate
from ktrdr.backtest.batch import _ALONE_BELOW, Batch, changes_of, simulate_batch
from ktrdr.backtest.simulator import Simulation
from ktrdr.cancel import CancelToken, OperationCancelled
from ktrdr.data import synth


def _wishes(rng: np.random.Generator, n: int, rate: float, sides: tuple[int, ...] = (-1, 0, 1)) -> np.ndarray:
    """A random +1/0/-1 position wanted after each bar, changing at about ``rate`` of the bars."""
    values = rng.choice(sides, size=n).astype(np.int8)
    keep = rng.random(n) >= rate
    keep[0] = False
    index = np.where(keep, 0, np.arange(n))
    np.maximum.accumulate(index, out=index)
    return values[index]


def _random_config(rng: np.random.Generator) -> BacktestConfig:
    return BacktestConfig(initial_capital=float(rng.choice([60.0, 1_000.0, 100_000.0, 123_456.789])),
                          commission=float(rng.choice([0.0, 0.0005, 0.001, 0.01])),
                          slippage=float(rng.choice([0.0, 0.0005, 0.02])),
                          sizing=str(rng.choice(["fraction", "all_cash"])),  # type: ignore[arg-type]
                          fraction=float(rng.choice([0.1, 0.25, 1 / 3, 1.0])),
                          close_at_end=bool(rng.integers(2)))


def _assert_same_run(got: Simulation, expected: Simulation) -> None:
    # ==, bit for bit: the batch must give the very floats simulate gives.
    assert np.array_equal(got.equity, expected.equity)
    assert got.shares.dtype == expected.shares.dtype and np.array_equal(got.shares, expected.shares)
    assert list(got.trades) == list(expected.trades)
    for name, column in expected.trades.items():
        assert got.trades[name].dtype == column.dtype and np.array_equal(got.trades[name], column), name
    assert got.open_position == expected.open_position
    if expected.open_position is not None:
        assert all(type(got.open_position[k]) is type(v) for k, v in expected.open_position.items())
    assert got.skipped_entries == expected.skipped_entries and type(got.skipped_entries) is int


def _assert_every_row_is_its_simulate(batch: Batch, open_: np.ndarray, close: np.ndarray, wanted: list[np.ndarray],
                                      config: BacktestConfig) -> None:
    for row, wishes in enumerate(wanted):
        assert not batch.unsure[row]
        _assert_same_run(batch.simulation(row), simulate(open_, close, wishes, config))
        trades = batch.trades_of(row)
        assert all(np.array_equal(trades[k], v) for k, v in batch.simulation(row).trades.items())


def test_every_row_of_random_batches_is_bit_for_bit_the_run_simulate_gives_it() -> None:
    rng = np.random.default_rng(20260)
    for _ in range(40):
        n = int(rng.choice([1, 2, 3, 50, 700, 3000]))
        bars = synth("T", "1h", "2021-01-01", n, seed=int(rng.integers(1000)))
        open_, close = bars["open"].to_numpy(np.float64), bars["close"].to_numpy(np.float64)
        config = _random_config(rng)
        # From a few rows (each goes on alone) to many (vectorised steps, then the long ones alone).
        rows = int(rng.choice([1, 3, _ALONE_BELOW, 40, 90]))
        sides = (0, 1) if rng.integers(3) == 0 else (-1, 0, 1)
        wanted = [_wishes(rng, n, float(rng.choice([0.0, 0.01, 0.1, 0.6])), sides) for _ in range(rows)]
        batch = simulate_batch(open_, close, [changes_of(w) for w in wanted], config)
        assert batch.rows == rows
        _assert_every_row_is_its_simulate(batch, open_, close, wanted, config)


def test_shorts_that_lose_more_than_the_cash_go_on_as_simulate_goes_on() -> None:
    # Short into a tenfold rise: covering leaves negative cash, and the next entries size to nothing.
    n = 40
    open_ = np.concatenate((np.full(10, 100.0), np.linspace(100.0, 1000.0, 10), np.full(20, 1000.0)))
    close = open_ * 1.001
    config = BacktestConfig(initial_capital=1_000.0, commission=0.001, slippage=0.001, sizing="all_cash")
    wanted = [np.array([-1] * 25 + [0] * 3 + [1] * 5 + [-1] * 7, dtype=np.int8),
              np.array([-1] * 25 + [1] * (n - 25), dtype=np.int8)]
    batch = simulate_batch(open_, close, [changes_of(w) for w in wanted], config)
    assert (batch.cash < 0).any()
    assert simulate(open_, close, wanted[0], config).skipped_entries > 0
    _assert_every_row_is_its_simulate(batch, open_, close, wanted, config)


def test_rows_that_meet_a_price_simulate_raises_on_are_unsure_and_the_others_exact() -> None:
    bars = synth("T", "1h", "2021-01-01", 200, seed=5)
    open_, close = bars["open"].to_numpy(np.float64, copy=True), bars["close"].to_numpy(np.float64)
    open_[100], open_[150] = 0.0, np.nan
    config = BacktestConfig()
    enters_at_zero = np.zeros(200, dtype=np.int8)
    enters_at_zero[99:] = 1  # filled at bar 100's open: a zero price, simulate divides by zero
    enters_at_nan = np.zeros(200, dtype=np.int8)
    enters_at_nan[149:] = -1
    clear = np.zeros(200, dtype=np.int8)
    clear[10:60] = 1
    with pytest.raises(ZeroDivisionError):
        simulate(open_, close, enters_at_zero, config)
    with pytest.raises(ValueError, match="NaN"):
        simulate(open_, close, enters_at_nan, config)
    rows = [enters_at_zero, clear, enters_at_nan] + [clear] * (2 * _ALONE_BELOW)
    for chosen in (rows, rows[:3]):  # vectorised steps, and rows alone
        batch = simulate_batch(open_, close, [changes_of(w) for w in chosen], config)
        assert batch.unsure.tolist() == [True, False, True] + [False] * (len(chosen) - 3)
        _assert_same_run(batch.simulation(1), simulate(open_, close, clear, config))


def test_a_row_with_no_change_stays_flat_with_its_capital() -> None:
    close = np.array([10.0, 11.0, 12.0])
    flat = np.zeros(3, dtype=np.int8)
    last_bar_only = np.array([0, 0, 1], dtype=np.int8)  # the last bar's wish has no open to fill at
    batch = simulate_batch(close, close, [changes_of(flat), changes_of(last_bar_only)], BacktestConfig())
    for row in range(2):
        run = batch.simulation(row)
        assert run.equity.tolist() == [100_000.0] * 3 and len(run.trades["pnl"]) == 0
    assert simulate_batch(close, close, [], BacktestConfig()).rows == 0


def test_changes_are_where_simulate_fills() -> None:
    changes = changes_of(np.array([1, 1, 0, -1, -1, 1], dtype=np.int8))
    assert changes.bars.tolist() == [1, 3, 4] and changes.wants.tolist() == [1, 0, -1]


def test_cancelling_stops_a_batch_between_steps() -> None:
    token = CancelToken()
    token.cancel("stop")
    wanted = np.tile(np.array([1, 0], dtype=np.int8), 50)
    close = np.full(100, 10.0)
    with pytest.raises(OperationCancelled, match="stop"):
        simulate_batch(close, close, [changes_of(wanted)] * (2 * _ALONE_BELOW), BacktestConfig(), cancel=token)
