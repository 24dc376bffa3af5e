"""What an op's page draws from a stored result, cut to a size a page can take."""

from __future__ import annotations

import json
import math

import pytest

from coordinator.dashboard.charts import MAX_POINTS, MAX_TRADES, BadAxes, chart, drawdown_pct, reduce_curves


def test_a_long_curve_is_reduced_keeping_its_lowest_and_highest_points() -> None:
    n = 1_000_000
    index_ns = [i * 3_600_000_000_000 for i in range(n)]
    equity = [100.0 + math.sin(i / 5000.0) * 10 for i in range(n)]
    equity[123_457] = 50.0  # a one-bar crash must survive the reduction
    equity[765_433] = 500.0
    out = reduce_curves(index_ns, {"equity": equity})
    assert len(out["time_ms"]) <= MAX_POINTS + 2
    assert min(out["equity"]) == 50.0 and max(out["equity"]) == 500.0
    assert out["time_ms"] == sorted(out["time_ms"])
    assert out["time_ms"][0] == 0 and out["time_ms"][-1] <= index_ns[-1] // 1_000_000


def test_drawdown_is_measured_from_the_running_peak() -> None:
    assert drawdown_pct([100.0, 120.0, 90.0, 130.0]) == [0.0, 0.0, -25.0, 0.0]


def test_a_backtest_shows_its_last_trades_with_times_and_a_training_its_epochs() -> None:
    trades = 2_000
    doc = {"format": "ktrdr.backtest.result/1", "strategy": "s", "metrics": {"trades": trades},
           "index_ns": [i * 10**9 for i in range(5000)], "equity": [1.0] * 5000, "benchmark": [1.0] * 5000,
           "trades": {"entry_bar": list(range(trades)), "exit_bar": [i + 1 for i in range(trades)],
                      "pnl": [1.0] * trades}}
    view = chart(json.dumps(doc).encode())
    assert view["trades"]["count"] == trades and len(view["trades"]["shown"]) == MAX_TRADES
    assert view["trades"]["shown"][-1]["entry_time_ms"] == (trades - 1) * 1000
    history = {"format": "ktrdr.training.history/1",
               "history": [{"epoch": 1, "train_loss": 0.9, "val_loss": float("nan")}]}
    epochs = chart(json.dumps(history).encode())["epochs"]
    assert epochs == [{"epoch": 1, "train_loss": 0.9, "val_loss": None}]
    assert chart(b"[1, 2]") == {"kind": "unknown"}


def test_a_sweep_shows_the_top_of_its_ranking_and_a_walkforward_its_folds() -> None:
    ranking = [{"rank": i + 1, "parameters": {"fast": i}, "metrics": {"sharpe_ratio": -i}} for i in range(1000)]
    view = chart(json.dumps({"format": "ktrdr.sweep.ranking/1", "metric": "sharpe_ratio", "ranking": ranking,
                             "failed": [{"index": 3}], "combinations": 1001, "completed": 1000}).encode())
    assert view["kind"] == "ranking" and view["ranked"] == 1000 and view["failed"] == 1
    assert [r["rank"] for r in view["ranking"]][:3] == [1, 2, 3] and len(view["ranking"]) == 200
    walk = chart(json.dumps({"format": "ktrdr.walkforward/1", "folds": [{"index": 0}],
                             "fold_windows": [{"out_start": "2020-01-02T00:00:00+00:00"}],
                             "index_ns": [0, 10**9], "equity": [1.0, 2.0], "efficiency": 0.5}).encode())
    assert walk["kind"] == "folds" and walk["curves"]["equity"] == [1.0, 2.0]


def test_a_sweep_shows_its_objective_and_why_there_is_no_best() -> None:
    ranking = [{"rank": 1, "parameters": {"fast": 20}, "metrics": {"trades": 0}, "eligible": False,
                "excluded": "fewer than 1 trade (0)"}]
    view = chart(json.dumps({"format": "ktrdr.sweep.ranking/1", "metric": "sharpe_ratio", "ranking": ranking,
                             "objective": {"metric": "sharpe_ratio", "min_trades": 1}, "eligible": 0,
                             "no_best": "no variant met the objective", "failed": [], "combinations": 1,
                             "completed": 1}).encode())
    assert view["objective"] == "sharpe_ratio (max), at least 1 trade"
    assert (view["eligible"], view["no_best"]) == (0, "no variant met the objective")
    assert view["ranking"][0]["excluded"] == "fewer than 1 trade (0)"
    before = chart(json.dumps({"format": "ktrdr.sweep.ranking/1", "metric": "sharpe_ratio", "ranking": []}).encode())
    assert before["objective"] is None and before["no_best"] is None


def test_a_sweeps_page_gets_its_metric_over_the_first_two_parameters() -> None:
    grid = {"fast": [5, 10], "slow": [20, 40], "stop": [1, 2]}
    ranking = [{"rank": 1, "parameters": {"fast": f, "slow": s, "stop": st},
                "metrics": {"sharpe_ratio": f + s / 10 + st / 100}}
               for f in grid["fast"] for s in grid["slow"] for st in grid["stop"]]
    view = chart(json.dumps({"format": "ktrdr.sweep.ranking/1", "metric": "sharpe_ratio", "descending": True,
                             "grid": grid, "ranking": ranking, "failed": []}).encode())
    assert view["heatmap"]["x"] == "fast" and view["heatmap"]["y"] == "slow"
    assert view["heatmap"]["cells"] == [[7.02, 12.02], [9.02, 14.02]]  # the best stop in each cell
    one = chart(json.dumps({"format": "ktrdr.sweep.ranking/1", "metric": "sharpe_ratio", "grid": {"fast": [5]},
                            "ranking": []}).encode())
    assert one["heatmap"] is None


def test_a_sweeps_heatmap_can_be_drawn_over_any_two_of_its_parameters() -> None:
    grid = {"fast": [5, 10], "slow": [20, 40], "stop": [1, 2]}
    ranking = [{"rank": 1, "parameters": {"fast": f, "slow": s, "stop": st},
                "metrics": {"sharpe_ratio": f + s / 10 + st / 100}}
               for f in grid["fast"] for s in grid["slow"] for st in grid["stop"]]
    data = json.dumps({"format": "ktrdr.sweep.ranking/1", "metric": "sharpe_ratio", "descending": False,
                       "grid": grid, "ranking": ranking, "failed": []}).encode()
    view = chart(data, x="stop", y="fast")["heatmap"]
    assert (view["x"], view["y"], view["rest"], view["parameters"]) == ("stop", "fast", ["slow"], list(grid))
    assert view["cells"] == [[7.01, 7.02], [12.01, 12.02]]  # the lowest over slow: descending is False
    for x, y, field in (("nope", "fast", "x"), ("fast", "fast", "y"), ("fast", None, "y")):
        with pytest.raises(BadAxes, match="fast, slow, stop") as refused:
            chart(data, x=x, y=y)
        assert refused.value.field == field
    with pytest.raises(BadAxes, match="not a sweep"):
        chart(json.dumps({"format": "ktrdr.training.history/1", "history": []}).encode(), x="a", y="b")
    wide = {"a": list(range(60)), "b": list(range(60)), "c": [1]}
    big = chart(json.dumps({"format": "ktrdr.sweep.ranking/1", "metric": "m", "grid": wide,
                            "ranking": []}).encode(), x="a", y="b")["heatmap"]
    assert big["cells"] is None and "over 2500" in big["too_large"]
    assert chart(json.dumps({"format": "ktrdr.sweep.ranking/1", "metric": "m", "grid": wide,
                             "ranking": []}).encode(), x="c", y="a")["heatmap"]["y_values"] == list(range(60))
