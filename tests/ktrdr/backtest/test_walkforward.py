from __future__ import annotations

import math
from datetime import UTC, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ktrdr.backtest.metrics import compute_metrics
from ktrdr.backtest.walkforward import (
    MAX_FOLDS,
    Fold,
    FoldError,
    make_folds,
    parameter_stability,
    plot_walkforward,
    stitch,
    stitched_metrics,
    trade_statistics,
    walk_forward_efficiency,
)
from ktrdr.data.timeframes import periods_per_year

HOUR = pd.Timedelta(hours=1)


def hourly(n: int, start: str = "2024-01-01") -> pd.DatetimeIndex:
    return pd.date_range(start, periods=n, freq="h", tz="UTC", name="timestamp")


def positions(index: pd.DatetimeIndex, fold: Fold) -> tuple[range, range]:
    """The in-sample and out-of-sample bar positions of ``fold``, from its closed intervals."""
    ins = np.flatnonzero((index >= fold.in_start) & (index <= fold.in_end))
    oos = np.flatnonzero((index >= fold.out_start) & (index <= fold.out_end))
    return range(ins[0], ins[-1] + 1), range(oos[0], oos[-1] + 1)


def assert_well_formed(index: pd.DatetimeIndex, folds: list[Fold]) -> None:
    assert [f.index for f in folds] == list(range(len(folds)))
    for fold in folds:
        for t in (fold.in_start, fold.in_end, fold.out_start, fold.out_end):
            assert t.tzinfo is not None and t.utcoffset() == timedelta(0)
            assert t in index  # boundaries are actual bars
        assert fold.in_start <= fold.in_end < fold.out_start <= fold.out_end
        # in_end and out_start are consecutive bars: none shared, none skipped.
        assert index.get_loc(fold.out_start) == index.get_loc(fold.in_end) + 1
        assert index.get_loc(fold.out_end) - index.get_loc(fold.out_start) + 1 >= 2
    for a, b in zip(folds, folds[1:], strict=False):
        assert b.out_start > a.out_end
        assert index.get_loc(b.out_start) == index.get_loc(a.out_end) + 1
    # Every bar from the first out-of-sample bar to the last is out of sample in exactly one fold.
    span = index[(index >= folds[0].out_start) & (index <= folds[-1].out_end)]
    hits = sum(((span >= f.out_start) & (span <= f.out_end)).astype(int) for f in folds)
    assert (hits == 1).all()


def test_rolling_folds_by_bar_count_are_disjoint_ordered_and_adjacent() -> None:
    index = hourly(1000)
    folds = make_folds(index, mode="rolling", in_sample=400, out_of_sample=150, folds=None)
    assert_well_formed(index, folds)
    assert len(folds) == 4
    for k, fold in enumerate(folds):
        ins, oos = positions(index, fold)
        assert ins == range(150 * k, 150 * k + 400)
        assert oos == range(400 + 150 * k, 550 + 150 * k)


def test_anchored_folds_by_bar_count_keep_in_start_at_the_first_bar_and_grow() -> None:
    index = hourly(1000)
    folds = make_folds(index, mode="anchored", in_sample=400, out_of_sample=150, folds=None)
    assert_well_formed(index, folds)
    assert all(f.in_start == index[0] for f in folds)
    assert [len(positions(index, f)[0]) for f in folds] == [400, 550, 700, 850]


def test_last_out_of_sample_window_may_be_shorter_but_holds_at_least_two_bars() -> None:
    index = hourly(1000)
    folds = make_folds(index, mode="rolling", in_sample=400, out_of_sample=250, folds=None)
    assert [len(positions(index, f)[1]) for f in folds] == [250, 250, 100]
    assert folds[-1].out_end == index[-1]

    folds = make_folds(hourly(1001), mode="rolling", in_sample=400, out_of_sample=150, folds=None)
    assert len(folds) == 4 and folds[-1].out_end == hourly(1001)[-2]  # the 1-bar remainder is dropped
    folds = make_folds(hourly(1002), mode="rolling", in_sample=400, out_of_sample=150, folds=None)
    assert len(folds) == 5 and len(positions(hourly(1002), folds[-1])[1]) == 2


def test_rolling_folds_by_duration_slide_by_the_out_of_sample_duration() -> None:
    index = hourly(24 * 60)
    folds = make_folds(index, mode="rolling", in_sample=timedelta(days=20), out_of_sample=timedelta(days=10),
                       folds=None)
    assert_well_formed(index, folds)
    assert len(folds) == 4
    for k, fold in enumerate(folds):
        assert fold.out_start == index[0] + timedelta(days=20 + 10 * k)
        assert fold.in_start == fold.out_start - timedelta(days=20)
        assert fold.out_end - fold.out_start == timedelta(days=10) - HOUR


def test_anchored_folds_by_duration_keep_in_start_constant() -> None:
    index = hourly(24 * 60)
    folds = make_folds(index, mode="anchored", in_sample=timedelta(days=20), out_of_sample=timedelta(days=7),
                       folds=None)
    assert_well_formed(index, folds)
    assert all(f.in_start == index[0] for f in folds)
    assert [len(positions(index, f)[1]) for f in folds] == [168] * 5 + [24 * 5]


def test_duration_folds_stay_bar_exact_across_data_gaps() -> None:
    full = hourly(24 * 60)
    # Weekends missing, as in FX data, and one three-day outage.
    index = full[(full.day_of_week < 5) & ~((full >= "2024-02-06") & (full < "2024-02-09"))]
    folds = make_folds(index, mode="rolling", in_sample=timedelta(days=14), out_of_sample=timedelta(days=3),
                       folds=None)
    assert_well_formed(index, folds)
    for fold in folds[1:]:
        assert fold.in_start >= fold.out_start - timedelta(days=14)


def test_a_duration_window_always_holds_at_least_two_bars() -> None:
    index = hourly(20)
    folds = make_folds(index, mode="rolling", in_sample=timedelta(hours=6), out_of_sample=timedelta(minutes=30),
                       folds=None)
    assert_well_formed(index, folds)
    assert [len(positions(index, f)[1]) for f in folds] == [2] * 7


def test_folds_by_count_have_equal_out_of_sample_windows_after_a_ratio_sized_in_sample() -> None:
    index = hourly(1003)
    folds = make_folds(index, mode="rolling", in_sample=None, out_of_sample=None, folds=4)
    assert_well_formed(index, folds)
    assert len(folds) == 4
    # 1003 // (4 + 4) = 125 bars out of sample, 500 in sample; the 3 oldest bars are left over.
    assert folds[0].in_start == index[3] and folds[-1].out_end == index[-1]
    assert [tuple(map(len, positions(index, f))) for f in folds] == [(500, 125)] * 4


def test_anchored_folds_by_count_grow_from_a_ratio_sized_first_window() -> None:
    index = hourly(1000)
    folds = make_folds(index, mode="anchored", in_sample=None, out_of_sample=None, folds=3, ratio=2.5)
    assert_well_formed(index, folds)
    oos = [len(positions(index, f)[1]) for f in folds]
    assert len(set(oos)) == 1
    first_in = len(positions(index, folds[0])[0])
    assert first_in == math.floor(2.5 * oos[0])
    assert all(f.in_start == folds[0].in_start for f in folds)
    assert folds[-1].out_end == index[-1]


def test_not_enough_bars_says_how_many_there_are_and_how_many_one_fold_needs() -> None:
    with pytest.raises(FoldError, match=r"has 100 bars.*needs 550 \(400 in-sample \+ 150 out-of-sample"):
        make_folds(hourly(100), mode="rolling", in_sample=400, out_of_sample=150, folds=None)
    with pytest.raises(FoldError, match=r"has 401 bars.*at least 402"):
        make_folds(hourly(401), mode="anchored", in_sample=400, out_of_sample=150, folds=None)
    with pytest.raises(FoldError, match=r"has 48 bars.*in-sample window \(30 days 00:00:00"):
        make_folds(hourly(48), mode="rolling", in_sample=timedelta(days=30), out_of_sample=timedelta(days=7),
                   folds=None)
    with pytest.raises(FoldError, match=r"4 walk-forward folds.*has 15 bars and needs at least 16"):
        make_folds(hourly(15), mode="rolling", in_sample=None, out_of_sample=None, folds=4)
    assert len(make_folds(hourly(16), mode="rolling", in_sample=None, out_of_sample=None, folds=4)) == 4


def test_invalid_requests_raise_fold_error() -> None:
    index = hourly(500)
    bad: list[dict[str, object]] = [
        {"in_sample": 0, "out_of_sample": 10},
        {"in_sample": 100, "out_of_sample": -5},
        {"in_sample": 100, "out_of_sample": 1},
        {"in_sample": timedelta(0), "out_of_sample": 10},
        {"in_sample": 100, "out_of_sample": None},
        {"in_sample": None, "out_of_sample": None},
        {"in_sample": 100, "out_of_sample": 10, "folds": 3},
        {"folds": 0},
        {"folds": MAX_FOLDS + 1},
        {"folds": 3, "ratio": 0.0},
        {"in_sample": True, "out_of_sample": 10},
    ]
    for kwargs in bad:
        kwargs = {"in_sample": None, "out_of_sample": None, "folds": None, **kwargs}
        with pytest.raises(FoldError):
            make_folds(index, mode="rolling", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(FoldError, match="mode"):
        make_folds(index, mode="expanding", in_sample=10, out_of_sample=10, folds=None)  # type: ignore[arg-type]
    with pytest.raises(FoldError, match="time zone"):
        make_folds(index.tz_localize(None), mode="rolling", in_sample=10, out_of_sample=10, folds=None)


def test_more_than_the_fold_cap_is_refused() -> None:
    index = hourly(10 + 2 * MAX_FOLDS)
    assert len(make_folds(index, mode="rolling", in_sample=10, out_of_sample=2, folds=None)) == MAX_FOLDS
    with pytest.raises(FoldError, match=f"more than {MAX_FOLDS} folds"):
        make_folds(hourly(2 * MAX_FOLDS + 12), mode="rolling", in_sample=10, out_of_sample=2, folds=None)


def test_fold_to_dict_gives_iso_timestamps() -> None:
    fold = make_folds(hourly(10), mode="rolling", in_sample=5, out_of_sample=5, folds=None)[0]
    assert fold.to_dict() == {"index": 0, "in_start": "2024-01-01T00:00:00+00:00",
                              "in_end": "2024-01-01T04:00:00+00:00", "out_start": "2024-01-01T05:00:00+00:00",
                              "out_end": "2024-01-01T09:00:00+00:00"}
    assert fold.in_start.tzinfo is UTC


def ns(*hours: int) -> np.ndarray:
    return np.array([h * 3_600_000_000_000 for h in hours], dtype=np.int64)


def test_stitching_two_folds_compounds_the_second_on_the_first_ones_ending_equity() -> None:
    index, equity = stitch([(ns(0, 1), np.array([100.0, 125.0])), (ns(2, 3, 4), np.array([100.0, 80.0, 150.0]))],
                           initial_capital=100.0)
    np.testing.assert_array_equal(index, ns(0, 1, 2, 3, 4))
    np.testing.assert_array_equal(equity, [100.0, 125.0, 125.0, 100.0, 187.5])


def test_stitching_three_folds_equals_reinvesting_each_folds_ending_equity() -> None:
    curves = [(ns(0, 1), np.array([100.0, 125.0])), (ns(2, 3, 4), np.array([100.0, 80.0, 150.0])),
              (ns(5, 6), np.array([100.0, 120.0]))]
    index, equity = stitch(curves, initial_capital=100.0)
    np.testing.assert_array_equal(index, ns(0, 1, 2, 3, 4, 5, 6))
    np.testing.assert_array_equal(equity, [100.0, 125.0, 125.0, 100.0, 187.5, 187.5, 225.0])
    # The stitched / fold ratio is constant within each fold's segment.
    bounds = np.cumsum([0] + [len(e) for _, e in curves])
    for (_, fold_equity), a, b in zip(curves, bounds, bounds[1:], strict=False):
        ratio = equity[a:b] / fold_equity
        assert np.allclose(ratio, ratio[0])


def test_stitching_refuses_overlapping_or_unordered_folds() -> None:
    with pytest.raises(ValueError, match="strictly increasing"):
        stitch([(ns(0, 1, 2), np.ones(3)), (ns(2, 3), np.ones(2))], initial_capital=1.0)
    with pytest.raises(ValueError, match="strictly increasing"):
        stitch([(ns(5, 6), np.ones(2)), (ns(0, 1), np.ones(2))], initial_capital=1.0)
    with pytest.raises(ValueError):
        stitch([], initial_capital=1.0)


def test_folds_that_started_from_the_last_ones_ending_equity_are_stitched_as_they_are() -> None:
    # Carried folds: each backtest went on from the equity the one before ended with.
    curves = [(ns(0, 1), np.array([100.0, 125.0])), (ns(2, 3, 4), np.array([130.0, 100.0, 150.1])),
              (ns(5, 6), np.array([149.9, 180.3]))]
    index, equity = stitch(curves, initial_capital=100.0, starts=[100.0, 125.0, 150.1])
    np.testing.assert_array_equal(index, ns(0, 1, 2, 3, 4, 5, 6))
    assert equity.tolist() == [100.0, 125.0, 130.0, 100.0, 150.1, 149.9, 180.3]  # bit for bit
    # Each fold's start is what it is scaled from: starts of capital are the compounding of fresh folds.
    fresh = [(ns(0, 1), np.array([100.0, 125.0])), (ns(2, 3, 4), np.array([100.0, 80.0, 150.0]))]
    assert (stitch(fresh, initial_capital=100.0, starts=[100.0, 100.0])[1].tolist()
            == stitch(fresh, initial_capital=100.0)[1].tolist() == [100.0, 125.0, 125.0, 100.0, 187.5])


@pytest.mark.parametrize("starts", [[100.0], [100.0, 0.0], [100.0, math.inf], [100.0, -5.0]])
def test_stitching_refuses_a_start_per_fold_that_is_missing_or_not_positive(starts: list[float]) -> None:
    with pytest.raises(ValueError, match="starts: one starting equity > 0 per fold"):
        stitch([(ns(0, 1), np.ones(2)), (ns(2, 3), np.ones(2))], initial_capital=1.0, starts=starts)


def test_carried_folds_with_the_same_parameters_are_one_continuous_backtest_exactly() -> None:
    """Each out-of-sample backtest goes on from the last one's end (its equity, cash and open position):
    stitched, they are one backtest over the joined windows, bit for bit, and a position open at a fold's
    end is one trade across the boundary, paying one entry and one exit commission."""
    from ktrdr.backtest import BacktestConfig, run_backtest
    from ktrdr.strategy import load_strategy, with_parameters
    from ktrdr.strategy.warmup import warmup_bars
    from subjects.params import CarryIn
    from tests.coordinator.test_walkforward import planted

    bars = planted()
    strategy = with_parameters(load_strategy("sma_crossover"), {"fast": 8, "slow": 24})
    warm = warmup_bars(strategy)
    folds = make_folds(bars.index, mode="rolling", folds=3, ratio=2.0)
    first, last = (bars.index.get_loc(t) for t in (folds[0].out_start, folds[-1].out_end))
    config = BacktestConfig(commission=0.002, slippage=0.001, timeframe="1h")
    whole = run_backtest(bars.iloc[first - warm:last + 1], strategy, config, trade_from=warm)

    curves, starts, trades, carry = [], [], [], None
    capital = config.initial_capital
    for fold in folds:
        a, b = (bars.index.get_loc(t) for t in (fold.out_start, fold.out_end))
        w = warm if carry is None else warm + 1  # one bar more: the strategy decides on the bar before
        fold_config = BacktestConfig(**{**config.to_dict(), "initial_capital": capital,
                                        "close_at_end": fold is folds[-1]})
        result = run_backtest(bars.iloc[a - w:b + 1], strategy, fold_config, trade_from=w, carry_in=carry)
        curves.append((result.index_ns, result.equity))
        starts.append(capital)
        trades.append(result.trades_frame())
        end = result.carry_out()
        capital, carry = end["capital"], CarryIn.model_validate(end["carry_in"])
        if fold is not folds[-1]:
            assert carry.position is not None  # planted: each fold ends long, a trade across every boundary
    index_ns, equity = stitch(curves, initial_capital=config.initial_capital, starts=starts)
    assert index_ns.tolist() == whole.index_ns.tolist()
    assert equity.tolist() == whole.equity.tolist()
    joined, one = pd.concat(trades, ignore_index=True), whole.trades_frame()
    for column in ("entry_time", "exit_time", "side", "size", "entry_price", "exit_price", "pnl", "commission",
                   "bars_held"):
        assert joined[column].tolist() == one[column].tolist(), column
    across = joined[(joined["entry_time"] < folds[1].out_start) & (joined["exit_time"] >= folds[1].out_start)]
    assert len(across) == 1 and across["entry_bar"].iloc[0] < 0  # entered before the window that closed it
    row = across.iloc[0]
    fill = row["size"] * row["entry_price"], row["size"] * row["exit_price"]
    assert row["commission"] == pytest.approx(config.commission * (fill[0] + fill[1]), rel=1e-12)


def random_folds(seed: int, sizes: list[int], capital: float) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    curves, start = [], 0
    for size in sizes:
        equity = capital * np.cumprod(np.r_[1.0, 1.0 + rng.normal(0.0002, 0.004, size - 1)])
        curves.append((ns(*range(start, start + size)), equity))
        start += size
    return curves


def test_stitched_total_return_is_the_product_of_the_fold_returns() -> None:
    capital = 10_000.0
    curves = random_folds(7, [300, 250, 400], capital)
    index, equity = stitch(curves, initial_capital=capital)
    m = stitched_metrics(index, equity, initial_capital=capital, timeframe="1h")
    product = math.prod(float(e[-1]) / capital for _, e in curves)
    assert m["total_return_pct"] == pytest.approx(100.0 * (product - 1.0), rel=1e-12)
    assert m["final_equity"] == pytest.approx(capital * product, rel=1e-12)


def test_stitched_metrics_use_compute_metrics_definitions_and_the_engines_annualisation() -> None:
    capital = 10_000.0
    index, equity = stitch(random_folds(3, [200, 200], capital), initial_capital=capital)
    m = stitched_metrics(index, equity, initial_capital=capital, timeframe=None)  # 1h inferred
    reference = compute_metrics(equity=equity, initial_capital=capital, close=np.ones(len(equity)),
                                shares=np.zeros(len(equity)), pnl=np.empty(0), bars_held=np.empty(0),
                                periods_per_year=periods_per_year("1h"))
    assert m["annualization_factor"] == periods_per_year("1h")
    for key in ("annualized_return_pct", "sharpe_ratio", "sortino_ratio", "max_drawdown_pct", "volatility_pct",
                "calmar_ratio", "bars"):
        assert m[key] == reference[key]
    assert "trades" not in m and "buy_and_hold_return_pct" not in m and "exposure" not in m


def test_efficiency_is_the_out_of_sample_return_per_bar_over_the_in_sample_one() -> None:
    # In sample: +10 % over 101 bars and +21 % over 201 bars, pooled: ln(1.1 * 1.21) / 300 per bar.
    # Out of sample, stitched: +5 % over 151 bars.
    per_bar_in = math.log(1.1 * 1.21) / 300
    per_bar_out = math.log(1.05) / 150
    assert walk_forward_efficiency([(10.0, 101), (21.0, 201)], (5.0, 151)) == pytest.approx(per_bar_out / per_bar_in)


def test_efficiency_has_the_sign_of_the_stitched_result_and_annualises_nothing() -> None:
    # Short folds: a small out-of-sample loss stays a small negative efficiency.
    assert walk_forward_efficiency([(3.0, 556)], (-2.49, 556)) == pytest.approx(
        math.log(0.9751) / math.log(1.03))
    assert walk_forward_efficiency([(3.0, 556), (4.0, 556)], (-0.5, 1111)) < 0


def test_efficiency_leaves_out_unusable_folds_and_is_none_without_a_positive_in_sample_return() -> None:
    assert walk_forward_efficiency([(10.0, 101), (None, 50), (5.0, 1), (-100.0, 50)], (5.0, 151)) == pytest.approx(
        (math.log(1.05) / 150) / (math.log(1.1) / 100))
    assert walk_forward_efficiency([], (5.0, 151)) is None
    assert walk_forward_efficiency([(10.0, 101)], (None, None)) is None
    assert walk_forward_efficiency([(-10.0, 101), (5.0, 101)], (3.0, 101)) is None
    assert walk_forward_efficiency([(0.0, 101)], (3.0, 101)) is None


def test_plot_writes_a_non_empty_png(tmp_path: Path) -> None:
    index = hourly(1000)
    folds = make_folds(index, mode="rolling", in_sample=400, out_of_sample=150, folds=None)
    curves = []
    for fold in folds:
        oos = index[(index >= fold.out_start) & (index <= fold.out_end)]
        curves.append((oos.as_unit("ns").asi8, 100.0 * np.linspace(1.0, 1.05, len(oos))))
    index_ns, equity = stitch(curves, initial_capital=100.0)
    path = plot_walkforward(index_ns=index_ns, equity=equity, folds=folds, path=tmp_path / "wf.png",
                            title="walk-forward")
    assert path == tmp_path / "wf.png"
    data = path.read_bytes()
    assert len(data) > 1000 and data.startswith(b"\x89PNG")


def test_trade_statistics_of_pooled_out_of_sample_trades() -> None:
    stats = trade_statistics([10.0, -5.0, 20.0, -5.0])
    assert stats == {"trades": 4, "winning_trades": 2, "losing_trades": 2, "win_rate": 0.5, "profit_factor": 3.0,
                     "total_pnl": 20.0, "avg_pnl": 5.0, "best_trade": 20.0, "worst_trade": -5.0}
    assert trade_statistics([])["trades"] == 0 and trade_statistics([])["win_rate"] is None


def test_parameter_stability_says_how_much_the_folds_agreed() -> None:
    table = parameter_stability([{"fast": 5, "slow": 50}, {"fast": 5, "slow": 100}, {"fast": 10, "slow": 100}])
    assert table["fast"] == {"values": [5, 5, 10], "distinct": 2, "most_common": 5, "agreement": 2 / 3,
                             "min": 5, "max": 10}
    assert table["slow"]["most_common"] == 100 and table["slow"]["distinct"] == 2
    assert "min" not in parameter_stability([{"kind": "a"}, {"kind": "b"}])["kind"]


@pytest.mark.parametrize("mode", ["rolling", "anchored"])
def test_folds_by_length_start_at_the_first_bar_so_appended_bars_leave_earlier_folds_unchanged(mode: str) -> None:
    index = hourly(1100)
    before = make_folds(index[:1000], mode=mode, in_sample=400, out_of_sample=150)
    after = make_folds(index, mode=mode, in_sample=400, out_of_sample=150)
    # Only the last fold, shortened by the end of the data before, may change; the rest are equal.
    assert after[: len(before) - 1] == before[:-1] and len(after) >= len(before)
    assert after[len(before) - 1].out_start == before[-1].out_start


def test_folds_by_count_are_counted_from_the_last_bar() -> None:
    index = hourly(1100)
    before = make_folds(index[:1000], mode="rolling", folds=4, ratio=2.0)
    after = make_folds(index, mode="rolling", folds=4, ratio=2.0)
    assert before[-1].out_end == index[999] and after[-1].out_end == index[-1]
    assert before[0] != after[0]  # the reason to give lengths when the data keeps growing
