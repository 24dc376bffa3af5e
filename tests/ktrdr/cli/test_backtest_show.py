"""A backtest as a user reads it at 80 columns: trades by time, the open position when it was left
open (``--no-close-at-end``), parameters as ``k=v``; and the strategies a request can name."""

from __future__ import annotations

import json
import re
from pathlib import Path

from coordinator.app import Coordinator
from ktrdr.natsd import NatsServer
from tests.backtesting import backtest_worker
from tests.conftest import MakeWorker
from tests.ktrdr.cli.running import cli


async def test_a_backtest_left_open_at_the_end_shows_its_trades_by_time_and_the_open_position(
        nats_server: NatsServer, coordinator: Coordinator, make_worker: MakeWorker, tmp_path: Path) -> None:
    home = str(tmp_path / "user")
    await backtest_worker(make_worker, "bt1", tmp_path / "worker-data")
    done = await cli(nats_server, "data", "synth", "--symbol", "SYN", "--bars", "1500", KTRDR_HOME=home)
    assert done.returncode == 0, done.stderr
    done = await cli(nats_server, "backtest", "run", "sma_crossover", "-s", "SYN", "--set", "fast=5",
                     "--no-close-at-end", "--follow", KTRDR_HOME=home)
    assert done.returncode == 0, done.stdout + done.stderr
    op_id = done.stdout.split("submitted ")[1].split()[0]
    summary = next(line for line in done.stdout.splitlines() if line.startswith(f"{op_id}: completed"))
    assert "{" not in summary and "'" not in summary  # k=v, not a Python dict

    done = await cli(nats_server, "backtest", "show", op_id, KTRDR_HOME=home)
    assert done.returncode == 0, done.stderr
    assert "parameters fast=5" in done.stdout and "slow=20, last position left open\n" in done.stdout
    assert "(times UTC)" in done.stdout
    # Times as every command prints them (render.timestamp: YYYY-MM-DD HH:MM:SS, UTC).
    assert re.search(r"^2020-\d\d-\d\d \d\d:\d\d:\d\d +2020-\d\d-\d\d \d\d:\d\d:\d\d +(long|short) +\d+ +[\d.,]+ ",
                     done.stdout, re.MULTILINE), done.stdout
    assert re.search(r"^open at the end: long \d+ @ [\d.,]+ since 2020-\d\d-\d\d \d\d:\d\d:\d\d,",
                     done.stdout, re.MULTILINE), done.stdout
    assert "…" not in done.stdout
    assert all(len(line) <= 80 for line in done.stdout.splitlines())

    shown = json.loads((await cli(nats_server, "backtest", "show", op_id, "--json", KTRDR_HOME=home)).stdout)
    assert shown["config"]["close_at_end"] is False
    assert len(shown["trades"]["entry_time"]) == len(shown["trades"]["pnl"]) > 0
    # A crossover strategy is in the market about half the time: run again closing at the end, it either
    # was flat at the end (no open position, same trades) or has one trade more.
    closed = await cli(nats_server, "backtest", "run", "sma_crossover", "-s", "SYN", "--set", "fast=5",
                       "--follow", "--json", KTRDR_HOME=home)
    closed_op = json.loads(closed.stdout[closed.stdout.index("{"):])
    again = json.loads((await cli(nats_server, "backtest", "show", closed_op["op_id"], "--json",
                                  KTRDR_HOME=home)).stdout)
    assert again["open_position"] is None
    assert len(again["trades"]["pnl"]) == len(shown["trades"]["pnl"]) + (1 if shown["open_position"] else 0)


async def test_ops_show_prints_params_and_result_as_key_value_pairs(
        nats_server: NatsServer, coordinator: Coordinator, make_worker: MakeWorker) -> None:
    await make_worker("w1")
    done = await cli(nats_server, "dummy", "--duration", "0", "--steps", "2", "--follow")
    assert done.returncode == 0, done.stderr
    op_id = done.stdout.split("submitted ")[1].split()[0]
    done = await cli(nats_server, "ops", "show", op_id)
    assert done.returncode == 0, done.stderr
    assert re.search(r"params\s+│ duration=0, steps=2, fail=False", done.stdout), done.stdout
    assert re.search(r"result\s+│ steps=2, duration=0", done.stdout) and "{'" not in done.stdout


async def test_strategies_list_and_show_at_80_columns() -> None:
    done = await cli(None, "strategies", "list")
    assert done.returncode == 0, done.stderr
    assert all(len(line) <= 80 for line in done.stdout.splitlines())
    for name, kind, pairs in (("sma_crossover", "rule-based", "fast=10"), ("rsi_mean_reversion", "rule-based",
                                                                          "period=14"),
                              ("neuro_mean_reversion", "neuro-fuzzy", "rsi_period=14")):
        assert re.search(rf"│ {name}\s+│ {kind}\s+│ {re.escape(pairs)}", done.stdout), done.stdout
    assert "│ label_threshold=0.005 │" in done.stdout  # a name=value pair is never cut
    shown = json.loads((await cli(None, "strategies", "show", "sma_crossover", "--json")).stdout)
    assert shown["kind"] == "rule-based" and shown["parameters"]["slow"]["value"] == 20
    assert shown["yaml"].startswith("name: sma_crossover")
    missing = await cli(None, "strategies", "show", "nope")
    assert missing.returncode == 2 and missing.stderr.startswith("error: unknown strategy 'nope'")


async def test_strategies_list_shows_the_strategies_directory_and_a_broken_file(tmp_path: Path) -> None:
    folder = tmp_path / "strategies"
    folder.mkdir()
    (folder / "mine.yaml").write_text((Path(__file__).parents[3] / "ktrdr/strategies/sma_crossover.yaml")
                                      .read_text().replace("name: sma_crossover", "name: mine"))
    (folder / "broken.yaml").write_text("name: broken\nrules: {}\n")
    done = await cli(None, "strategies", "list", "--json", KTRDR_STRATEGIES_DIR=str(folder))
    found = {s["name"]: s for s in json.loads(done.stdout)}
    assert found["mine"]["where"] == str(folder) and found["mine"]["parameters"] == {"fast": 10, "slow": 20}
    assert found["broken"]["error"] and found["broken"]["kind"] is None


def test_a_carried_trade_shows_the_time_it_was_entered_in_an_earlier_fold() -> None:
    from ktrdr.cli.backtest import _with_times

    index_ns = [1_577_836_800_000_000_000 + h * 3_600_000_000_000 for h in range(3)]  # 2020-01-01 00:00..02:00
    doc = {"index_ns": index_ns, "trades": {"entry_bar": [-5, 1], "exit_bar": [1, 3]},
           "carry_in": {"cash": 1.0, "position": {"entry_time": "2019-12-31T19:00:00+00:00"}}}
    trades = _with_times(doc)["trades"]
    assert trades["entry_time"] == ["2019-12-31 19:00", "2020-01-01 01:00"]
    assert trades["exit_time"] == ["2020-01-01 01:00", "2020-01-01 02:00"]
