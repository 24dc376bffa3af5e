from __future__ import annotations

import math
import statistics
from dataclasses import astuple
from pathlib import Path

import numpy as np
import pytest

from ktrdr.backtest import BacktestConfig, run_backtest
from ktrdr.backtest.metrics import (
    CurveColumns,
    CurveStats,
    compute_metrics,
    curve_columns,
    curve_stats,
    curve_stats_of_rows,
    metrics_from,
    metrics_of_rows,
    rows_sum_as_vectors,
)
from ktrdr.backtest.plot import plot_result
from ktrdr.backtest.result import _clean
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


def test_curves_that_reach_zero_go_negative_or_infinite_are_reduced_as_each_alone() -> None:
    rng = np.random.default_rng(12)
    for n in (127, 128, 129, 300, 1000, 1025):
        equity = _curves(rng, 6, n)
        equity[0, n // 2:] -= 200_000.0  # below zero: a negative running peak ahead
        equity[1, :] -= 100_000.0  # starts at zero
        equity[2, n // 3] = np.inf
        equity[3, n // 3:] = 0.0  # all lost
        equity[4, -1] = -np.inf
        exposed = rng.integers(0, n + 1, size=6)
        with np.errstate(all="ignore"):
            together = curve_stats_of_rows(equity, exposed)
            alone = [curve_stats(row, int(e)) for row, e in zip(equity, exposed, strict=True)]
            for row in range(6):  # each alone: then only the rows that are fine among the others
                one = curve_stats_of_rows(np.ascontiguousarray(equity[row:row + 1]), exposed[row:row + 1])
                assert _same_stats(one[0], alone[row]), (n, row)
        assert all(_same_stats(a, b) for a, b in zip(together, alone, strict=True)), n


def test_curves_reduced_in_the_callers_scratch_arrays_are_those_reduced_in_their_own() -> None:
    rng = np.random.default_rng(13)
    scratch = (np.full(40 * 999, np.nan), np.full(40 * 999, np.nan))
    for rows in (40, 7, 40):
        equity = _curves(rng, rows, 1000)
        exposed = rng.integers(0, 1001, size=rows)
        own = curve_columns(equity, exposed)
        assert all(_same_stats(a, b) for a, b in zip(curve_columns(equity, exposed, scratch=scratch).stats(),
                                                      own.stats(), strict=True))
    small = (np.empty(10), np.empty(10))  # too small: arrays of its own
    assert curve_columns(equity, exposed, scratch=small).stats() == own.stats()


def test_numpy_sums_a_slice_of_an_array_as_it_sums_the_same_values_alone() -> None:
    # What metrics_of_rows relies on for each run's trades: a sum does not depend on where the terms lie.
    rng = np.random.default_rng(14)
    values = rng.standard_normal(2_000) * np.exp2(rng.integers(-40, 40, size=2_000))
    for length in [*range(0, 300), 511, 512, 1000, 1999]:
        for start in range(0, 9):
            piece = values[start:start + length]
            assert np.add.reduce(piece) == np.add.reduce(piece.copy()), (length, start)


def _runs(rng: np.random.Generator, rows: int, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Random curves (some ending at or below zero, some NaN) and trades (some runs with none, some
    with wins only or losses only, some with zero-pnl trades), row after row."""
    equity = _curves(rng, rows, n) * rng.choice([0.5, 1.0, 3.0], size=(rows, 1))
    if rows > 3 and n > 1:
        equity[1, -1] = 0.0
        equity[2, -1] = -5.0
        equity[3, n // 2] = np.nan
    counts = rng.choice([0, 1, 2, 7, 8, 9, 40, 130, 300], size=rows)
    pnl = np.round(rng.standard_normal(int(counts.sum())) * 500.0, 2)
    pnl[rng.random(len(pnl)) < 0.05] = 0.0
    starts = np.concatenate(([0], np.cumsum(counts)))
    if rows > 5:
        pnl[starts[4]:starts[5]] = np.abs(pnl[starts[4]:starts[5]]) + 1.0  # wins only
        pnl[starts[5]:starts[6]] = -np.abs(pnl[starts[5]:starts[6]]) - 1.0  # losses only
    held = rng.integers(0, n + 1, size=len(pnl))
    return equity, pnl, held, starts


def _assert_rows_are_metrics_from(columns: dict[str, list[object]], errors: dict[int, str], curves: CurveColumns,
                                  pnl: np.ndarray, held: np.ndarray, starts: np.ndarray, **kwargs: object) -> None:
    """Each row is what metrics_from gives that run alone, as JSON has it (or what it raises), bit for bit."""
    expected_errors = {}
    for i, curve in enumerate(curves.stats()):
        a, b = int(starts[i]), int(starts[i + 1])
        try:
            expected = _clean(metrics_from(curve, pnl=pnl[a:b], bars_held=held[a:b], **kwargs))  # type: ignore[arg-type]
        except Exception as exc:
            expected_errors[i] = f"{type(exc).__name__}: {exc}"
            assert all(column[i] is None for column in columns.values())
            continue
        assert list(columns) == list(expected)
        for name, value in expected.items():
            got = columns[name][i]
            assert got == value and type(got) is type(value), (i, name, got, value)
    assert errors == expected_errors


def test_metrics_of_many_rows_are_those_of_each_row_alone() -> None:
    rng = np.random.default_rng(15)
    for n in (1, 2, 3, 500, 3000):
        for capital, ppy in ((100_000.0, 8760.0), (100_000, 252), (7_777.5, 362880.0), (60.0, 1.0)):
            rows = int(rng.choice([1, 9, 30]))
            equity, pnl, held, starts = _runs(rng, rows, n)
            equity[:, -1] = np.where(rng.random(rows) < 0.3, 3.0 * capital, equity[:, -1])  # some overflow
            close = 50.0 + rng.random(n)
            with np.errstate(all="ignore"):
                curves = curve_columns(equity, rng.integers(0, n + 1, size=rows))
            kwargs = {"initial_capital": capital, "close": close, "periods_per_year": ppy,
                      "annualization_basis": "1h bars"}
            columns, errors = metrics_of_rows(curves, pnl=pnl, bars_held=held, trade_starts=starts, **kwargs)
            _assert_rows_are_metrics_from(columns, errors, curves, pnl, held, starts, **kwargs)


def test_metrics_of_rows_over_part_of_the_trades_read_only_their_own() -> None:
    rng = np.random.default_rng(16)
    equity, pnl, held, starts = _runs(rng, 12, 400)
    curves = curve_columns(equity, np.zeros(12, dtype=np.int64))
    kwargs = {"initial_capital": 1_000.0, "close": equity[0], "periods_per_year": 252.0}
    part = CurveColumns(bars=400, **{name: getattr(curves, name)[4:9] for name in (
        "final", "sd", "mean", "downside", "drawdown", "drawdown_ratio", "exposed")})
    with np.errstate(all="ignore"):
        columns, errors = metrics_of_rows(part, pnl=pnl, bars_held=held, trade_starts=starts[4:10], **kwargs)
    _assert_rows_are_metrics_from(columns, errors, part, pnl, held, starts[4:10], **kwargs)


def test_metrics_of_rows_go_through_metrics_from_where_it_raises_for_all_or_takes_other_types() -> None:
    rng = np.random.default_rng(17)
    equity, pnl, held, starts = _runs(rng, 9, 300)
    with np.errstate(all="ignore"):
        curves = curve_columns(equity, rng.integers(0, 301, size=9))
    close = 50.0 + rng.random(300)
    zero_first = close.copy()
    zero_first[0] = 0.0
    cases = [({"initial_capital": 1_000.0, "close": zero_first, "periods_per_year": 252.0}, held),  # 1 / 0 for all
             ({"initial_capital": np.float64(1_000.0), "close": close, "periods_per_year": 252.0}, held),
             ({"initial_capital": 1_000.0, "close": close, "periods_per_year": np.float64(252.0)}, held),
             ({"initial_capital": 1_000.0, "close": close, "periods_per_year": 252.0}, held.astype(np.float64)),
             ({"initial_capital": 1_000.0, "close": close, "periods_per_year": 252.0}, held * 2 ** 44)]  # big sums
    for kwargs, bars_held in cases:
        with np.errstate(all="ignore"):
            columns, errors = metrics_of_rows(curves, pnl=pnl, bars_held=bars_held, trade_starts=starts, **kwargs)
        _assert_rows_are_metrics_from(columns, errors, curves, pnl, bars_held, starts, **kwargs)
    assert set(errors) == set() and len(columns["trades"]) == 9
    columns, errors = metrics_of_rows(curves, pnl=pnl, bars_held=held, trade_starts=starts, **cases[0][0])
    assert errors == dict.fromkeys(range(9), "ZeroDivisionError: float division by zero") and columns == {}
