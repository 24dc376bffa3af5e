"""``ktrdr data`` and ``ktrdr backtest`` as a user runs them: real processes, a real platform."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from nats.aio.client import Client

from coordinator.app import Coordinator
from ktrdr.natsd import NatsServer, free_port
from subjects import roles
from tests.backtesting import backtest_worker
from tests.conftest import ROOT, MakeWorker, role_env
from tests.ktrdr.training import planted


async def ktrdr(url: str, home: Path, *args: str) -> tuple[int, str]:
    env = {**os.environ, **role_env(roles.CLIENT), "KTRDR_NATS_URL": url, "KTRDR_HOME": str(home), "COLUMNS": "200"}
    proc = subprocess.Popen([sys.executable, "-m", "ktrdr.cli.app", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = await asyncio.to_thread(proc.communicate, timeout=60)
    return proc.returncode, out


def last_json(out: str) -> object:
    return json.loads(out[min(i for i in (out.find("{"), out.find("[")) if i >= 0):])


async def test_data_synth_stores_and_publishes_then_list_and_show_describe_it(
        nats_server: NatsServer, tmp_path: Path) -> None:
    code, out = await ktrdr(nats_server.url, tmp_path, "data", "synth", "--symbol", "SYN", "--timeframe", "1h",
                            "--bars", "500", "--seed", "3")
    assert code == 0, out
    assert "500 bars" in out and "published to the 'data' bucket as SYN/1h" in out
    code, out = await ktrdr(nats_server.url, tmp_path, "data", "list", "--json")
    assert code == 0, out
    assert last_json(out) == [{"symbol": "SYN", "timeframe": "1h", "bars": 500,
                               "start": "2020-01-01T00:00:00+00:00", "end": "2020-01-21T19:00:00+00:00"}]
    code, out = await ktrdr(nats_server.url, tmp_path, "data", "show", "SYN", "--timeframe", "1h", "--json")
    shown = last_json(out)
    assert isinstance(shown, dict) and shown["bars"] == 500 and shown["gaps"] == []
    code, out = await ktrdr(nats_server.url, tmp_path, "data", "show", "NOPE", "--timeframe", "1h")
    assert code == 2 and "no data for NOPE 1h" in out


async def test_data_synth_without_nats_stores_locally_and_says_it_did_not_publish(tmp_path: Path) -> None:
    code, out = await ktrdr(f"nats://127.0.0.1:{free_port()}", tmp_path, "data", "synth", "--bars", "100")
    assert code == 0, out
    assert "not published" in out and "is not reachable" in out
    assert (tmp_path / "data" / "SYNTH" / "1h.npz").is_file()


async def test_backtest_run_follow_show_plot_and_sweep(
        nats_server: NatsServer, coordinator: Coordinator, make_worker: MakeWorker, tmp_path: Path) -> None:
    home = tmp_path / "user"
    await backtest_worker(make_worker, "bt1", tmp_path / "worker-data")
    code, out = await ktrdr(nats_server.url, home, "data", "synth", "--symbol", "SYN", "--bars", "2000")
    assert code == 0, out

    code, out = await ktrdr(nats_server.url, home, "backtest", "run", "sma_crossover", "--symbol", "SYN",
                            "--timeframe", "1h", "--start", "2020-01-05", "--set", "fast=8", "--follow")
    assert code == 0, out
    assert ": completed" in out
    op_id = out.split("submitted ")[1].split()[0]

    code, out = await ktrdr(nats_server.url, home, "backtest", "show", op_id)
    assert code == 0, out
    assert "sharpe_ratio" in out and "trade(s)" in out and "parameters fast=8" in out
    code, out = await ktrdr(nats_server.url, home, "backtest", "plot", op_id, "-o", str(tmp_path / "eq.png"))
    assert code == 0, out
    assert (tmp_path / "eq.png").read_bytes()[:4] == b"\x89PNG"

    code, out = await ktrdr(nats_server.url, home, "backtest", "sweep", "sma_crossover", "-p", "fast=5,10",
                            "-p", "slow=30:40:10", "--symbol", "SYN", "--metric", "total_return_pct",
                            "--require", "fast < slow", "--follow")
    assert code == 0, out
    assert "best 4 of 4 by total_return_pct (max), at least 1 trade, fast < slow" in out
    sweep_id = out.split("submitted ")[1].split()[0]
    code, out = await ktrdr(nats_server.url, home, "backtest", "heatmap", sweep_id, "--x", "fast", "--y", "slow",
                            "--json")
    assert code == 0, out
    surface = json.loads(out)
    code, out = await ktrdr(nats_server.url, home, "backtest", "show", sweep_id, "--json")
    ranking = json.loads(out)["ranking"]
    for entry in ranking:  # every cell is its variant's value, by value
        p = entry["parameters"]
        cell = surface["cells"][surface["y_values"].index(p["slow"])][surface["x_values"].index(p["fast"])]
        assert cell == entry["metrics"]["total_return_pct"]
        assert entry["neighbours"] == 4 and entry["neighbourhood"] is not None  # a 2x2 grid: all adjacent
    code, out = await ktrdr(nats_server.url, home, "backtest", "heatmap", sweep_id, "--x", "fast", "--y", "slow",
                            "-o", str(tmp_path / "heat.png"))
    assert code == 0 and (tmp_path / "heat.png").read_bytes()[:4] == b"\x89PNG", out
    code, out = await ktrdr(nats_server.url, home, "backtest", "variant", sweep_id, "--rank", "2", "--follow")
    assert code == 0 and ": completed" in out, out
    variant_id = out.split("submitted ")[1].split()[0]
    code, out = await ktrdr(nats_server.url, home, "backtest", "compare", op_id, variant_id, "--json",
                            "-o", str(tmp_path / "cmp.png"))
    assert code == 0, out
    compared = last_json(out)
    code, out = await ktrdr(nats_server.url, home, "backtest", "show", variant_id, "--json")
    assert compared["metrics"]["sharpe_ratio"][variant_id] == json.loads(out)["metrics"]["sharpe_ratio"]
    code, out = await ktrdr(nats_server.url, home, "backtest", "compare", op_id, variant_id,
                            "-o", str(tmp_path / "cmp.png"))
    assert code == 0 and "total_return_pct" in out and (tmp_path / "cmp.png").read_bytes()[:4] == b"\x89PNG", out
    code, out = await ktrdr(nats_server.url, home, "backtest", "compare", op_id, sweep_id)
    assert code == 2 and "is a sweep" in out, out
    code, out = await ktrdr(nats_server.url, home, "backtest", "plot", variant_id, "-o", str(tmp_path / "v.png"))
    assert code == 0, out
    # The sweep's blocks and its full result are children: listed only with --parent (or --all).
    code, out = await ktrdr(nats_server.url, home, "ops", "list", "--json")
    listed = json.loads(out)
    assert code == 0 and {o["op_id"] for o in listed["operations"]} == {op_id, sweep_id, variant_id}
    code, out = await ktrdr(nats_server.url, home, "ops", "list", "--parent", sweep_id, "--json")
    children = json.loads(out)["operations"]
    assert code == 0 and {o["type"] for o in children} == {"backtest_block", "backtesting"}
    assert all(o["parent_id"] == sweep_id for o in children)
    code, out = await ktrdr(nats_server.url, home, "ops", "list", "--all", "--json")
    assert json.loads(out)["total"] == 3 + len(children)

    code, out = await ktrdr(nats_server.url, home, "backtest", "walkforward", "sma_crossover", "--symbol", "SYN",
                            "-p", "fast=5,10", "-p", "slow=30,40", "--folds", "2", "--follow")
    assert code == 0, out
    assert "walk-forward (grid)" in out and "efficiency" in out
    wf_id = out.split("submitted ")[1].split()[0]
    code, out = await ktrdr(nats_server.url, home, "backtest", "plot", wf_id, "-o", str(tmp_path / "wf.png"))
    assert code == 0 and (tmp_path / "wf.png").read_bytes()[:4] == b"\x89PNG", out
    code, out = await ktrdr(nats_server.url, home, "backtest", "walkforward", "sma_crossover", "--symbol", "SYN",
                            "--folds", "2")
    assert code == 2 and "grid" in out  # a rule-based strategy needs the grid each fold sweeps

    # Any declared type, from its declaration: listed, and submitted with its params.
    code, out = await ktrdr(nats_server.url, home, "ops", "types", "--json")
    declared = {t["name"] for t in json.loads(out)}
    assert code == 0 and {"backtesting", "sweep", "walkforward", "backtest_block"} <= declared
    code, out = await ktrdr(nats_server.url, home, "ops", "submit", "backtesting", "--set", "strategy=sma_crossover",
                            "--set", "symbol=SYN", "--set", "timeframe=1h", "--set", "parameters={\"fast\": 6}",
                            "--follow")
    assert code == 0 and ": completed" in out, out
    code, out = await ktrdr(nats_server.url, home, "ops", "submit", "backtesting", "--set", "symbol=SYN")
    assert code == 2 and "strategy" in out, out

    # Retention on demand: a dry run counts, a prune archives; archived ops are still read by id.
    code, out = await ktrdr(nats_server.url, home, "ops", "prune", "--older-than", "0s", "--dry-run")
    assert code == 0 and "would be archived" in out, out
    code, out = await ktrdr(nats_server.url, home, "ops", "prune", "--older-than", "0s", "--json")
    assert code == 0 and json.loads(out)["moved"] > 0, out
    code, out = await ktrdr(nats_server.url, home, "ops", "show", op_id)
    assert code == 0 and "completed" in out, out
    code, out = await ktrdr(nats_server.url, home, "ops", "list", "--json")
    assert json.loads(out)["operations"] == []
    code, out = await ktrdr(nats_server.url, home, "ops", "list", "--archived", "--search", op_id[-8:], "--json")
    assert [o["op_id"] for o in json.loads(out)["operations"]] == [op_id]

    code, out = await ktrdr(nats_server.url, home, "backtest", "run", "no_such_strategy", "--symbol", "SYN")
    assert code == 2 and "no_such_strategy" in out
    code, out = await ktrdr(nats_server.url, home, "backtest", "run", "sma_crossover", "--symbol", "SYN",
                            "--timeframe", "7m")
    assert code == 2 and "timeframe" in out


async def test_a_model_driven_backtest_on_its_training_range_says_so_in_run_and_show(
        nats_server: NatsServer, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    home = tmp_path / "user"
    bars = await planted.publish_planted_bars(nc.jetstream(), tmp_path / "origin")
    await planted.store_planted_model(nc.jetstream(), bars.loc[:"2020-02-29 23:00"])
    await backtest_worker(make_worker, "bt1", tmp_path / "worker-data")
    strategy = tmp_path / "planted.yaml"
    strategy.write_text(planted.STRATEGY_YAML)
    warning = "in-sample: the backtest range overlaps the model's training data (2020-01-01..2020-02-29 23:00)"

    code, out = await ktrdr(nats_server.url, home, "backtest", "run", str(strategy), "--symbol", planted.SYMBOL,
                            "--follow")
    assert code == 0, out
    assert ": completed" in out and "; model planted@1" in out and f"warning: {warning}" in out
    code, out = await ktrdr(nats_server.url, home, "backtest", "show", out.split("submitted ")[1].split()[0])
    assert code == 0, out
    assert "model planted@1" in out and f"warning: {warning}" in out

    code, out = await ktrdr(nats_server.url, home, "backtest", "run", str(strategy), "--symbol", planted.SYMBOL,
                            "--start", "2020-03-01", "--follow")
    assert code == 0, out
    assert "; model planted@1" in out and "in-sample" not in out
    code, out = await ktrdr(nats_server.url, home, "backtest", "show", out.split("submitted ")[1].split()[0])
    assert code == 0, out
    assert "model planted@1" in out and "warning" not in out
