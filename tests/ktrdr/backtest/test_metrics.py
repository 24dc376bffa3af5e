from __future__ import annotations

import math
import statistics
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest

from ktrdr.backtest import BacktestConfig, run_backtest
from ktrdr.backtest.metrics import (
    CurveStats,
    compute_metrics,
    curve_stats,
    curve_stats_of_rows,
    metrics_from,
    rows_sum_as_vectors,
)
from ktrdr.backtest.plot import plot_result
from ktrdr.backtest.sweep import combinations, parse_grid, parse_values, rank
from ktrdr.data import synth


def test_metrics_against_independent_computation() -> None:
    equity = [100.0, 110.0, 99.0, 120.0, 90.0, 95.0]
    close = np.array([10.0, 11.0, 12.0, 9.0, 10.0, 12.0])
    pnl = np.array([10.0, -4.0, 6.0, -2.0])
    m = compute_metrics(equity=np.array(equity), initial_capital=100.0, close=close,
                        shares=np.array([0, 1, 1, 0, -1, 0]), pnl=pnl, bars_held=np.array([2, 3, 1, 4]),
                        periods_per_year=252.0)
    rets = [b / a - 1 for a, b in zip(equity, equity[1:], strict=False)]
    assert m["total_return"] == pytest.approx(-5.0) and m["total_return_pct"] == pytest.approx(-5.0)
    assert m["annualized_return_pct"] == pytest.approx(100 * (0.95 ** (252 / 5) - 1))
    assert m["volatility_pct"] == pytest.approx(100 * statistics.stdev(rets) * math.sqrt(252))
    assert m["sharpe_ratio"] == pytest.approx(statistics.mean(rets) / statistics.stdev(rets) * math.sqrt(252))
    downside = math.sqrt(sum(min(r, 0) ** 2 for r in rets) / len(rets))
    assert m["sortino_ratio"] == pytest.approx(statistics.mean(rets) / downside * math.sqrt(252))
    assert m["max_drawdown"] == pytest.approx(30.0)  # 120 -> 90
    assert m["max_drawdown_pct"] == pytest.approx(25.0)
    assert m["calmar_ratio"] == pytest.approx((0.95 ** (252 / 5) - 1) / 0.25)
    assert (m["trades"], m["winning_trades"], m["losing_trades"]) == (4, 2, 2)
    assert m["win_rate"] == 0.5 and m["profit_factor"] == pytest.approx(16 / 6)
    assert (m["avg_win"], m["avg_loss"], m["largest_win"], m["largest_loss"]) == (8.0, -3.0, 10.0, -4.0)
    assert m["avg_bars_held"] == 2.5 and m["exposure"] == pytest.approx(0.5)
    assert m["buy_and_hold_return_pct"] == pytest.approx(20.0)
    assert m["annualization_factor"] == 252.0


def test_no_trades_gives_undefined_ratios_not_crashes() -> None:
    m = compute_metrics(equity=np.full(10, 100.0), initial_capital=100.0, close=np.arange(1.0, 11.0),
                        shares=np.zeros(10), pnl=np.empty(0), bars_held=np.empty(0), periods_per_year=252.0)
    assert m["trades"] == 0 and m["win_rate"] is None and m["sharpe_ratio"] is None
    assert m["max_drawdown"] == 0 and m["calmar_ratio"] is None


def test_annualisation_factor_follows_timeframe() -> None:
    bars = synth("T", "1h", "2021-01-01", 500, seed=2)
    r = run_backtest(bars, "sma_crossover")
    assert r.timeframe == "1h" and r.metrics["annualization_factor"] == 252 * 24
    r = run_backtest(bars, "sma_crossover", BacktestConfig(timeframe="1d"))
    assert r.metrics["annualization_factor"] == 252


def test_parse_grid_ranges_and_lists() -> None:
    assert parse_values("5:50:5") == [5, 10, 15, 20, 25, 30, 35, 40, 45, 50]
    assert parse_values("1:3") == [1, 2, 3]
    assert parse_values("0.1:0.5:0.1") == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert parse_values("5:12:5") == [5, 10]
    assert parse_values("a,b,c") == ["a", "b", "c"]
    assert parse_values("1,2.5") == [1, 2.5]
    grid = parse_grid(["fast=5:15:5", "slow=20,30"])
    assert grid == {"fast": [5, 10, 15], "slow": [20, 30]}
    assert parse_grid("fast=5:15:5 slow=20,30") == grid
    combos = combinations(grid)
    assert len(combos) == 6 and combos[0] == {"fast": 5, "slow": 20} and combos[1] == {"fast": 5, "slow": 30}
    for bad in (["fast"], ["fast=10:5"], ["fast=1:5:0"], ["fast=1", "fast=2"]):
        with pytest.raises(ValueError):
            parse_grid(bad)


def test_rank_by_metric() -> None:
    results = [{"id": 1, "metrics": {"sharpe_ratio": 0.5}}, {"id": 2, "metrics": {"sharpe_ratio": None}},
               {"id": 3, "metrics": {"sharpe_ratio": 1.5}}, {"id": 4, "metrics": {"sharpe_ratio": -1.0}}]
    assert [r["id"] for r in rank(results, "sharpe_ratio")] == [3, 1, 4, 2]
    assert [r["id"] for r in rank(results, "sharpe_ratio", descending=False)] == [4, 1, 3, 2]


def test_sweep_end_to_end_with_parameters() -> None:
    from ktrdr.strategy import load_strategy, with_parameters

    bars = synth("T", "1h", "2021-01-01", 2000, seed=5)
    base = load_strategy("sma_crossover")
    results = []
    for combo in combinations(parse_grid("fast=5:10:5 slow=20,30")):
        r = run_backtest(bars, with_parameters(base, combo))
        assert r.parameters == combo
        results.append({"parameters": combo, "metrics": r.metrics})
    best = rank(results, "total_return_pct")[0]
    assert best["metrics"]["total_return_pct"] == max(x["metrics"]["total_return_pct"] for x in results)


def test_plot_writes_png(tmp_path: Path) -> None:
    r = run_backtest(synth("T", "1h", "2021-01-01", 1000, seed=2), "sma_crossover")
    out = plot_result(r, tmp_path / "equity.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _curves(rng: np.random.Generator, rows: int, n: int) -> np.ndarray:
    """Equity-like rows: drifting, flat stretches, new highs, ties."""
    steps = rng.standard_normal((rows, n)) * rng.choice([0.0, 10.0, 300.0], size=(rows, 1))
    steps[rng.random((rows, n)) < 0.3] = 0.0
    curves = 100_000.0 + np.round(np.cumsum(steps + rng.choice([-2.0, 0.0, 3.0], size=(rows, 1)), axis=1), 2)
    curves[:, 0] = 100_000.0
    return curves


def _same_stats(got: CurveStats, expected: CurveStats) -> bool:
    return all(a == b or (a != a and b != b) for a, b in zip(astuple(got), astuple(expected), strict=True))


def test_curves_reduced_as_rows_are_bit_for_bit_each_curve_reduced_alone() -> None:
    rng = np.random.default_rng(11)
    for n in (1, 2, 3, 127, 128, 129, 1000, 8760, 20_000):
        for rows, poisoned in ((1, False), (5, False), (29, False), (5, True)):
            equity = _curves(rng, rows, n)
            if poisoned and n > 3:
                equity[1, n // 2] = np.nan  # a NaN row: its running peak is NaN from there on
                equity[-1, n // 3] = np.inf
            exposed = rng.integers(0, n + 1, size=rows)
            with np.errstate(invalid="ignore"):
                together = curve_stats_of_rows(equity, exposed)
                alone = [curve_stats(row, int(e)) for row, e in zip(equity, exposed, strict=True)]
            assert all(_same_stats(a, b) for a, b in zip(together, alone, strict=True)), (n, rows)


def test_numpy_sums_each_row_as_it_sums_that_row_alone_on_this_install() -> None:
    # What curve_stats_of_rows relies on; where it did not hold it would reduce each curve alone.
    for rows, n in ((2, 2), (29, 8759), (7, 8191), (7, 8193), (3, 100_000)):
        assert rows_sum_as_vectors(rows, n)


def test_compute_metrics_is_metrics_from_the_curves_reductions() -> None:
    equity = _curves(np.random.default_rng(3), 1, 500)[0]
    shares = np.where(np.arange(500) % 3 == 0, 0, 7)
    pnl, held = np.array([5.0, -2.5, 0.0]), np.array([4, 9, 1])
    expected = compute_metrics(equity=equity, initial_capital=100_000.0, close=equity, shares=shares, pnl=pnl,
                               bars_held=held, periods_per_year=252.0, annualization_basis="b")
    got = metrics_from(curve_stats(equity, int(np.count_nonzero(shares))), pnl=pnl, bars_held=held,
                       initial_capital=100_000.0, close=equity, periods_per_year=252.0, annualization_basis="b")
    assert got == expected and got["exposure"] == pytest.approx(2 / 3, abs=0.01)
