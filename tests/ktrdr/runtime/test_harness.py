"""The platform's own handlers run in the in-memory harness, without NATS: typed params in, a typed
result out, datasets, results, checkpoints and models through the context's services."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from ktrdr.cancel import OperationCancelled
from ktrdr.data import synth
from ktrdr.dummy import run_dummy
from ktrdr.optypes.backtesting import BACKTEST
from ktrdr.optypes.dummy import DUMMY
from ktrdr.optypes.training import TRAINING
from ktrdr.runtime.harness import HandlerEnvironment
from subjects.params import BacktestParams, DummyParams
from subjects.results import BacktestSummary, DummyResult, TrainingResult
from subjects.training import TrainingParams
from tests.ktrdr.training.planted import SYMBOL, planted_bars, strategy_yaml
from tests.support import assert_eventually
from worker_backtest.handler import BacktestHandler, MissingData
from worker_training.handler import make_training_handler


async def test_the_dummy_handler_reports_progress_and_returns_its_result() -> None:
    env = HandlerEnvironment()
    result = await env.run(run_dummy, DummyParams(duration=0.05, steps=5), op_type=DUMMY)
    assert result == DummyResult(steps=5, duration=0.05)
    assert env.progress[-1]["steps_done"] == 5 and env.progress[-1]["percentage"] == 100.0


async def test_a_cancelled_handler_stops_with_the_reason() -> None:
    env = HandlerEnvironment()
    running = asyncio.ensure_future(env.run(run_dummy, DummyParams(duration=30, steps=3), op_type=DUMMY))
    await assert_eventually(lambda: env.context is not None)  # the handler has started
    env.cancel("seen enough")
    with pytest.raises(OperationCancelled, match="seen enough"):
        await asyncio.wait_for(running, 5)


async def test_the_backtest_handler_stores_its_result_and_summarises_it(tmp_path: Path) -> None:
    env = HandlerEnvironment(op_id="bt-1")
    env.datasets.put_bars("SYNTH", "1h", synth("SYNTH", "1h", "2020-01-01", 1500, 7))
    params = BacktestParams(strategy="sma_crossover", symbol="SYNTH", timeframe="1h", parameters={"fast": 5})
    summary = await env.run(BacktestHandler(tmp_path / "store"), params, op_type=BACKTEST)
    assert isinstance(summary, BacktestSummary)
    assert summary.parameters["fast"] == 5 and summary.metrics["bars"] == 1500
    stored = json.loads(env.results.data["bt-1"])
    assert stored["metrics"] == json.loads(summary.model_dump_json())["metrics"]
    assert summary.result_bytes == len(env.results.data["bt-1"])
    assert env.info["dataset_1h"]["bars"] == 1500


async def test_the_backtest_handler_names_a_missing_dataset(tmp_path: Path) -> None:
    env = HandlerEnvironment()
    params = BacktestParams(strategy="sma_crossover", symbol="NONE", timeframe="1h")
    with pytest.raises(MissingData, match="no data for NONE 1h"):
        await env.run(BacktestHandler(tmp_path / "store"), params, op_type=BACKTEST)


async def test_the_training_handler_stores_a_model_and_leaves_no_checkpoint(tmp_path: Path) -> None:
    env = HandlerEnvironment(op_id="train-1")
    env.datasets.put_bars(SYMBOL, "1h", planted_bars(1500))
    handler = make_training_handler(device="cpu", data_root=tmp_path / "data")
    result = await env.run(handler, TrainingParams(strategy=strategy_yaml(epochs=2), model_name="harness"),
                           op_type=TRAINING)
    assert isinstance(result, TrainingResult) and result.model == "harness@1"
    bundle, metadata = env.models.versions["harness"][0]
    assert bundle and metadata["op_id"] == "train-1" and metadata["symbol"] == SYMBOL
    assert env.checkpoints.data == {}
    # A model-driven backtest in the same harness trades that model and says it is in-sample.
    bt = BacktestParams(strategy=strategy_yaml(epochs=2), symbol=SYMBOL, timeframe="1h", model="harness@1")
    summary = await env.run(BacktestHandler(tmp_path / "bt"), bt, op_type=BACKTEST)
    assert summary.model == "harness@1" and summary.in_sample_bars == 1500
    assert any(w.startswith("in-sample") for w in env.warnings)
