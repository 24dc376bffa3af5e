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
