"""Training loop: Adam + cross-entropy, early stopping, checkpoints, cancellation, progress.

GPU notes (why the loop looks the way it does):

* The whole training set lives on the device and each epoch's shuffle is an on-device
  permutation, so a batch is an ``index_select`` -- no host->device copy per batch.
* Losses and correct counts accumulate in device tensors; the host reads them once per epoch
  (and at the throttled progress points), never with a per-batch ``.item()``.
* On CUDA the training step is captured once as a CUDA graph (optionally several steps
  unrolled into one capture) and replayed; small MLPs are launch-bound and this removes the
  per-kernel launch cost. The graph works on fixed shapes, so the last partial batch is padded
  and masked out of the loss; the masked loss equals the plain weighted mean cross-entropy.
  If capture fails for any reason the plain loop is used.

Reproducibility: a seed fixes initial weights, dropout and shuffling for a given device.
Resuming from a checkpoint on the same device type continues bit-for-bit (RNG states included).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ktrdr.cancel import CancelToken
from ktrdr.progress import ProgressFn, no_progress
from ktrdr.strategy.schema import Training
from ktrdr.training.checkpoint import CHECKPOINT_FORMAT, cpu_state_dict, dump_state, read_checkpoint
from ktrdr.training.device import DeviceProfile, default_profile, resolve_device
from ktrdr.training.history import EpochMetrics, derived_metrics
from ktrdr.training.model import ModelConfig, build_mlp

# Returns False when the state could not be saved (a leader election, a lost connection): the
# trainer then tries again at the next epoch rather than waiting for the next due one.
CheckpointFn = Callable[[bytes, int], bool | None]

_PROGRESS_INTERVAL_S = 0.1  # intra-epoch progress at most ~10/s


# The strategy schema's training section is the one source of defaults: a TrainerConfig built
# without a strategy (bench, tests) trains as a strategy that sets nothing would.
_SCHEMA = Training()


@dataclass(frozen=True)
class TrainerConfig:
    epochs: int = _SCHEMA.epochs
    batch_size: int = _SCHEMA.batch_size
    learning_rate: float = _SCHEMA.learning_rate
    weight_decay: float = _SCHEMA.weight_decay
    class_weights: str | tuple[float, ...] | None = None  # None | "balanced" | explicit weights
    early_stopping: bool = _SCHEMA.early_stopping.enabled
    patience: int = _SCHEMA.early_stopping.patience
    min_delta: float = _SCHEMA.early_stopping.min_delta
    restore_best: bool = _SCHEMA.early_stopping.restore_best
    checkpoint_every: int = _SCHEMA.checkpoint_every  # epochs; 0 disables periodic checkpoints
    # How a step runs, not what it computes (the masked graph loss equals the plain one), so these
    # are the device profile's unless set here; a strategy cannot set them.
    cuda_graphs: bool | None = None
    steps_per_graph: int | None = None

    @classmethod
    def from_training(cls, training: Training) -> TrainerConfig:
        """The validated strategy's ``training`` section; every value is the strategy's or its default."""
        weights = training.class_weights
        es = training.early_stopping
        return cls(
            epochs=training.epochs,
            batch_size=training.batch_size,
            learning_rate=training.learning_rate,
            weight_decay=training.weight_decay,
            class_weights=tuple(weights) if isinstance(weights, list) else weights,
            early_stopping=es.enabled,
            patience=es.patience,
            min_delta=es.min_delta,
            restore_best=es.restore_best,
            checkpoint_every=training.checkpoint_every,
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if isinstance(self.class_weights, tuple):
            d["class_weights"] = list(self.class_weights)
        return d


@dataclass
class FitResult:
    model: nn.Module
    history: list[EpochMetrics]
    metrics: dict[str, Any]
    epochs_run: int
    stopped_early: bool
    resumed_from_epoch: int
    device: str
    batch_size: int
    cuda_graphs: bool
    train_seconds: list[float] = field(default_factory=list)  # batch loop time per epoch


def _to_device(a: Any, dtype: type, device: torch.device) -> torch.Tensor:
    # A private copy: callers' arrays may be read-only views (pandas), and the data then moves
    # to the device once for the whole run.
    return torch.from_numpy(np.array(a, dtype=dtype, copy=True)).to(device)


def _class_weights(spec: Any, y: np.ndarray, num_classes: int) -> np.ndarray | None:
    if spec is None:
        return None
    if spec == "balanced":
        counts = np.bincount(y, minlength=num_classes).astype(np.float64)
        return np.where(counts > 0, len(y) / (num_classes * np.maximum(counts, 1)), 0.0)
    weights = np.asarray(spec, dtype=np.float64)
    if weights.shape != (num_classes,):
        raise ValueError(f"class_weights needs {num_classes} values")
    return weights


class Trainer:
    def __init__(
        self,
        model_config: ModelConfig,
        config: TrainerConfig | None = None,
        *,
        device: str = "auto",
        seed: int = 0,
        profile: DeviceProfile | None = None,
    ) -> None:
        self.model_config = model_config
        self.config = config or TrainerConfig()
        self.device = resolve_device(device)
        self.seed = seed
        self.profile = profile or default_profile(self.device)
        self.batch_size = self.config.batch_size
        use_graphs = self.config.cuda_graphs if self.config.cuda_graphs is not None else self.profile.cuda_graphs
        self.use_graphs = bool(use_graphs) and self.device.type == "cuda"
        self.steps_per_graph = max(1, self.config.steps_per_graph or self.profile.steps_per_graph)
        self.graph_error: str | None = None
        self.emulate_graphs = False  # tests: run the masked fixed-shape loop without capture

    # ------------------------------------------------------------------ public

    def fit(
        self,
        x_train: np.ndarray,
        y_train: np.ndarray,
        x_val: np.ndarray | None = None,
        y_val: np.ndarray | None = None,
        *,
        cancel: CancelToken | None = None,
        progress: ProgressFn | None = None,
        checkpoint: CheckpointFn | None = None,
        resume_from: bytes | None = None,
        extra_state: dict[str, Any] | None = None,
    ) -> FitResult:
        """Train on (already scaled) float features and int labels; returns the best model.

        ``extra_state`` (e.g. scaler, the original request) is stored in every checkpoint.
        """
        cfg, dev = self.config, self.device
        progress = progress or no_progress
        if len(x_train) == 0:
            raise ValueError("no training samples")
        torch.manual_seed(self.seed)
        model = build_mlp(x_train.shape[1], self.model_config).to(dev)
        graphs = self.use_graphs
        self._optimizer = self._make_optimizer(model, capturable=graphs)
        self.model = model

        self.x = _to_device(x_train, np.float32, dev)
        self.y = _to_device(y_train, np.int64, dev)
        has_val = x_val is not None and y_val is not None and len(x_val) > 0
        xv = _to_device(x_val, np.float32, dev) if has_val else None
        yv = _to_device(y_val, np.int64, dev) if has_val else None
        weights = _class_weights(cfg.class_weights, np.asarray(y_train, np.int64), self.model_config.num_classes)
        self.cw = torch.as_tensor(
            weights if weights is not None else np.ones(self.model_config.num_classes), dtype=torch.float32
        ).to(dev)
        self.cw_arg = self.cw if weights is not None else None
        self.loss_sum = torch.zeros((), device=dev)
        self.correct = torch.zeros((), device=dev)

        self.shuffle_gen = self._make_generator()
        history: list[EpochMetrics] = []
        best_loss, best_epoch, wait = math.inf, 0, 0
        best_state: dict[str, torch.Tensor] | None = None
        start_epoch = 0
        rng_state: dict[str, Any] | None = None
        if resume_from is not None:
            ck = read_checkpoint(resume_from)
            model.load_state_dict(ck["model"])
            self._optimizer.load_state_dict(ck["optimizer"])
            history = [EpochMetrics(**h) for h in ck["history"]]
            start_epoch = int(ck["epoch"])
            best = ck["best"]
            best_loss, best_epoch, wait = float(best["loss"]), int(best["epoch"]), int(best["wait"])
            best_state = {k: v.to(dev) for k, v in best["state"].items()} if best["state"] else None
            rng_state = ck["rng"] if ck.get("device_type") == dev.type else None

        n, bs = len(self.x), self.batch_size
        n_batches = math.ceil(n / bs)
        if graphs:
            graphs = self._capture_graphs(n_batches)
        elif self.emulate_graphs:
            self._emulate_graphs(n_batches)
        self.use_graphs = graphs
        if rng_state is not None:
            self._set_rng(rng_state)
        elif resume_from is not None:
            # Checkpoint from another device type: RNG streams differ there, continue seeded.
            torch.manual_seed(self.seed + start_epoch)
            self.shuffle_gen.manual_seed(self.seed + start_epoch)

        stopped_early = False
        train_seconds: list[float] = []
        last_state: bytes | None = None
        last_state_epoch = last_saved_epoch = start_epoch
        unsaved = False  # a due checkpoint that could not be saved: tried again each epoch until it is
        epoch = start_epoch
        try:
            for epoch in range(start_epoch + 1, cfg.epochs + 1):
                t0 = time.perf_counter()
                self._train_epoch(epoch, n_batches, cancel, progress)
                train_loss = float(self.loss_sum) / n  # the once-per-epoch sync
                train_acc = float(self.correct) / n
                t_train = time.perf_counter() - t0
                val_loss = val_acc = None
                if xv is not None and yv is not None:
                    val_loss, val_acc = self._evaluate(model, xv, yv)
                metrics = EpochMetrics(
                    epoch=epoch,
                    train_loss=train_loss,
                    train_accuracy=train_acc,
                    val_loss=val_loss,
                    val_accuracy=val_acc,
                    learning_rate=float(self._optimizer.param_groups[0]["lr"]),
                    duration_s=time.perf_counter() - t0,
                )
                history.append(metrics)
                train_seconds.append(t_train)
                monitored = val_loss if val_loss is not None else train_loss
                if monitored < best_loss - cfg.min_delta:
                    best_loss, best_epoch, wait = monitored, epoch, 0
                    best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                else:
                    wait += 1
                derived = derived_metrics(history, cfg.min_delta)
                progress(
                    percentage=100.0 * epoch / cfg.epochs,
                    step=f"epoch {epoch}/{cfg.epochs}",
                    steps_done=epoch,
                    steps_total=cfg.epochs,
                    items_done=n_batches,
                    items_total=n_batches,
                    message=(
                        f"epoch {epoch}: train loss {train_loss:.4f} acc {train_acc:.3f}"
                        + (f", val loss {val_loss:.4f} acc {val_acc:.3f}" if val_loss is not None else "")
                    ),
                    context={
                        **metrics.to_dict(),
                        "total_epochs": cfg.epochs,
                        "batch": n_batches,
                        "total_batches": n_batches,
                        "epoch_time_s": metrics.duration_s,
                        "device": dev.type,
                        **derived,
                    },
                )
                stop = cfg.early_stopping and wait >= cfg.patience
                if checkpoint is not None:
                    best_info = {"loss": best_loss, "epoch": best_epoch, "wait": wait, "state": best_state}
                    due = cfg.checkpoint_every > 0 and epoch % cfg.checkpoint_every == 0
                    # Kept each epoch so a cancellation can still hand back the last whole epoch.
                    last_state = dump_state(self._state(epoch, history, best_info, extra_state))
                    last_state_epoch = epoch
                    if due or unsaved:
                        unsaved = checkpoint(last_state, epoch) is False
                        if not unsaved:
                            last_saved_epoch = epoch
                if stop:
                    stopped_early = True
                    break
        except BaseException:
            if checkpoint is not None and last_state is not None and last_state_epoch > last_saved_epoch:
                checkpoint(last_state, last_state_epoch)
            raise

        if cfg.restore_best and best_state is not None:
            model.load_state_dict(best_state)
        model.eval()
        return FitResult(
            model=model,
            history=history,
            metrics=derived_metrics(history, cfg.min_delta),
            epochs_run=len(history),
            stopped_early=stopped_early,
            resumed_from_epoch=start_epoch,
            device=str(dev),
            batch_size=bs,
            cuda_graphs=self.use_graphs,
            train_seconds=train_seconds,
        )

    # ------------------------------------------------------------------ internals

    def _make_optimizer(self, model: nn.Module, *, capturable: bool) -> torch.optim.Optimizer:
        cfg = self.config
        kwargs: dict[str, Any] = {"lr": cfg.learning_rate, "weight_decay": cfg.weight_decay}
        if capturable:
            kwargs["capturable"] = True  # keeps Adam's step counter on the GPU for graph capture
        return torch.optim.Adam(model.parameters(), **kwargs)

    def _make_generator(self) -> torch.Generator:
        # MPS permutations come from a CPU generator (one small copy per epoch) for portability.
        gen_device = self.device if self.device.type == "cuda" else torch.device("cpu")
        gen = torch.Generator(device=gen_device)
        gen.manual_seed(self.seed)
        return gen

    def _permutation(self, n: int) -> torch.Tensor:
        perm = torch.randperm(n, generator=self.shuffle_gen, device=self.shuffle_gen.device)
        return perm.to(self.device, non_blocking=True)

    def _rng(self) -> dict[str, Any]:
        state: dict[str, Any] = {"shuffle": self.shuffle_gen.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        if self.device.type == "mps":
            state["mps"] = torch.mps.get_rng_state()
        return state

    def _set_rng(self, state: Mapping[str, Any]) -> None:
        self.shuffle_gen.set_state(state["shuffle"])
        torch.set_rng_state(state["torch"])
        if self.device.type == "cuda" and state.get("cuda") is not None:
            torch.cuda.set_rng_state(state["cuda"], self.device)
        if self.device.type == "mps" and state.get("mps") is not None:
            torch.mps.set_rng_state(state["mps"])

    def _state(
        self, epoch: int, history: list[EpochMetrics], best: dict[str, Any], extra: dict[str, Any] | None
    ) -> dict[str, Any]:
        best = dict(best)
        if best["state"] is not None:
            best["state"] = {k: v.detach().to("cpu", copy=True) for k, v in best["state"].items()}
        return {
            "format": CHECKPOINT_FORMAT,
            "epoch": epoch,
            "model": cpu_state_dict(self.model),
            "optimizer": self._optimizer.state_dict(),
            "history": [h.to_dict() for h in history],
            "best": best,
            "rng": self._rng(),
            "device_type": self.device.type,
            "seed": self.seed,
            "trainer_config": self.config.to_dict(),
            "model_config": self.model_config.to_dict(),
            "batch_size": self.batch_size,
            "extra": extra or {},
        }

    def _train_epoch(self, epoch: int, n_batches: int, cancel: CancelToken | None, progress: ProgressFn) -> None:
        self.model.train()
        self.loss_sum.zero_()
        self.correct.zero_()
        perm = self._permutation(len(self.x))
        bs = self.batch_size
        last_report = time.monotonic()

        def between_batches(done: int) -> None:
            nonlocal last_report
            if cancel is not None:
                cancel.raise_if_cancelled()
            now = time.monotonic()
            if now - last_report >= _PROGRESS_INTERVAL_S and done < n_batches:
                last_report = now
                seen = min(done * bs, len(self.x))
                progress(
                    percentage=100.0 * (epoch - 1 + done / n_batches) / self.config.epochs,
                    step=f"epoch {epoch}/{self.config.epochs}",
                    items_done=done,
                    items_total=n_batches,
                    context={
                        "epoch": epoch,
                        "total_epochs": self.config.epochs,
                        "batch": done,
                        "total_batches": n_batches,
                        "running_train_loss": float(self.loss_sum) / max(seen, 1),
                    },
                )

        if self.use_graphs or self.emulate_graphs:
            pad = n_batches * bs - len(perm)
            if pad:
                perm = torch.cat([perm, perm[:pad]])
            self.static_perm.copy_(perm.view(n_batches, bs))
            done = 0
            while done < n_batches:
                graph, steps = (
                    (self.graph_k, self.steps_per_graph)
                    if n_batches - done >= self.steps_per_graph
                    else (self.graph_1, 1)
                )
                self.static_batch.fill_(done)
                graph.replay()
                done += steps
                between_batches(done)
            return

        x, y, model, opt = self.x, self.y, self.model, self._optimizer
        for b in range(n_batches):
            idx = perm[b * bs : (b + 1) * bs]
            xb, yb = x.index_select(0, idx), y.index_select(0, idx)
            opt.zero_grad(set_to_none=True)
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, weight=self.cw_arg)
            loss.backward()
            opt.step()
            with torch.no_grad():
                self.loss_sum += loss.detach() * len(yb)
                self.correct += (logits.argmax(1) == yb).sum()
            between_batches(b + 1)

    def _masked_step(self, batch: torch.Tensor) -> None:
        """One optimiser step on padded batch ``batch`` (a 1-element device tensor); graph-safe."""
        idx = self.static_perm.index_select(0, batch).squeeze(0)
        mask = self.static_mask.index_select(0, batch).squeeze(0)
        xb, yb = self.x.index_select(0, idx), self.y.index_select(0, idx)
        logits = self.model(xb)
        weight = self.cw.index_select(0, yb) * mask
        ce = F.cross_entropy(logits, yb, reduction="none")
        loss = (ce * weight).sum() / weight.sum().clamp_min(1e-12)
        loss.backward()
        self._optimizer.step()
        with torch.no_grad():
            self.loss_sum += loss.detach() * mask.sum()
            self.correct += ((logits.argmax(1) == yb).float() * mask).sum()

    def _graph_body(self, steps: int) -> None:
        for k in range(steps):
            self._optimizer.zero_grad(set_to_none=False)
            self._masked_step(self.static_batch + k)

    def _setup_static(self, n_batches: int) -> None:
        """Fixed-shape buffers the replayed step reads: padded permutation, mask, batch number."""
        dev, bs = self.device, self.batch_size
        n = len(self.x)
        self.static_perm = torch.arange(n_batches * bs, device=dev).remainder(n).view(n_batches, bs)
        mask = torch.ones(n_batches * bs, device=dev)
        mask[n:] = 0.0  # padding rows of the last batch carry no weight
        self.static_mask = mask.view(n_batches, bs)
        self.static_batch = torch.zeros(1, dtype=torch.long, device=dev)
        self.steps_per_graph = min(self.steps_per_graph, n_batches)

    def _emulate_graphs(self, n_batches: int) -> None:
        """Run the graph loop's fixed-shape, masked steps eagerly (any device).

        Lets CPU tests check the padding/masking arithmetic that CUDA graphs rely on.
        """
        self._setup_static(n_batches)
        for p in self.model.parameters():
            p.grad = torch.zeros_like(p)
        self.graph_k: torch.cuda.CUDAGraph | _EagerReplay = _EagerReplay(self, self.steps_per_graph)
        self.graph_1: torch.cuda.CUDAGraph | _EagerReplay = _EagerReplay(self, 1)

    def _capture_graphs(self, n_batches: int) -> bool:
        """Capture the K-step and 1-step graphs; on any failure fall back to the plain loop."""
        dev = self.device
        self._setup_static(n_batches)
        k = self.steps_per_graph

        # Warm-up steps (needed before capture) change weights and optimiser state; snapshot
        # everything and restore it in place so the graphs keep pointing at the same memory.
        params = [p for p in self.model.parameters()]
        saved_params = [p.detach().clone() for p in params]
        saved_opt = {
            id(t): t.detach().clone()
            for s in self._optimizer.state.values()
            for t in s.values()
            if isinstance(t, torch.Tensor)
        }
        rng = torch.cuda.get_rng_state(dev)
        try:
            for p in params:
                p.grad = torch.zeros_like(p)
            side = torch.cuda.Stream(device=dev)
            side.wait_stream(torch.cuda.current_stream(dev))
            with torch.cuda.stream(side):
                for _ in range(3):
                    self._graph_body(1)
            torch.cuda.current_stream(dev).wait_stream(side)
            self.graph_k = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph_k):
                self._graph_body(k)
            self.graph_1 = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph_1):
                self._graph_body(1)
            ok = True
        except Exception as exc:  # capture is an optimisation only
            self.graph_error = f"{type(exc).__name__}: {exc}"
            ok = False
        torch.cuda.synchronize(dev)
        with torch.no_grad():
            for p, s in zip(params, saved_params, strict=True):
                p.copy_(s)
            for state in self._optimizer.state.values():
                for t in state.values():
                    if not isinstance(t, torch.Tensor):
                        continue
                    if id(t) in saved_opt:
                        t.copy_(saved_opt[id(t)])
                    else:
                        t.zero_()  # state created by the warm-up: zero is Adam's fresh state
        torch.cuda.set_rng_state(rng, dev)
        self.loss_sum.zero_()
        self.correct.zero_()
        if not ok:
            # The failed capture may have left a half-built capturable optimiser; start clean.
            state = self._optimizer.state_dict()
            self._optimizer = self._make_optimizer(self.model, capturable=False)
            self._optimizer.load_state_dict(state)
            for p in params:
                p.grad = None
        return ok

    @torch.no_grad()
    def _evaluate(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        model.eval()
        chunk = self.profile.eval_chunk
        loss_sum = torch.zeros((), device=self.device)
        weight_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device)
        for start in range(0, len(x), chunk):
            xb, yb = x[start : start + chunk], y[start : start + chunk]
            logits = model(xb)
            w = self.cw.index_select(0, yb)
            loss_sum += (F.cross_entropy(logits, yb, reduction="none") * w).sum()
            weight_sum += w.sum()
            correct += (logits.argmax(1) == yb).sum()
        return float(loss_sum / weight_sum.clamp_min(1e-12)), float(correct) / len(x)


class _EagerReplay:
    """Stands in for a captured CUDA graph: ``replay()`` runs the same steps eagerly."""

    def __init__(self, trainer: Trainer, steps: int) -> None:
        self.trainer, self.steps = trainer, steps

    def replay(self) -> None:
        self.trainer._graph_body(self.steps)


def predict_logits(model: nn.Module, x: np.ndarray, device: torch.device | str = "cpu") -> np.ndarray:
    """Logits for all rows at once (inference mode, no dropout)."""
    model.eval()
    with torch.inference_mode():
        t = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float32), device=device)
        return model.to(device)(t).float().cpu().numpy()
