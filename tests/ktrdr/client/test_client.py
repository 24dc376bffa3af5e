"""The client a notebook uses, against a real platform: found from the context ``ktrdr up`` writes,
ops submitted with handles that wait and cancel, results read as pandas objects whose values are the
stored results' own.

The sync :class:`Client` blocks the thread that calls it; the coordinator under test runs on this
test's event loop, so every notebook-style block runs in a thread of its own.
"""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from nats.aio.client import Client as Nats

from coordinator.app import Coordinator
from ktrdr import AsyncClient, Client
from ktrdr.client import Invalid, KtrdrError, OpFailed
from ktrdr.client.context import Context, write_context
from ktrdr.client.results import BacktestResults, SweepResults, TrainingResults
from ktrdr.natsd import NatsServer
from ktrdr.results import get_result
from subjects import names, roles
from subjects.models import OpStatus
from tests.backtesting import SYMBOL, TIMEFRAME, backtest_worker, publish_synth
from tests.conftest import MakeWorker, creds
from tests.ktrdr.training.planted import publish_planted_bars, strategy_yaml
from worker_training.handler import make_training_handler


@pytest.fixture
def context(nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The default context in this test's KTRDR_HOME, as ``ktrdr up`` writes it, and nothing in the
    environment pointing elsewhere."""
    for var in ("KTRDR_NATS_URL", "KTRDR_NATS_CREDS", "KTRDR_NATS_CA", "KTRDR_CONTEXT"):
        monkeypatch.delenv(var, raising=False)
    home = tmp_path / "home"
    return write_context(home, Context(name="default", nats_url=nats_server.url,
                                       nats_creds=str(creds(roles.CLIENT))))


async def stored(nc: Nats, coordinator: Coordinator, op_id: str) -> dict[str, Any]:
    op = coordinator.ops.get(op_id)
    assert op is not None
    data = await get_result(nc.jetstream(), op)
    assert data is not None
    return json.loads(data)  # type: ignore[no-any-return]


async def test_a_backtest_comes_back_as_series_and_frames_equal_to_its_stored_result(
        context: Path, coordinator: Coordinator, make_worker: MakeWorker, nc: Nats, tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "origin")
    await backtest_worker(make_worker, "bt1", tmp_path / "worker")

    def notebook() -> tuple[str, BacktestResults, str, pd.DataFrame]:
        with Client() as c:
            run = c.backtest("sma_crossover", symbol=SYMBOL, timeframe=TIMEFRAME, parameters={"fast": 5},
                             op_id="backtesting-notebook-1")
            results = run.wait(progress=False)
            assert isinstance(results, BacktestResults)
            # The same id again is the same op, never a second one (as the CLI's retries rely on).
            again = c.backtest("sma_crossover", symbol=SYMBOL, timeframe=TIMEFRAME, parameters={"fast": 5},
                               op_id="backtesting-notebook-1")
            return run.op_id, results, again.op_id, c.ops(type="backtesting")

    op_id, results, again, listed = await asyncio.to_thread(notebook)
    assert op_id == again == "backtesting-notebook-1"
    assert list(listed.index) == [op_id] and listed.loc[op_id, "status"] == "completed"

    doc = await stored(nc, coordinator, op_id)
    assert results.equity.tolist() == doc["equity"]
    assert results.equity.index.tz is not None and results.equity.index.is_monotonic_increasing
    assert list(results.equity.index.asi8) == doc["index_ns"]
    assert results.benchmark.tolist() == doc["benchmark"]
    assert results.metrics.to_dict() == doc["metrics"]
    assert results.parameters == {"fast": 5, "slow": 20}  # with the strategy's own default
    trades = results.trades
    assert trades["pnl"].tolist() == doc["trades"]["pnl"] and len(trades) == doc["metrics"]["trades"] > 0
    assert set(trades["side"]) <= {"long", "short"} and (trades["exit_time"] >= trades["entry_time"]).all()
    # Drawdown from the running peak, in %: its deepest point is the metric's.
    assert math.isclose(-results.drawdown.min(), abs(doc["metrics"]["max_drawdown_pct"]), rel_tol=1e-9)
    assert listed.loc[op_id, "total_return_pct"] == doc["metrics"]["total_return_pct"]


async def test_a_sweep_ranking_and_heatmap_hold_the_ranked_values(
        context: Path, coordinator: Coordinator, make_worker: MakeWorker, nc: Nats, tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "origin")
    await backtest_worker(make_worker, "bt1", tmp_path / "worker")

    def notebook() -> SweepResults:
        with Client() as c:
            return c.sweep("sma_crossover", symbol=SYMBOL, timeframe=TIMEFRAME,  # type: ignore[return-value]
                           grid={"fast": [5, 10, 20], "slow": "15,30"},
                           objective={"metric": "sharpe_ratio", "require": ["fast < slow"]}).wait(progress=False)

    sweep = await asyncio.to_thread(notebook)
    doc = await stored(nc, coordinator, sweep.op_id)
    ranking = sweep.ranking
    assert list(ranking.index) == [e["rank"] for e in doc["ranking"]] == list(range(1, 7))
    assert list(ranking.columns[:3]) == ["fast", "slow", "sharpe_ratio"]
    for rank, entry in zip(ranking.index, doc["ranking"], strict=True):
        assert ranking.loc[rank, "sharpe_ratio"] == entry["metrics"]["sharpe_ratio"]
        assert (ranking.loc[rank, "fast"], ranking.loc[rank, "slow"]) == (entry["parameters"]["fast"],
                                                                           entry["parameters"]["slow"])
    eligible = ranking[ranking["eligible"]]
    assert len(eligible) == 5 and (eligible["fast"] < eligible["slow"]).all()
    assert eligible["sharpe_ratio"].is_monotonic_decreasing
    assert ranking[~ranking["eligible"]]["excluded"].str.contains("fast < slow").all()
    assert sweep.best is not None
    assert sweep.best["parameters"] == {"fast": int(eligible.iloc[0]["fast"]), "slow": int(eligible.iloc[0]["slow"])}

    heat = sweep.heatmap()
    assert heat.columns.name == "fast" and heat.index.name == "slow"
    assert list(heat.columns) == [5, 10, 20] and list(heat.index) == [15, 30]
    for rank in ranking.index:
        row = ranking.loc[rank]
        assert heat.loc[row["slow"], row["fast"]] == row["sharpe_ratio"]
    assert heat.equals(sweep.heatmap("fast", "slow"))
    assert sweep.heatmap("slow", "fast").equals(heat.T)
    with pytest.raises(ValueError, match="not a parameter"):
        sweep.heatmap("fast", "nope")


async def test_a_bad_request_is_refused_before_anything_is_sent(
        context: Path, coordinator: Coordinator) -> None:
    def notebook() -> list[Exception]:
        refused: list[Exception] = []
        with Client() as c:
            for call in (lambda: c.sweep("sma_crossover", symbol="SYN", grid={"fast": [5, 10]}, objective="sharpe"),
                         lambda: c.backtest("no_such_strategy", symbol="SYN"),
                         lambda: c.backtest("./missing.yaml", symbol="SYN"),
                         lambda: c.op("no-such-op").refresh()):
                try:
                    call()
                except KtrdrError as exc:
                    refused.append(exc)
        return refused

    metric, strategy, missing, unknown = await asyncio.to_thread(notebook)
    assert isinstance(metric, Invalid) and metric.field == "objective.metric" and "sharpe_ratio" in str(metric)
    assert isinstance(strategy, Invalid) and strategy.field == "strategy"
    assert isinstance(missing, Invalid) and "no such file" in str(missing)
    assert unknown.code == 404 and not isinstance(unknown, Invalid)
    assert coordinator.ops.total() == 0


async def test_async_handles_wait_cancel_and_raise_for_a_failed_op(
        context: Path, coordinator: Coordinator, make_worker: MakeWorker) -> None:
    await make_worker("w1", slots=2)
    async with AsyncClient.from_settings() as c:
        done = await (await c.start("dummy", duration=0, steps=2)).wait(progress=False)
        assert done.summary["steps"] == 2 and done.op.status is OpStatus.COMPLETED

        failing = await c.start("dummy", {"duration": 0, "steps": 1}, fail=True)
        with pytest.raises(OpFailed) as failed:
            await failing.wait(progress=False)
        assert failed.value.op.status is OpStatus.FAILED and failing.record is failed.value.op

        long = await c.start("dummy", duration=60, steps=60)
        with pytest.raises(TimeoutError):
            await long.wait(progress=False, timeout=0.5)  # the op goes on
        assert (await long.refresh()).status in (OpStatus.PENDING, OpStatus.RUNNING)
        await long.cancel("enough")
        with pytest.raises(OpFailed, match="cancelled: enough"):
            await long.wait(progress=False)

        frame = await c.ops(status="completed")
        assert list(frame.index) == [done.op_id]


async def test_a_training_history_is_a_frame_by_epoch(
        context: Path, coordinator: Coordinator, make_worker: MakeWorker, nc: Nats, tmp_path: Path) -> None:
    await publish_planted_bars(nc.jetstream(), tmp_path / "origin")
    await make_worker("cpu1", capabilities=[names.CAP_TRAINING_CPU],
                      handlers={"training": make_training_handler(device="cpu", data_root=tmp_path / "w")})
    strategy = tmp_path / "planted.yaml"
    strategy.write_text(strategy_yaml())

    def notebook() -> TrainingResults:
        with Client() as c:
            return c.train(strategy, epochs=2, model_name="nb-model").wait(progress=False)  # type: ignore[return-value]

    trained = await asyncio.to_thread(notebook)
    assert trained.model == "nb-model@1"
    history = trained.history
    assert list(history.index) == [1, 2] and {"train_loss", "val_loss", "train_accuracy"} <= set(history.columns)
    doc = await stored(nc, coordinator, trained.op_id)
    assert history["train_loss"].tolist() == [e["train_loss"] for e in doc["history"]]
