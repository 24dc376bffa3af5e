"""What a followed op's bar and summary say, read from its record."""

from __future__ import annotations

from ktrdr.cli.follow import result_line
from ktrdr.client.progress import record_description
from subjects.models import Operation, OpStatus, Progress


def test_a_running_op_says_where_it_runs_before_its_first_progress_message() -> None:
    op = Operation(op_id="dummy-1", type="dummy", status=OpStatus.RUNNING, worker_id="w1", attempt=1)
    assert record_description(op) == "running on w1 (attempt 1)"


def test_a_pending_op_says_why_it_waits() -> None:
    op = Operation(op_id="data_load-1", type="data_load", route_reason="ib")
    assert record_description(op) == "pending (ib)"


def test_progress_in_the_record_wins_over_where_it_runs() -> None:
    op = Operation(op_id="sweep-1", type="sweep", status=OpStatus.RUNNING, worker_id="w1",
                   progress=Progress(percentage=40.0, message="400 of 1,000 backtests finished"))
    assert record_description(op) == "400 of 1,000 backtests finished"


def test_a_result_is_one_line_of_key_value_pairs_naming_its_nested_parts() -> None:
    line = result_line({"symbol": "SYN", "sharpe": 1.234567, "metrics": {"a": 1}, "trades": [1, 2], "none": None})
    assert line == "symbol=SYN, sharpe=1.235 (and metrics, trades)"


def test_each_op_type_sums_up_its_outcome_in_its_key_figures() -> None:
    backtest = {"strategy": "sma_crossover", "symbol": "SYN", "timeframe": "1h", "start": "a", "end": "b",
                "parameters": {"fast": 10, "slow": 30}, "result_bytes": 12345,
                "metrics": {"total_return_pct": 4.2104, "sharpe_ratio": 0.8312, "max_drawdown_pct": -7.9, "trades": 42}}
    assert result_line(backtest, op_type="backtesting") == (
        "return +4.21 %, Sharpe 0.83, max drawdown -7.90 %, 42 trades; fast=10, slow=30")
    sweep = {"metric": "sharpe_ratio", "descending": True, "combinations": 30, "completed": 30, "eligible": 12,
             "failed": 0, "cancelled": 0, "best": {"rank": 1, "parameters": {"fast": 15, "slow": 50},
                                                   "sharpe_ratio": 1.2345}}
    assert result_line(sweep, op_type="sweep") == (
        "best fast=15, slow=50: sharpe_ratio 1.234 (12 of 30 variants met the objective)")
    none = {**sweep, "best": None, "eligible": 0, "no_best": "no variant met the objective (...): 30 with no trades"}
    assert result_line(none, op_type="sweep").startswith("no best: no variant met the objective")
    training = {"model": "planted@3", "model_name": "planted", "model_version": 3, "symbol": "P", "timeframes": ["1h"],
                "metrics": {"test_accuracy": 0.6234, "epochs_run": 5, "device": "cpu"}}
    assert result_line(training, op_type="training") == "model planted@3: test accuracy 0.623 after 5 epochs on cpu"
    walkforward = {"folds": [{}, {}, {}], "metrics": {"total_return_pct": -0.37, "sharpe_ratio": None,
                                                      "max_drawdown_pct": -3.0},
                   "trade_stats": {"trades": 24}, "efficiency": None, "buy_and_hold_return_pct": 7.4123}
    assert result_line(walkforward, op_type="walkforward") == (
        "3 folds out of sample: return -0.37 %, Sharpe -, max drawdown -3.00 %, 24 trades; efficiency -; "
        "buy and hold +7.41 %")
    # A type with no headline, or a result its headline cannot read, is its fields.
    assert result_line({"steps": 2, "duration": 0.0}, op_type="dummy") == "steps=2, duration=0"
    assert result_line({"steps": 2}, op_type="backtesting") == "steps=2"
    assert result_line({"steps": 2}, op_type="from_a_newer_platform") == "steps=2"
