from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np
import pytest
import torch

from ktrdr.cancel import CancelToken, OperationCancelled
from ktrdr.training.checkpoint import read_checkpoint
from ktrdr.training.model import ModelConfig
from ktrdr.training.trainer import Trainer, TrainerConfig

MODEL = ModelConfig(hidden_layers=(16, 8), dropout=0.2, activation="gelu")


def _data(n: int = 1200, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    score = x[:, 0] - x[:, 1]
    y = np.where(score > 0.5, 0, np.where(score < -0.5, 1, 2))
    cut = int(n * 0.8)
    return x[:cut], y[:cut], x[cut:], y[cut:]


def _weights(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _config(**kw: Any) -> TrainerConfig:
    base: dict[str, Any] = {"epochs": 6, "batch_size": 32, "early_stopping": False, "restore_best": False}
    return TrainerConfig(**{**base, **kw})


def test_same_seed_reproduces_a_run_and_another_seed_differs() -> None:
    data = _data()
    runs = [Trainer(MODEL, _config(), device="cpu", seed=s).fit(*data) for s in (1, 1, 2)]
    for a, b in zip(_weights(runs[0].model), _weights(runs[1].model), strict=True):
        assert torch.equal(a, b)
    assert [h.train_loss for h in runs[0].history] == [h.train_loss for h in runs[1].history]
    assert not all(torch.equal(a, b) for a, b in zip(_weights(runs[0].model), _weights(runs[2].model), strict=True))


def test_learns_and_reports_history() -> None:
    res = Trainer(MODEL, _config(epochs=15, batch_size=64, early_stopping=True), device="cpu").fit(*_data())
    assert res.history[-1].val_accuracy is not None and res.history[-1].val_accuracy > 0.75
    assert res.metrics["best_epoch"] >= 1 and res.metrics["best_val_loss"] is not None
    assert {"epochs_since_improvement", "is_overfitting", "is_plateau"} <= set(res.metrics)


def test_a_checkpoint_that_could_not_be_saved_is_tried_again_after_the_next_epoch() -> None:
    tried: list[int] = []

    def flaky(state: bytes, epoch: int) -> bool:
        tried.append(epoch)
        return epoch != 3  # the due checkpoint of epoch 3 is lost (a leader election, say)

    Trainer(MODEL, _config(checkpoint_every=3), device="cpu", seed=4).fit(*_data(), checkpoint=flaky)
    assert tried == [3, 4, 6]


def test_checkpoint_resume_continues_exactly() -> None:
    data = _data()
    saved: dict[int, bytes] = {}
    full = Trainer(MODEL, _config(checkpoint_every=3), device="cpu", seed=4).fit(
        *data, checkpoint=lambda b, e: saved.__setitem__(e, b), extra_state={"request": {"id": "op-1"}}
    )
    assert sorted(saved) == [3, 6]
    ck = read_checkpoint(saved[3])
    assert ck["epoch"] == 3 and ck["extra"]["request"] == {"id": "op-1"} and len(ck["history"]) == 3

    resumed = Trainer(MODEL, _config(checkpoint_every=3), device="cpu", seed=4).fit(*data, resume_from=saved[3])
    assert resumed.resumed_from_epoch == 3
    assert [h.epoch for h in resumed.history] == [1, 2, 3, 4, 5, 6]
    assert [h.train_loss for h in resumed.history] == [h.train_loss for h in full.history]
    for a, b in zip(_weights(full.model), _weights(resumed.model), strict=True):
        assert torch.equal(a, b)


def test_progress_context_and_throttled_batches() -> None:
    calls: list[dict[str, Any]] = []
    Trainer(MODEL, _config(epochs=2), device="cpu").fit(*_data(), progress=lambda **kw: calls.append(kw))
    epochs = [c for c in calls if c.get("steps_done") is not None]
    assert [c["steps_done"] for c in epochs] == [1, 2]
    ctx = epochs[-1]["context"]
    for key in (
        "epoch",
        "batch",
        "train_loss",
        "val_loss",
        "train_accuracy",
        "val_accuracy",
        "learning_rate",
        "epoch_time_s",
        "best_epoch",
    ):
        assert key in ctx
    assert ctx["learning_rate"] == pytest.approx(0.001)
    assert 0 < epochs[-1]["percentage"] <= 100


def test_cancel_between_batches_stops_within_a_second() -> None:
    x, y, xv, yv = _data(20000)
    token = CancelToken()
    saved: list[int] = []
    trainer = Trainer(MODEL, _config(epochs=500, batch_size=16), device="cpu")
    epoch_done = threading.Event()
    cancelled_at: list[float] = []

    def progress(**kw: Any) -> None:
        if kw.get("steps_done") == 1:
            epoch_done.set()

    def cancel_mid_epoch() -> None:
        epoch_done.wait(30)
        time.sleep(0.05)  # inside epoch 2's batches
        cancelled_at.append(time.monotonic())
        token.cancel("test")

    canceller = threading.Thread(target=cancel_mid_epoch)
    canceller.start()
    with pytest.raises(OperationCancelled):
        trainer.fit(x, y, xv, yv, cancel=token, progress=progress, checkpoint=lambda b, e: saved.append(e))
    stopped = time.monotonic()
    canceller.join()
    assert stopped - cancelled_at[0] < 1.0
    assert saved == [1]  # the last whole epoch was handed back as a checkpoint


def test_balanced_class_weights_run() -> None:
    x, y, xv, yv = _data()
    y = np.where(np.arange(len(y)) % 10 == 0, y, 2)  # mostly HOLD
    res = Trainer(MODEL, _config(epochs=2, class_weights="balanced"), device="cpu").fit(x, y, xv, yv)
    assert np.isfinite(res.history[-1].train_loss)


def test_auto_device_on_cpu_machine_uses_cpu_profile() -> None:
    t = Trainer(MODEL, TrainerConfig(), device="auto")
    if not torch.cuda.is_available():
        assert t.device.type in ("cpu", "mps") and t.batch_size == 32 and not t.use_graphs


@pytest.mark.parametrize("class_weights", [None, "balanced"])
def test_fixed_shape_masked_loop_matches_plain_loop(class_weights: str | None) -> None:
    # The CUDA-graph path pads the last batch and masks it out of the loss; run that same
    # arithmetic eagerly on CPU and compare with the plain loop (no dropout: same RNG use).
    x, y, xv, yv = _data(1000)  # 800 train rows = 26 batches of 30 + one of 20
    model = ModelConfig(hidden_layers=(16, 8), dropout=0.0)
    cfg = _config(epochs=3, batch_size=30, steps_per_graph=4, class_weights=class_weights)
    plain = Trainer(model, cfg, device="cpu", seed=3).fit(x, y, xv, yv)
    emulated_trainer = Trainer(model, cfg, device="cpu", seed=3)
    emulated_trainer.emulate_graphs = True
    emulated = emulated_trainer.fit(x, y, xv, yv)
    for a, b in zip(_weights(plain.model), _weights(emulated.model), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        [h.train_loss for h in plain.history], [h.train_loss for h in emulated.history], rtol=1e-5
    )
    np.testing.assert_allclose([h.train_accuracy for h in plain.history], [h.train_accuracy for h in emulated.history])
