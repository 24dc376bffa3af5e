"""Tables at 80 columns keep every id whole: it is what a user pastes into the next command."""

from __future__ import annotations

from datetime import UTC, datetime

from rich.console import Console

from ktrdr.cli.render import ops_table, workers_table
from subjects.models import Operation, OpStatus, WorkerLease


def rendered(table: object) -> str:
    console = Console(width=80, record=True, force_terminal=False)
    console.print(table)
    return console.export_text()


def test_operation_ids_are_never_cut_at_80_columns() -> None:
    ops = [Operation(op_id="walkforward-6b5fedf4d926", type="walkforward", status=OpStatus.COMPLETED),
           Operation(op_id="backtesting-1e08cea7dcdb-full0", type="backtesting", status=OpStatus.RUNNING,
                     worker_id="a-long-host-name-backtest-0", route="cpu")]
    text = rendered(ops_table(ops, 2))
    assert all(op.op_id in text for op in ops)


def test_worker_ids_are_never_cut_at_80_columns() -> None:
    lease = WorkerLease(worker_id="a-long-host-name-backtest-0", worker_type="backtest", capabilities=["backtest.cpu"],
                        host="a-long-host-name", pid=1, version="0", slots=1, started_at=datetime.now(UTC))
    assert lease.worker_id in rendered(workers_table([lease]))
