"""``ktrdr train`` and ``ktrdr models`` against a running platform with a real training worker."""

from __future__ import annotations

import json
from pathlib import Path

from nats.aio.client import Client

from coordinator.app import Coordinator
from ktrdr.client.progress import describe
from ktrdr.natsd import NatsServer
from subjects import names
from subjects.models import ProgressUpdate
from tests.conftest import MakeWorker
from tests.ktrdr.cli.test_cli import finish, ktrdr
from tests.ktrdr.training.planted import publish_planted_bars, strategy_yaml
from worker_training.handler import make_training_handler


def test_the_live_view_shows_epoch_batch_losses_and_device() -> None:
    update = ProgressUpdate(op_id="t", worker_id="w", attempt=1, step="epoch 3/10", context={
        "epoch": 3, "batch": 40, "train_loss": 0.91234, "val_loss": 0.95, "device": "cuda"})
    assert describe(update) == "epoch 3/10 epoch=3 batch=40 train_loss=0.9123 val_loss=0.95 device=cuda"
    running = ProgressUpdate(op_id="t", worker_id="w", attempt=1, context={"epoch": 4, "batch": 7,
                                                                           "running_train_loss": 0.5, "device": "cpu"})
    assert describe(running) == "epoch=4 batch=7 running_train_loss=0.5 device=cpu"


async def test_train_follows_to_a_stored_model_that_models_lists_and_shows(
        nats_server: NatsServer, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    await publish_planted_bars(nc.jetstream(), tmp_path / "origin")
    await make_worker("cpu1", capabilities=[names.CAP_TRAINING_CPU],
                      handlers={"training": make_training_handler(device="cpu", data_root=tmp_path / "w")})
    strategy_file = tmp_path / "planted.yaml"
    strategy_file.write_text(strategy_yaml())
    code, out = await finish(ktrdr(nats_server, "train", str(strategy_file), "--epochs", "2", "--model", "cli-model",
                                   "--follow"), timeout=60)
    assert code == 0, out
    assert ": completed" in out and "cli-model@1" in out

    code, out = await finish(ktrdr(nats_server, "models", "list", "--json"))
    assert code == 0, out
    listed = json.loads(out[out.index("["):])
    assert [(m["ref"], m["metadata"]["symbol"], m["metadata"]["metrics"]["epochs_run"]) for m in listed] == [
        ("cli-model@1", "PLANT", 2)]

    code, out = await finish(ktrdr(nats_server, "models", "show", "cli-model@1"))
    assert code == 0, out
    assert "model cli-model@1" in out and "PLANT" in out and "epochs_run" in out

    code, out = await finish(ktrdr(nats_server, "models", "show", "cli-model@7"))
    assert code == 2 and "no version 7" in out


async def test_train_refuses_a_rule_based_strategy_before_submitting(
        nats_server: NatsServer, coordinator: Coordinator) -> None:
    code, out = await finish(ktrdr(nats_server, "train", "sma_crossover"))
    assert code == 2
    assert "rule-based" in out
    assert list(coordinator.ops.all()) == []


async def test_train_refuses_a_training_key_the_schema_does_not_know_naming_it(
        nats_server: NatsServer, coordinator: Coordinator, tmp_path: Path) -> None:
    strategy_file = tmp_path / "typo.yaml"
    strategy_file.write_text(strategy_yaml(batchsize=256))
    code, out = await finish(ktrdr(nats_server, "train", str(strategy_file)))
    assert code == 2
    assert "training.batchsize" in out
    assert list(coordinator.ops.all()) == []
