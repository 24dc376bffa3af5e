"""A backtest through the real stack: coordinator, worker with the backtest handler, data and
results in the Object Store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from coordinator.app import Coordinator
from ktrdr.backtest import BacktestResult
from ktrdr.natsd import NatsServer
from ktrdr.results import get_result
from ktrdr.runtime.context import JobContext
from ktrdr.runtime.objects import ObjectBucket
from subjects import names, roles
from subjects.models import OpStatus, SubmitRequest
from tests.backtesting import SYMBOL, TIMEFRAME, backtest_params, backtest_worker, publish_synth
from tests.conftest import MakeWorker, connect_as
from tests.ktrdr.training import planted
from tests.support import assert_eventually, wait_status


async def submit(coordinator: Coordinator, **params: Any) -> str:
    op = await coordinator.dispatcher.submit(SubmitRequest(type="backtesting", params=backtest_params(**params)))
    return op.op_id


async def test_a_backtest_completes_with_metrics_progress_and_results_in_the_object_store(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client, api: httpx.AsyncClient,
        tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    seen: list[dict[str, Any]] = []
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1", on_progress=lambda ctx, update: seen.append(update))
    created = await api.post("/api/v1/backtests", json=backtest_params(
        start="2020-01-10", end="2020-03-01", parameters={"fast": 5, "slow": 30}))
    assert created.status_code == 201, created.text
    op = await wait_status(coordinator, created.json()["op_id"], OpStatus.COMPLETED, OpStatus.FAILED)

    assert op.status is OpStatus.COMPLETED, op.error
    assert op.result is not None and op.result["parameters"] == {"fast": 5, "slow": 30}
    assert op.result["metrics"]["bars"] == 24 * (22 + 29) + 1  # Jan 10 00:00 through Mar 1 00:00 (a leap year)
    assert op.progress is not None and op.progress.percentage == 100.0
    simulated = [u for u in seen if u.get("step") == "simulation"]
    assert simulated and {"date", "equity", "trades"} <= set(simulated[-1]["context"])
    assert op.info["dataset_1h"]["source"] == "bucket"

    results = await api.get(f"/api/v1/operations/{op.op_id}/results")
    assert results.status_code == 200
    stored = BacktestResult.from_json_bytes(results.content)
    assert stored.metrics == json.loads(results.content)["metrics"]
    assert stored.metrics["trades"] == op.result["metrics"]["trades"]
    assert len(stored.equity) == op.result["metrics"]["bars"]


async def test_a_worker_with_an_empty_data_dir_gets_the_data_from_the_bucket(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client, tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    empty = tmp_path / "elsewhere"
    await backtest_worker(make_worker, "far", empty)
    first = await wait_status(coordinator, await submit(coordinator), OpStatus.COMPLETED, OpStatus.FAILED)
    assert first.status is OpStatus.COMPLETED, first.error
    assert first.info["dataset_1h"]["source"] == "bucket" and first.info["dataset_1h"]["cached"] is False
    assert (empty / SYMBOL / f"{TIMEFRAME}.npz").is_file()
    again = await wait_status(coordinator, await submit(coordinator), OpStatus.COMPLETED, OpStatus.FAILED)
    # Same digest: the second run reads its local copy and downloads nothing.
    assert again.info["dataset_1h"]["cached"] is True
    assert again.info["dataset_1h"]["digest"] == first.info["dataset_1h"]["digest"]


@pytest.mark.parametrize(("params", "says"), [
    ({"symbol": "NOSUCH"}, "no data for NOSUCH 1h"),
    ({"strategy": "no_such_strategy"}, "no_such_strategy"),
    ({"start": "2021-01-01", "end": "2021-02-01"}, "no SYNTH 1h bars between 2021-01-01"),
])
async def test_missing_data_unknown_strategy_or_an_empty_range_fail_naming_what_is_missing(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client, tmp_path: Path,
        params: dict[str, Any], says: str) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1")
    op = await wait_status(coordinator, await submit(coordinator, **params), OpStatus.FAILED, OpStatus.COMPLETED)
    assert op.status is OpStatus.FAILED
    assert says in (op.error or "")
    assert op.result_object is None and await get_result(nc.jetstream(), op) is None


async def test_cancelling_a_running_backtest_stops_it_without_storing_results(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client, tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")

    def hold(ctx: JobContext, update: dict[str, Any]) -> None:
        ctx.token.wait(30)  # a slow backtest: every progress step waits, a cancel wakes it

    await backtest_worker(make_worker, "bt1", tmp_path / "bt1", on_progress=hold)
    op_id = await submit(coordinator)
    await wait_status(coordinator, op_id, OpStatus.RUNNING)
    reply = await nc.request(f"ops.{op_id}.cancel", b'{"reason": "enough"}', timeout=5)
    assert b'"accepted":true' in reply.data
    done = await wait_status(coordinator, op_id, OpStatus.CANCELLED)
    assert done.cancel_reason == "enough"
    assert done.result_object is None and await get_result(nc.jetstream(), done) is None
    await assert_eventually(lambda: not coordinator.registry.workers["bt1"].running)


async def test_a_model_driven_backtest_records_the_latest_version_and_warns_that_it_is_in_sample(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client, tmp_path: Path) -> None:
    bars = await planted.publish_planted_bars(nc.jetstream(), tmp_path / "origin")
    trained_on = bars.loc[:"2020-02-29 23:00"]
    await planted.store_planted_model(nc.jetstream(), trained_on)
    assert await planted.store_planted_model(nc.jetstream(), trained_on) == "planted@2"
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1")
    op_id = await submit(coordinator, strategy=planted.STRATEGY_YAML, symbol=planted.SYMBOL)  # no model: the latest
    op = await wait_status(coordinator, op_id, OpStatus.COMPLETED, OpStatus.FAILED, timeout=30)

    assert op.status is OpStatus.COMPLETED, op.error
    assert op.result is not None and op.result["model"] == op.info["model"] == "planted@2"
    assert op.result["model_trained_on"] == {"start": "2020-01-01T00:00:00+00:00", "end": "2020-02-29T23:00:00+00:00"}
    assert op.result["in_sample_bars"] == len(trained_on)
    assert op.warnings == [f"in-sample: the backtest range overlaps the model's training data "
                           f"(2020-01-01..2020-02-29 23:00): {len(trained_on):,} of {len(bars):,} bars"]


async def test_a_backtest_after_the_models_training_range_names_its_model_and_warns_of_nothing(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client, tmp_path: Path) -> None:
    bars = await planted.publish_planted_bars(nc.jetstream(), tmp_path / "origin")
    model = await planted.store_planted_model(nc.jetstream(), bars.loc[:"2020-02-29 23:00"])
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1")
    op_id = await submit(coordinator, strategy=planted.STRATEGY_YAML, symbol=planted.SYMBOL, model=model,
                         start="2020-03-01")
    op = await wait_status(coordinator, op_id, OpStatus.COMPLETED, OpStatus.FAILED, timeout=30)

    assert op.status is OpStatus.COMPLETED, op.error
    assert op.result is not None and op.result["model"] == op.info["model"] == "planted@1"
    assert op.result["in_sample_bars"] == 0
    assert op.warnings == []


async def test_a_model_written_over_with_a_worker_credential_still_trades_as_registered(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client, nats_server: NatsServer,
        tmp_path: Path) -> None:
    bars = await planted.publish_planted_bars(nc.jetstream(), tmp_path / "origin")
    model = await planted.store_planted_model(nc.jetstream(), bars.loc[:"2020-02-29 23:00"])
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1")
    request = {"strategy": planted.STRATEGY_YAML, "symbol": planted.SYMBOL, "model": model}
    before = await wait_status(coordinator, await submit(coordinator, **request), OpStatus.COMPLETED,
                               OpStatus.FAILED, timeout=30)
    assert before.status is OpStatus.COMPLETED, before.error
    worker = await connect_as(nats_server.url, roles.WORKER)
    try:  # the red team's act: the same version, other weights
        await ObjectBucket(js=worker.jetstream(), bucket=names.MODELS_OBJECTS).put("planted/1", b"negated")
    finally:
        await worker.close()
    after = await wait_status(coordinator, await submit(coordinator, **request), OpStatus.COMPLETED,
                              OpStatus.FAILED, timeout=30)
    assert after.status is OpStatus.COMPLETED, after.error
    assert after.result is not None and before.result is not None
    assert after.result["model"] == "planted@1" and after.result["metrics"] == before.result["metrics"]
