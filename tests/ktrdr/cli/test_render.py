"""Tables at 80 columns keep every id whole: it is what a user pastes into the next command."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
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


def test_an_error_report_reads_as_one_line_with_headings_joined_by_a_space() -> None:
    from ktrdr.cli.render import error_line

    report = "invalid strategy x.yaml:\n  rules: needs entry_long\n  fast: not a number\n"
    assert error_line(report) == "invalid strategy x.yaml: rules: needs entry_long; fast: not a number"


def test_colons_in_an_error_are_text_not_emoji(capsys: pytest.CaptureFixture[str]) -> None:
    from ktrdr.cli.render import print_error

    print_error("range 'a:b:c' must be start:stop[:step]")
    assert capsys.readouterr().err.strip() == "error: range 'a:b:c' must be start:stop[:step]"


# --- tables that never split a word or an id, at any width and when piped (issue 24) ---------------

BOX = "│┃┏┓┗┛━─┡┩╇┳┻╋┣┫┼┬┴├┤┌┐└┘╭╮╰╯╷╵"
PUNCTUATION = ",;:()"
WIDTHS = (60, 80, 120, None)  # None: piped, COLUMNS unset


def _words(text: str) -> set[str]:
    return {w.strip(PUNCTUATION) for w in text.split()} - {""}


def _line_starting(lines: list[str], text: str) -> str:
    """The first line whose first word, borders aside, is ``text``'s first word (a header, a row)."""
    first = text.split()[0]
    return next(line for line in lines if line.translate({ord(c): " " for c in BOX}).split()[:1] == [first])


def _tables() -> dict[str, tuple[object, list[str], list[str], str]]:
    """Each table the list commands print: (table, the ids always shown, the ids of columns that may give
    way on a narrow terminal, every other text it may show)."""
    from ktrdr.cli.backtest import _ranking_table, _trades_table
    from ktrdr.cli.data import datasets_table
    from ktrdr.cli.render import op_details, type_label
    from ktrdr.cli.strategies import strategies_table
    from ktrdr.cli.train import models_table
    from ktrdr.models import ModelVersion
    from subjects.models import RunningOp

    now = datetime(2026, 11, 3, 14, 5, 9, tzinfo=UTC)
    ops = [Operation(op_id="walkforward-6b5fedf4d926", type="walkforward", status=OpStatus.COMPLETED,
                     created_at=now),
           Operation(op_id="backtesting-1e08cea7dcdb-full0", type="backtesting", status=OpStatus.RUNNING,
                     worker_id="a-long-host-name-backtest-0", route="cpu", created_at=now),
           Operation(op_id="training-77aa3f0e1b2c", type="training", status=OpStatus.PENDING, created_at=now),
           Operation(op_id="data_load-0a1b2c3d4e5f", type="data_load", status=OpStatus.FAILED, created_at=now)]
    leases = [WorkerLease(worker_id="a-long-host-name-backtest-0", worker_type="backtest", host="a-long-host-name",
                          capabilities=["backtest.cpu", "dummy.any"], pid=4242, version="0", slots=2,
                          started_at=now, running=[RunningOp(op_id=ops[1].op_id, attempt=1)]),
              WorkerLease(worker_id="gpu-box-training-gpu-0", worker_type="training", host="gpu-box", gpu=True,
                          device_name="NVIDIA H100 80GB HBM3", device_memory_mb=81559,
                          capabilities=["training.gpu"], pid=7, version="0", slots=1, started_at=now)]
    models = [ModelVersion(name="neuro_mean_reversion", version=12, size=1, digest="d", created_at=now.isoformat(),
                           metadata={"strategy": "neuro_mean_reversion", "symbol": "EURUSD",
                                     "timeframes": ["1h", "4h"], "op_id": "training-77aa3f0e1b2c",
                                     "metrics": {"test_accuracy": 0.6123, "epochs_run": 50, "device": "cuda"}})]
    datasets = [{"symbol": "EURUSD", "timeframe": "1h", "bars": 123_456, "start": "2020-01-01T00:00:00+00:00",
                 "end": "2024-06-28T21:00:00+00:00"}]
    strategies = [{"name": "neuro_mean_reversion", "where": "packaged", "kind": "neuro-fuzzy", "error": None,
                   "description": "Neuro-fuzzy mean reversion (v3.0 layout): RSI and the MACD histogram fuzzified "
                                  "into membership degrees feed an MLP.",
                   "parameters": {"rsi_period": 14, "label_threshold": 0.005}},
                  {"name": "sma_crossover", "where": "/home/someone/.ktrdr/strategies", "kind": "rule-based",
                   "error": None, "description": "Long when the fast SMA crosses above the slow one.",
                   "parameters": {"fast": 10, "slow": 20}}]
    ranking = {"sweep": "sweep-6b5fedf4d926", "metric": "sharpe_ratio", "completed": 2, "combinations": 2,
               "failed": [], "cancelled": 0, "eligible": 1,
               "ranking": [{"rank": 1, "parameters": {"fast": 10, "slow": 50},
                            "op_id": "backtesting-1e08cea7dcdb-full0", "neighbourhood": 0.8,
                            "metrics": {"sharpe_ratio": 1.23, "total_return_pct": 12.5, "max_drawdown_pct": 7.9,
                                        "trades": 42}},
                           {"rank": 2, "parameters": {"fast": 20, "slow": 30}, "op_id": None,
                            "excluded": "fewer trades than the objective's minimum",
                            "metrics": {"sharpe_ratio": 0.5, "total_return_pct": -1.0, "max_drawdown_pct": 12.0,
                                        "trades": 0}}]}
    trades = {"entry_bar": [0, 2], "exit_bar": [1, 3], "side": [1, -1], "size": [319, 12_000],
              "entry_price": [73.21, 1.0842], "exit_price": [74.5, 1.0811], "pnl": [411.5, -1234.75],
              "bars_held": [1, 1]}
    index_ns = [1_577_836_800_000_000_000 + h * 3_600_000_000_000 for h in range(4)]
    op_ids = [op.op_id for op in ops]
    label_text = " ".join(type_label(op.type) for op in ops)
    return {
        "ops list": (ops_table(ops, 4), op_ids, ["a-long-host-name-backtest-0"], label_text + " 1/2 cpu"),
        "ops show": (op_details(ops[1]), [ops[1].op_id, "a-long-host-name-backtest-0"], [], "cpu () -"),
        "workers": (workers_table(leases), [w.worker_id for w in leases], [ops[1].op_id + "#1"],
                    "NVIDIA H100 80GB HBM3 81559 MiB backtest.cpu, dummy.any training.gpu a-long-host-name:4242 "
                    "gpu-box:7 yes"),
        "models list": (models_table(models), ["neuro_mean_reversion@12"], ["EURUSD", "training-77aa3f0e1b2c"],
                        "neuro_mean_reversion 1h, 4h 50 cuda 0.612 test acc"),
        "data list": (datasets_table(datasets, "/home/someone/.ktrdr/data"), ["EURUSD", "1h"], [], "123,456"),
        "strategies list": (strategies_table(strategies), ["neuro_mean_reversion", "sma_crossover"],
                            ["label_threshold=0.005"],
                            " ".join(s["description"] for s in strategies) + " rsi_period=14 fast=10 slow=20 "
                            "neuro-fuzzy rule-based packaged /home/someone/.ktrdr/strategies"),
        "sweep ranking": (_ranking_table(ranking, limit=10), [], ["backtesting-1e08cea7dcdb-full0"],
                          "fast=10 slow=50 fast=20 slow=30 1.23 0.8 12.5 7.9 42 0.5 -1 12 0 "
                          + ranking["ranking"][1]["excluded"]),
        "trades": (_trades_table(trades, 20, index_ns), [], [], "long short 319 12,000 73.21 1.084 74.5 1.081 "
                                                                "411.5 -1,235 1"),
    }


def _render(table: object, width: int | None, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import io

    from ktrdr.cli.render import CliConsole

    monkeypatch.delenv("COLUMNS", raising=False)
    console = CliConsole(width=width, file=io.StringIO(), record=True, emoji=False)
    console.print(table)
    return console.export_text().splitlines()


def _allowed(table: object, extra: str) -> set[str]:
    from ktrdr.cli.render import FitTable, timestamp

    assert isinstance(table, FitTable)
    texts = [extra, str(table.title or ""), table.caption or "", "hidden at this width: (--wide shows them)",
             timestamp(datetime(2026, 11, 3, 14, 5, 9, tzinfo=UTC)), "times UTC"]
    texts += [c.header for c in table.columns] + [cell.plain for row in table.rows for cell in row]
    return set().union(*(_words(t) for t in texts))


@pytest.mark.parametrize("width", WIDTHS, ids=lambda w: "piped" if w is None else f"{w} columns")
@pytest.mark.parametrize("name", ["ops list", "ops show", "workers", "models list", "data list", "strategies list",
                                  "sweep ranking", "trades"])
def test_every_id_is_whole_and_no_word_is_split(name: str, width: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    table, ids, more_ids, extra = _tables()[name]
    lines = _render(table, width, monkeypatch)
    tokens = [w.strip(PUNCTUATION) for line in lines for w in line.translate({ord(c): " " for c in BOX}).split()]
    # Ids whole: those always shown, at every width; the others whenever their column is (the check below
    # finds any split), and always piped.
    for op_id in ids + (more_ids if width is None else []):
        assert op_id in tokens, f"{name} at {width}: {op_id} is not whole\n" + "\n".join(lines)
    allowed = _allowed(table, extra)
    split = sorted({t for t in tokens if t and t not in allowed})
    assert not split, f"{name} at {width}: split or unknown words {split}\n" + "\n".join(lines)
    if width is not None:
        assert all(len(line) <= width for line in lines), f"{name} wider than {width}\n" + "\n".join(lines)


@pytest.mark.parametrize("name", ["ops list", "workers", "models list", "data list", "strategies list",
                                  "sweep ranking", "trades"])
def test_piped_tables_take_their_natural_width(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from ktrdr.cli.render import NATURAL_WIDTH, CliConsole

    monkeypatch.delenv("COLUMNS", raising=False)
    assert CliConsole(file=__import__("io").StringIO()).width == NATURAL_WIDTH
    table, _, _, _ = _tables()[name]
    lines = _render(table, None, monkeypatch)
    assert not any("hidden at this width" in line for line in lines)
    for column in table.columns:  # type: ignore[attr-defined]
        assert column.header in "\n".join(lines)
    # A row is one line: every cell of the first row is on the line that holds its first cell.
    first = [cell.plain for cell in table.rows[0]]  # type: ignore[attr-defined]
    row = _line_starting(lines, first[0])
    assert all(cell.split("\n")[0] in row for cell in first), row


def test_columns_set_is_the_width_even_when_piped(monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from ktrdr.cli.render import CliConsole

    monkeypatch.setenv("COLUMNS", "80")
    assert CliConsole(file=io.StringIO()).width == 80


@pytest.mark.parametrize("name", ["ops list", "workers", "models list", "data list", "strategies list",
                                  "sweep ranking"])
def test_too_narrow_drops_named_columns_and_wide_shows_them_all(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    table, ids, more_ids, _ = _tables()[name]
    narrow = " ".join(" ".join(_render(table, 60, monkeypatch)).split())
    assert "hidden at this width:" in narrow and "--wide shows them" in narrow
    table.wide = True  # type: ignore[attr-defined]
    wide = _render(table, 60, monkeypatch)
    text = "\n".join(wide)
    assert "hidden at this width" not in text
    top = next(line for line in wide if line.lstrip().startswith("┏"))
    assert top.count("┳") + 1 == len(table.columns), f"{name} --wide: not every column\n{text}"  # type: ignore[attr-defined]
    tokens = {w for line in wide for w in line.translate({ord(c): " " for c in BOX}).split()}
    for column in table.columns:  # type: ignore[attr-defined]
        assert set(column.header.split()) <= tokens, f"{name} --wide: no {column.header!r} column\n{text}"
    assert all(i in text for i in ids + more_ids)


def test_an_op_type_is_shown_with_the_command_that_makes_it_where_they_differ() -> None:
    from ktrdr.cli.render import type_label

    assert type_label("backtesting") == "backtesting (backtest run)"
    assert type_label("training") == "training (train)"
    assert type_label("data_load") == "data_load (data fetch)"
    assert type_label("sweep") == "sweep" and type_label("walkforward") == "walkforward"
    assert type_label("dummy") == "dummy" and type_label("backtest_block") == "backtest_block"
    assert type_label("from_a_newer_platform") == "from_a_newer_platform"


def test_times_are_one_format_in_utc() -> None:
    import pandas as pd

    from ktrdr.cli.render import timestamp

    assert timestamp(datetime(2026, 11, 3, 14, 5, 9, 123456, tzinfo=UTC)) == "2026-11-03 14:05:09"
    assert timestamp("2026-11-03T15:05:09+01:00") == "2026-11-03 14:05:09"
    assert timestamp("2026-11-03T14:05:09Z") == "2026-11-03 14:05:09"
    assert timestamp(pd.Timestamp("2020-01-01 05:00")) == "2020-01-01 05:00:00"  # naive: UTC
    assert timestamp(None) == "-" and timestamp(pd.NaT) == "-"
