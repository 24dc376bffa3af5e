"""Walk-forward analysis: folds over the range, a sweep on each in-sample fold, its best variant
backtested out of sample, the out-of-sample curves joined; cancelled as a whole; resumed after a
coordinator restart. On planted-pattern data: a cycle that a moving-average pair can follow."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from nats.aio.client import Client

from coordinator.app import Coordinator
from ktrdr.backtest import BacktestConfig, run_backtest
from ktrdr.backtest.result import BacktestResult
from ktrdr.backtest.walkforward import stitch
from ktrdr.data import DataStore
from ktrdr.data.shared import publish_dataset
from ktrdr.natsd import NatsServer
from ktrdr.results import get_result
from ktrdr.strategy import load_strategy, with_parameters
from subjects import names
from subjects.models import Operation, OpStatus, SubmitRequest
from subjects.params import CarryIn
from tests.backtesting import TIMEFRAME, backtest_worker
from tests.conftest import MakeWorker, SpawnWorker, coordinator_settings
from tests.coordinator.test_sweeps import gate
from tests.support import assert_eventually, wait_status

BARS = 1200
GRID = {"fast": [4, 8], "slow": [24, 48]}


def planted(bars: int = BARS, *, seed: int = 3) -> pd.DataFrame:
    """Hourly bars following a 120-bar cycle with noise: some moving-average pairs ride it."""
    rng = np.random.default_rng(seed)
    t = np.arange(bars)
    close = 100 + 8 * np.sin(2 * np.pi * t / 120) + np.cumsum(rng.normal(0, 0.3, bars))
    index = pd.date_range("2021-01-01", periods=bars, freq="h", tz="UTC", name="timestamp")
    spread = np.abs(rng.normal(0, 0.2, bars))
    return pd.DataFrame({"open": close, "high": close + spread, "low": close - spread, "close": close,
                         "volume": np.full(bars, 1000.0)}, index=index)


async def publish(nc: Client, root: Path, symbol: str, bars: pd.DataFrame) -> None:
    store = DataStore(root=root)
    store.save(symbol, TIMEFRAME, bars)
    await publish_dataset(nc.jetstream(), store, symbol, TIMEFRAME)


def params(symbol: str = "WFA", **overrides: Any) -> dict[str, Any]:
    return {"strategy": "sma_crossover", "symbol": symbol, "timeframe": TIMEFRAME, "folds": 3, "ratio": 2.0,
            "grid": GRID, "metric": "total_return_pct", **overrides}


def descendants(coordinator: Coordinator, op_id: str) -> list[Operation]:
    found: list[Operation] = []
    for op in coordinator.ops.all():
        if op.parent_id == op_id:
            found += [op, *descendants(coordinator, op.op_id)]
    return found


async def run_walkforward(api: httpx.AsyncClient, coordinator: Coordinator, body: dict[str, Any]) -> Operation:
    created = await api.post("/api/v1/backtests/walkforward", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["params"]["approach"] == "grid"
    done = await wait_status(coordinator, created.json()["op_id"], OpStatus.COMPLETED, OpStatus.FAILED, timeout=60)
    assert done.status is OpStatus.COMPLETED, done.error
    return done


async def test_a_walkforward_chooses_in_sample_tests_out_of_sample_and_joins_the_curves(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    await publish(nc, tmp_path / "pub", "WFA", planted())
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1")
    await backtest_worker(make_worker, "bt2", tmp_path / "bt2")
    done = await run_walkforward(api, coordinator, params())

    folds = done.info["plan"]["folds"]
    assert len(folds) == 3 and done.result is not None and len(done.result["folds"]) == 3
    for a, b in zip(folds, folds[1:], strict=False):
        assert a["out_end"] < b["out_start"]  # ordered, out-of-sample windows disjoint
    for fold in folds:
        assert fold["in_start"] <= fold["in_end"] < fold["out_start"] <= fold["out_end"]
    children = {c.op_id.rsplit("-", 1)[1]: c for c in descendants(coordinator, done.op_id)
                if c.parent_id == done.op_id}
    assert sorted(children) == ["f0is", "f0oos", "f1is", "f1oos", "f2is", "f2oos"]
    for fold in folds:
        sweep, oos = children[f"f{fold['index']}is"], children[f"f{fold['index']}oos"]
        assert sweep.type == "sweep" and pd.Timestamp(sweep.params["end"]) == pd.Timestamp(fold["in_end"])
        assert pd.Timestamp(oos.params["start"]) == pd.Timestamp(fold["out_start"])
        best = sweep.result["best"]["parameters"]  # type: ignore[index]
        assert oos.params["parameters"] == best
        assert done.result["folds"][fold["index"]]["chosen"] == best

    # The stitched curve is the out-of-sample backtests joined, each compounding on the last.
    js = nc.jetstream()
    doc = json.loads(await get_result(js, done) or b"{}")
    curves = []
    for fold in folds:
        result = BacktestResult.from_json_bytes(await get_result(js, children[f"f{fold['index']}oos"]) or b"")
        curves.append((result.index_ns, result.equity))
    index_ns, equity = stitch(curves, initial_capital=100_000.0)
    assert doc["index_ns"] == index_ns.tolist() and doc["equity"] == equity.tolist()
    assert doc["metrics"]["total_return_pct"] == pytest.approx(100 * (equity[-1] / 100_000.0 - 1))
    assert done.progress is not None and done.progress.percentage == 100.0


async def test_out_of_sample_bars_do_not_reach_their_own_folds_selection(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    bars = planted()
    await publish(nc, tmp_path / "pub", "WFA", bars)
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1")
    await backtest_worker(make_worker, "bt2", tmp_path / "bt2")
    first = await run_walkforward(api, coordinator, params("WFA"))
    fold1 = first.info["plan"]["folds"][1]
    # The same bars, with fold 1's out-of-sample window turned upside down.
    perturbed = bars.copy()
    inside = (perturbed.index >= pd.Timestamp(fold1["out_start"])) & (perturbed.index <= pd.Timestamp(fold1["out_end"]))
    flipped = 2 * perturbed.loc[inside, "close"].mean() - perturbed.loc[inside, ["open", "high", "low", "close"]]
    perturbed.loc[inside, ["open", "close"]] = flipped[["open", "close"]].to_numpy()
    perturbed.loc[inside, "high"], perturbed.loc[inside, "low"] = flipped["low"], flipped["high"]
    await publish(nc, tmp_path / "pub", "WFB", perturbed)
    second = await run_walkforward(api, coordinator, params("WFB"))

    assert second.info["plan"]["folds"] == first.info["plan"]["folds"]
    a, b = first.result["folds"], second.result["folds"]  # type: ignore[index]
    for k in (0, 1):  # selected on bars before fold 1's out-of-sample window: untouched
        assert (b[k]["chosen"], b[k]["in_sample"]) == (a[k]["chosen"], a[k]["in_sample"])
    assert b[1]["out_of_sample"] != a[1]["out_of_sample"]  # the perturbation did reach its test


async def test_cancelling_a_walkforward_cancels_its_sweeps_and_their_backtests(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    await publish(nc, tmp_path / "pub", "WFA", planted())
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1", on_progress=gate(threading.Event()))
    wf_id = (await api.post("/api/v1/backtests/walkforward", json=params())).json()["op_id"]
    await assert_eventually(lambda: [c for c in descendants(coordinator, wf_id) if c.status is OpStatus.RUNNING
                                     and c.type == "backtest_block"])
    reply = await api.request("DELETE", f"/api/v1/operations/{wf_id}", json={"reason": "enough"})
    assert reply.status_code == 200 and reply.json()["accepted"] is True

    def all_ended() -> list[Operation] | None:
        found = descendants(coordinator, wf_id)
        # Three sweeps of one block each (four variants: under the smallest block).
        return found if len(found) == 3 + 3 and all(c.status is OpStatus.CANCELLED for c in found) else None

    ended = await assert_eventually(all_ended, timeout=20)
    assert {c.type for c in ended} == {"sweep", "backtest_block"}
    assert coordinator.ops.get(wf_id).status is OpStatus.CANCELLED  # type: ignore[union-attr]


async def test_a_walkforward_survives_a_coordinator_restart(
        nats_server: NatsServer, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    await publish(nc, tmp_path / "pub", "WFA", planted())
    wf = await coordinator.dispatcher.submit(SubmitRequest(type="walkforward", params={**params(), "approach": "grid"}))
    # No worker yet: the sweeps and their blocks are recorded, none has run.
    await assert_eventually(lambda: len(descendants(coordinator, wf.op_id)) == 3 + 3)
    await coordinator.stop()

    second = Coordinator(settings=coordinator_settings(nats_server.url))
    await second.start()
    try:
        await backtest_worker(make_worker, "bt1", tmp_path / "bt1")
        done = await wait_status(second, wf.op_id, OpStatus.COMPLETED, OpStatus.FAILED, timeout=60)
        assert done.status is OpStatus.COMPLETED, done.error
        assert len(descendants(second, wf.op_id)) == 3 + 3 + 3  # nothing submitted twice
    finally:
        await second.stop()


@pytest.mark.parametrize(("body", "field"), [
    ({"folds": None}, "body"),  # neither folds nor lengths
    ({"in_sample": "6mo", "out_of_sample": 100, "folds": None}, "in_sample"),
    ({"grid": None}, "grid"),  # rule-based needs its grid
    ({"strategy": "neuro_mean_reversion", "grid": GRID}, "grid"),  # neuro-fuzzy trains, sweeps nothing
    ({"model": "m@1"}, "body"),
    ({"carry_in": {}, "carry": True}, "carry_in"),  # its folds carry their own positions
])
async def test_a_bad_walkforward_is_refused_naming_the_field(
        api: httpx.AsyncClient, body: dict[str, Any], field: str) -> None:
    reply = await api.post("/api/v1/backtests/walkforward", json={**params(), **body})
    assert reply.status_code == 422, reply.text
    detail = reply.json()["detail"][0]
    assert detail["field"] == field or detail["field"].startswith(field), detail


async def test_a_walkforward_whose_bars_cannot_make_a_fold_fails_saying_why(
        api: httpx.AsyncClient, coordinator: Coordinator, nc: Client, tmp_path: Path) -> None:
    await publish(nc, tmp_path / "pub", "WFA", planted(60))
    op_id = (await api.post("/api/v1/backtests/walkforward", json=params(in_sample=500, out_of_sample=100,
                                                                          folds=None))).json()["op_id"]
    failed = await wait_status(coordinator, op_id, OpStatus.FAILED)
    assert "60 bars" in (failed.error or ""), failed.error


async def test_a_neuro_fuzzy_walkforward_trains_on_each_fold_and_tests_that_model_out_of_sample(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    from tests.ktrdr.training.planted import SYMBOL, publish_planted_bars, strategy_yaml
    from worker_training.handler import make_training_handler

    await publish_planted_bars(nc.jetstream(), tmp_path / "pub", bars=1500)
    await make_worker("cpu1", capabilities=[names.CAP_TRAINING_CPU], slots=2,
                      handlers={"training": make_training_handler(device="cpu", data_root=tmp_path / "cpu1")})
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1")
    body = {"strategy": strategy_yaml(epochs=2), "symbol": SYMBOL, "timeframe": TIMEFRAME, "folds": 2, "ratio": 2.0}
    created = await api.post("/api/v1/backtests/walkforward", json=body)
    assert created.status_code == 201, created.text
    assert created.json()["params"]["approach"] == "training"
    done = await wait_status(coordinator, created.json()["op_id"], OpStatus.COMPLETED, OpStatus.FAILED, timeout=90)
    assert done.status is OpStatus.COMPLETED, done.error

    children = {c.op_id.rsplit("-", 1)[1]: c for c in descendants(coordinator, done.op_id)}
    assert sorted(children) == ["f0is", "f0isbt", "f0oos", "f1is", "f1isbt", "f1oos"]
    for k, row in enumerate(done.result["folds"]):  # type: ignore[index]
        training, oos = children[f"f{k}is"], children[f"f{k}oos"]
        assert training.type == "training" and training.route == "cpu"
        assert pd.Timestamp(training.params["end"]) < pd.Timestamp(oos.params["start"])
        assert oos.params["model"] == training.result["model"] == row["chosen"]["model"]  # type: ignore[index]
        assert oos.result["in_sample_bars"] == 0  # type: ignore[index]  # the model never saw these bars
    assert done.result["efficiency"] is None or isinstance(done.result["efficiency"], float)  # type: ignore[index]


async def test_a_walkforward_loses_nothing_when_a_worker_holding_its_child_is_killed(
        coordinator: Coordinator, make_worker: MakeWorker, spawn_worker: SpawnWorker, nc: Client,
        tmp_path: Path) -> None:
    await publish(nc, tmp_path / "pub", "WFA", planted())
    victim = spawn_worker("victim", capabilities=names.CAP_BACKTEST_CPU, KTRDR_STANDIN_SLOW_BACKTEST_S="60",
                          KTRDR_DATA_DIR=str(tmp_path / "victim"))
    await assert_eventually(lambda: "victim" in coordinator.registry.workers, timeout=20)
    wf = await coordinator.layer.submit(SubmitRequest(type="walkforward", params=params()))

    def held() -> Operation | None:
        return next((c for c in descendants(coordinator, wf.op_id)
                     if c.worker_id == "victim" and c.status is OpStatus.RUNNING), None)

    child = await assert_eventually(held, timeout=20)
    victim.send_signal(signal.SIGKILL)
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1")
    done = await wait_status(coordinator, wf.op_id, OpStatus.COMPLETED, OpStatus.FAILED, timeout=60)
    assert done.status is OpStatus.COMPLETED, done.error
    retried = coordinator.ops.get(child.op_id)
    assert retried is not None and retried.status is OpStatus.COMPLETED
    assert retried.attempt == 2 and retried.worker_id == "bt1"
    assert any("victim lost" in w for w in retried.warnings), retried.warnings


async def test_every_window_warms_up_on_the_bars_its_variant_needs_unless_told_not_to(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    await publish(nc, tmp_path / "pub", "WFA", planted())
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1")
    warm = await run_walkforward(api, coordinator, params())
    children = {c.op_id.rsplit("-", 1)[-1]: c for c in descendants(coordinator, warm.op_id)}
    assert warm.result is not None
    for fold in warm.result["folds"]:
        oos = children[f"f{fold['fold']}oos"]
        # A crossover needs its slow average: as many bars as its period, before the window.
        assert fold["warmup_bars"] == oos.params["warmup_bars"] == fold["chosen"]["slow"]
        assert oos.result is not None and oos.result["start"] == fold["out_start"]
        insample = children[f"f{fold['fold']}is"]
        assert insample.params["warmup_bars"] == max(GRID["slow"])  # the grid's slowest, for every variant
    cold = await run_walkforward(api, coordinator, params(warmup=False))
    assert cold.result is not None and [f["warmup_bars"] for f in cold.result["folds"]] == [0, 0, 0]
    assert all(c.params.get("warmup_bars", 0) == 0 for c in descendants(coordinator, cold.op_id)
               if c.type in ("backtesting", "sweep"))


async def test_the_result_pools_out_of_sample_trades_buy_and_hold_and_what_the_folds_chose(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    await publish(nc, tmp_path / "pub", "WFA", planted())
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1")
    done = await run_walkforward(api, coordinator, params(close_at_end=False))
    js = nc.jetstream()
    doc = json.loads(await get_result(js, done) or b"{}")
    oos = sorted((c for c in descendants(coordinator, done.op_id) if c.op_id.endswith("oos")),
                 key=lambda c: c.op_id)
    pnl, hold = [], 1.0
    for child in oos:
        result = BacktestResult.from_json_bytes(await get_result(js, child) or b"")
        pnl += result.trades["pnl"].tolist()
        hold *= result.benchmark[-1] / result.benchmark[0]
    assert [t["pnl"] for t in doc["trades"]] == pnl and doc["trade_stats"]["trades"] == len(pnl)
    assert doc["trade_stats"]["total_pnl"] == pytest.approx(sum(pnl))
    assert all(t["entry_time"] <= t["exit_time"] for t in doc["trades"])
    assert doc["buy_and_hold_return_pct"] == pytest.approx(100 * (hold - 1))
    chosen = [f["chosen"] for f in doc["folds"]]
    assert doc["stability"]["fast"]["values"] == [c["fast"] for c in chosen]
    assert doc["fold_ends"].startswith("left open at each fold's end")


async def test_carried_folds_run_in_order_each_going_on_from_the_last_as_one_continuous_backtest(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    bars = planted()
    await publish(nc, tmp_path / "pub", "WFA", bars)
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1")
    await backtest_worker(make_worker, "bt2", tmp_path / "bt2")
    # A grid of one: every fold chooses the same parameters.
    done = await run_walkforward(api, coordinator, params(grid={"fast": [8], "slow": [24]}, carry=True))
    children = {c.op_id.rsplit("-", 1)[1]: c for c in descendants(coordinator, done.op_id)
                if c.parent_id == done.op_id}
    oos = [children[f"f{k}oos"] for k in range(3)]
    assert oos[0].params["carry_in"] is None and oos[0].params["capital"] == 100_000.0
    for before, after in zip(oos, oos[1:], strict=False):
        # Created once the fold before had completed, given the equity, cash and position it ended with.
        assert before.completed_at is not None and after.created_at >= before.completed_at
        end = before.result["carry_out"]  # type: ignore[index]
        assert after.params["capital"] == end["capital"]
        assert CarryIn.model_validate(after.params["carry_in"]) == CarryIn.model_validate(end["carry_in"])
        assert before.params["close_at_end"] is False
        assert after.params["warmup_bars"] == 24 + 1  # the bar before the window decides on what is carried
    assert oos[-1].params["close_at_end"] is True  # the last fold follows close_at_end
    assert done.result is not None and done.result["carry"] is True
    assert done.result["fold_ends"].startswith("carried into the next fold")
    assert done.result["folds"][1]["carried_in"]["side"] == 1  # planted: fold 0 ends long

    # The stitched curve and the pooled trades are one backtest over the joined windows, exactly.
    folds = done.info["plan"]["folds"]
    first, last = (bars.index.get_loc(pd.Timestamp(folds[i][k])) for i, k in ((0, "out_start"), (-1, "out_end")))
    strategy = with_parameters(load_strategy("sma_crossover"), {"fast": 8, "slow": 24})
    whole = run_backtest(bars.iloc[first - 24:last + 1], strategy, BacktestConfig(timeframe="1h"), trade_from=24)
    doc = json.loads(await get_result(nc.jetstream(), done) or b"{}")
    assert doc["index_ns"] == whole.index_ns.tolist() and doc["equity"] == whole.equity.tolist()
    one = whole.trades_frame()
    assert [pd.Timestamp(t["entry_time"]) for t in doc["trades"]] == one["entry_time"].tolist()
    assert [pd.Timestamp(t["exit_time"]) for t in doc["trades"]] == one["exit_time"].tolist()
    for column in ("size", "entry_price", "exit_price", "pnl", "commission", "bars_held"):
        assert [t[column] for t in doc["trades"]] == one[column].tolist(), column
    boundary = pd.Timestamp(folds[1]["out_start"])
    across = [t for t in doc["trades"] if pd.Timestamp(t["entry_time"]) < boundary <= pd.Timestamp(t["exit_time"])]
    assert len(across) == 1 and across[0]["fold"] == 1 and across[0]["entry_bar"] < 0  # once, where it closed
    assert doc["metrics"]["total_return_pct"] == pytest.approx(whole.metrics["total_return_pct"], rel=1e-12)
