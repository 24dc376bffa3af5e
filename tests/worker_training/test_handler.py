"""Training operations through the real stack: coordinator, workers, data bucket, checkpoints,
model registry. Small planted data and tiny models keep each training about a second."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg

from coordinator.app import Coordinator
from ktrdr.models import list_models, load_model
from ktrdr.optypes.training import admit_training
from ktrdr.runtime.checkpoints import checkpoints_store, load_checkpoint
from ktrdr.strategy.schema import Training
from ktrdr.training import load_bundle
from ktrdr.training.checkpoint import read_checkpoint
from subjects import names, roles
from subjects.models import OpStatus, SubmitRequest
from subjects.training import TrainingParams
from tests.conftest import MakeWorker, SpawnWorker
from tests.ktrdr.training.planted import SYMBOL, publish_planted_bars, strategy_yaml
from tests.support import assert_eventually, wait_status
from worker_training.handler import make_training_handler


@pytest.fixture
async def bars(nc: Client, tmp_path: Path) -> None:
    await publish_planted_bars(nc.jetstream(), tmp_path / "origin")


def training_worker(tmp_path: Path, worker_id: str) -> dict[str, Any]:
    """make_worker arguments for a worker with the real (CPU) training handler."""
    return {"handlers": {"training": make_training_handler(device="cpu", data_root=tmp_path / worker_id)}}


async def submit(api: httpx.AsyncClient, **params: Any) -> str:
    response = await api.post("/api/v1/trainings", json={"strategy": strategy_yaml(**params.pop("training", {})),
                                                         **params})
    assert response.status_code == 201, response.text
    return str(response.json()["op_id"])


async def test_a_training_reports_epochs_and_stores_a_versioned_model(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, nc: Client, bars: None,
        tmp_path: Path) -> None:
    await make_worker("cpu1", capabilities=[names.CAP_TRAINING_CPU], **training_worker(tmp_path, "cpu1"))
    contexts: list[dict[str, Any]] = []

    async def on_progress(msg: Msg) -> None:
        contexts.append(json.loads(msg.data)["context"])

    await nc.subscribe(names.OPS_PROGRESS_ALL, cb=on_progress)
    op_id = await submit(api, training={"epochs": 4}, model_name="planted-e2e")
    op = await wait_status(coordinator, op_id, OpStatus.COMPLETED, OpStatus.FAILED, timeout=30)
    assert op.status is OpStatus.COMPLETED, op.error
    assert op.route == "cpu" and op.worker_id == "cpu1"
    assert op.params["symbols"] == [SYMBOL] and op.params["timeframes"] == ["1h"]
    assert op.result is not None and op.result["model"] == "planted-e2e@1"
    assert op.result["metrics"]["epochs_run"] == 4 and op.result["metrics"]["device"] == "cpu"
    # Progress is coalesced to at most ~10 updates a second: a run this short publishes its first
    # and last update and maybe none of its epochs in between (per-epoch progress is covered by the
    # trainer's tests; the full history is in the bundle, below). Whatever arrives is in order.
    assert contexts
    with_epoch = [c for c in contexts if "epoch" in c]
    seen = [c["epoch"] for c in with_epoch]
    assert seen == sorted(seen) and set(seen) <= {1, 2, 3, 4}
    assert all(c["device"] == "cpu" and c["batch"] > 0 for c in with_epoch)
    assert all(c["val_loss"] is not None for c in with_epoch if "train_loss" in c)
    bundle = load_bundle(await load_model(nc.jetstream(), "planted-e2e"))
    assert [h["epoch"] for h in bundle.training_metrics["history"]] == [1, 2, 3, 4]
    # The op's page draws loss and accuracy per epoch, and the models page lists the version.
    epochs = (await api.get(f"/api/v1/operations/{op_id}/chart")).json()["epochs"]
    assert [e["epoch"] for e in epochs] == [1, 2, 3, 4]
    assert all(e["train_loss"] > 0 and 0 <= e["val_accuracy"] <= 1 for e in epochs)
    models = (await api.get("/api/v1/models")).json()["models"]
    assert [(m["ref"], m["op_id"], m["symbol"]) for m in models] == [("planted-e2e@1", op_id, SYMBOL)]
    assert models[0]["start"] < models[0]["end"] and models[0]["metrics"]["epochs_run"] == 4
    again = await submit(api, training={"epochs": 1}, model_name="planted-e2e")
    assert (await wait_status(coordinator, again, OpStatus.COMPLETED, timeout=30)).result["model"] == "planted-e2e@2"


async def test_a_training_takes_the_schemas_batch_size_when_the_strategy_sets_none_and_its_own_when_it_does(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, bars: None,
        tmp_path: Path) -> None:
    await make_worker("cpu1", capabilities=[names.CAP_TRAINING_CPU], **training_worker(tmp_path, "cpu1"))
    unset = await submit(api, training={"epochs": 1, "batch_size": None})
    pinned = await submit(api, training={"epochs": 1, "batch_size": 48})
    for op_id, batch_size in ((unset, Training().batch_size), (pinned, 48)):
        op = await wait_status(coordinator, op_id, OpStatus.COMPLETED, OpStatus.FAILED, timeout=30)
        assert op.status is OpStatus.COMPLETED, op.error
        assert op.result is not None and op.result["metrics"]["batch_size"] == batch_size


async def test_cancelling_a_training_stops_it_and_keeps_its_last_epoch(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, nc: Client, bars: None,
        tmp_path: Path) -> None:
    await make_worker("cpu1", capabilities=[names.CAP_TRAINING_CPU], **training_worker(tmp_path, "cpu1"))
    op_id = await submit(api, training={"epochs": 10_000, "batch_size": 16}, checkpoint_every=10_000)

    def past_the_first_epoch() -> bool:  # progress inside epoch 2 means epoch 1 is whole
        op = coordinator.ops.get(op_id)
        return op is not None and op.progress is not None and op.progress.context.get("epoch", 0) >= 2

    await assert_eventually(past_the_first_epoch, timeout=30, message="no epoch progress")
    response = await api.request("DELETE", f"/api/v1/operations/{op_id}", json={"reason": "enough"})
    assert response.status_code == 202
    op = await wait_status(coordinator, op_id, OpStatus.CANCELLED, timeout=15)
    assert op.cancel_reason == "enough"
    name = op.checkpoint
    checkpoint = await load_checkpoint(nc.jetstream(), name) if name else None
    assert checkpoint is not None and read_checkpoint(checkpoint)["epoch"] >= 1  # kept, to look into
    assert await list_models(nc.jetstream()) == []


async def test_a_retried_training_resumes_from_the_killed_workers_checkpoint(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, spawn_worker: SpawnWorker,
        nc: Client, bars: None, tmp_path: Path) -> None:
    doomed = spawn_worker("doomed", capabilities=names.CAP_TRAINING_CPU, KTRDR_STANDIN_REAL_TRAINING="1",
                          KTRDR_HOME=str(tmp_path / "doomed-home"))
    await assert_eventually(lambda: "doomed" in coordinator.registry.workers, timeout=20)
    op_id = await submit(api, training={"epochs": 40, "batch_size": 16}, checkpoint_every=2)

    def checkpointed() -> bool:
        op = coordinator.ops.get(op_id)
        return op is not None and op.info.get("last_checkpoint_epoch", 0) >= 2

    await assert_eventually(checkpointed, timeout=30, message="no checkpoint from the first worker")
    doomed.send_signal(signal.SIGKILL)
    doomed.wait()
    reported = coordinator.ops.get(op_id).checkpoint  # type: ignore[union-attr]
    assert reported is not None and reported.startswith(f"{roles.LOCAL_HOST}.{op_id}.1.")
    state = await load_checkpoint(nc.jetstream(), reported)
    assert state is not None
    saved = read_checkpoint(state)
    await make_worker("heir", capabilities=[names.CAP_TRAINING_CPU], **training_worker(tmp_path, "heir"))

    # The heir trains the remaining ~38 epochs for real: on two cores shared with other work that
    # has taken over 45 s.
    op = await wait_status(coordinator, op_id, OpStatus.COMPLETED, OpStatus.FAILED, timeout=120)
    assert op.status is OpStatus.COMPLETED, op.error
    assert (op.attempt, op.worker_id) == (2, "heir")
    assert 2 <= op.info["resumed_from_epoch"] == saved["epoch"] < 40
    assert op.result is not None and op.result["metrics"]["resumed_from_epoch"] == saved["epoch"]
    history = load_bundle(await load_model(nc.jetstream(), "planted")).training_metrics["history"]
    assert [h["epoch"] for h in history] == list(range(1, 41))
    assert history[: saved["epoch"]] == saved["history"]  # the first worker's epochs, carried over
    # Every checkpoint of the op is deleted once the model is stored.
    assert op.checkpoint is None
    await assert_eventually(lambda: _no_checkpoints(nc, op_id), message="checkpoints left after completion")


async def _no_checkpoints(nc: Client, op_id: str) -> bool:
    return await checkpoints_store(nc.jetstream()).list(op_id=op_id) == []


async def test_training_goes_to_the_gpu_host_first(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, bars: None,
        tmp_path: Path) -> None:
    # A stand-in GPU host: declares a GPU and serves training.gpu, but trains on the CPU.
    await make_worker("gpu1", capabilities=[names.CAP_TRAINING_GPU], gpu=True, worker_type="gpu",
                      **training_worker(tmp_path, "gpu1"))
    await make_worker("cpu1", capabilities=[names.CAP_TRAINING_CPU], **training_worker(tmp_path, "cpu1"))
    await assert_eventually(lambda: coordinator.registry.with_capability(names.CAP_TRAINING_GPU), timeout=10)
    op_id = await submit(api, training={"epochs": 2})
    op = await wait_status(coordinator, op_id, OpStatus.COMPLETED, OpStatus.FAILED, timeout=30)
    assert op.status is OpStatus.COMPLETED, op.error
    assert (op.route, op.worker_id) == ("gpu", "gpu1")
    assert op.route_reason is not None and "gpu worker" in op.route_reason


async def test_a_training_without_bars_is_refused_at_submit_and_fails_on_a_worker_saying_which_are_missing(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, bars: None,
        tmp_path: Path) -> None:
    refused = await api.post("/api/v1/trainings", json={"strategy": strategy_yaml(), "symbols": ["NOPE"]})
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["message"].startswith("no bars for NOPE 1h in the data store; stored: PLANT 1h")
    # A job that skipped admission (its bars deleted since, say) fails on the worker, naming them.
    await make_worker("cpu1", capabilities=[names.CAP_TRAINING_CPU], **training_worker(tmp_path, "cpu1"))
    params = admit_training(TrainingParams(strategy=strategy_yaml(), symbols=["NOPE"]))
    op = await coordinator.dispatcher.submit(SubmitRequest(type="training", params=params.model_dump(mode="json")))
    op = await wait_status(coordinator, op.op_id, OpStatus.FAILED, timeout=15)
    assert op.error is not None and "no NOPE 1h bars in the data bucket" in op.error
