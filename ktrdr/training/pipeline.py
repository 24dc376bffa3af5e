"""Strategy training end to end: bars -> features + labels -> split -> scale -> train -> evaluate
-> bundle. The worker only wires NATS (progress, cancel, checkpoints, results) around
:func:`train_strategy`.

Every setting comes from the validated strategy (:class:`ktrdr.strategy.NeuroFuzzyStrategy`): a
mapping or YAML text is validated first, so what the schema refuses is refused here too, and the
schema's defaults are the ones that apply.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import yaml

from ktrdr.cancel import CancelToken
from ktrdr.progress import ProgressFn, no_progress
from ktrdr.strategy import NeuroFuzzyStrategy, load_strategy, parse_strategy
from ktrdr.training.alignment import base_timeframe
from ktrdr.training.bundle import ModelBundle
from ktrdr.training.checkpoint import read_checkpoint
from ktrdr.training.device import DeviceProfile
from ktrdr.training.evaluation import evaluate_predictions
from ktrdr.training.features import IndicatorFn, build_features, parse_nn_inputs
from ktrdr.training.fuzzy import parse_fuzzy_sets
from ktrdr.training.labels import LabelConfig
from ktrdr.training.model import ModelConfig
from ktrdr.training.scaler import StandardScaler
from ktrdr.training.split import SplitIndices, chronological_split
from ktrdr.training.trainer import CheckpointFn, Trainer, TrainerConfig, predict_logits

# Share of the overall percentage given to each phase (training dominates).
_PREP, _TRAIN_END = 5.0, 95.0


@dataclass
class Dataset:
    features: pd.DataFrame  # rows with complete features and a known label, base-timeframe index
    labels: pd.Series  # int64 BUY/SELL/HOLD
    split: SplitIndices
    base_timeframe: str
    label_config: LabelConfig

    def part(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        rows = getattr(self.split, name)
        return (
            self.features.iloc[rows].to_numpy(dtype=np.float64),
            self.labels.iloc[rows].to_numpy(dtype=np.int64),
        )


@dataclass
class TrainingResult:
    bundle: bytes
    metrics: dict[str, Any]
    evaluation: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    feature_names: list[str] = field(default_factory=list)


def validated(strategy: NeuroFuzzyStrategy | Mapping[str, Any] | str) -> NeuroFuzzyStrategy:
    """The strategy as the schema reads it; raises :class:`ktrdr.strategy.StrategyError` naming every bad
    field, or ValueError for a rule-based strategy (no model to train)."""
    if isinstance(strategy, NeuroFuzzyStrategy):
        return strategy
    if isinstance(strategy, Mapping):
        loaded = parse_strategy(dict(strategy), source="<mapping>")
    else:
        loaded = load_strategy(strategy)
    if not isinstance(loaded, NeuroFuzzyStrategy):
        raise ValueError(f"{loaded.name!r} is rule-based: it has no model to train")
    return loaded


def prepare_dataset(
    strategy: NeuroFuzzyStrategy,
    bars_by_timeframe: Mapping[str, pd.DataFrame],
    *,
    compute: IndicatorFn | None = None,
) -> Dataset:
    """Features and labels on the base timeframe, incomplete rows dropped, split in time order.

    Labels come from the base timeframe's closes; a gap of ``split_gap`` rows (default: the labels'
    ``lookahead``) between the split parts keeps labels of one part from looking into the next.
    """
    training = strategy.training
    # Features read the fuzzy sets and nn_inputs of the validated document, as inference does
    # from a bundle's strategy text.
    document = strategy.document or strategy.model_dump()
    features = build_features(document, bars_by_timeframe, compute=compute)
    used = sorted({tf for i in parse_nn_inputs(document, list(bars_by_timeframe)) for tf in i.timeframes})
    base = base_timeframe(used)
    close = bars_by_timeframe[base].sort_index()["close"].astype(float)
    label_cfg = LabelConfig.from_labels(training.labels)
    labels = label_cfg.compute(close).reindex(features.index)
    keep = features.notna().all(axis=1) & labels.notna()
    features, labels = features[keep], labels[keep].astype(np.int64)
    part = training.split
    gap = label_cfg.lookahead if training.split_gap is None else training.split_gap
    split = chronological_split(len(features), part.train, part.validation, part.test, gap=gap)
    return Dataset(features, labels, split, base, label_cfg)


def _scaled_progress(progress: ProgressFn, lo: float, hi: float) -> ProgressFn:
    def forward(**kw: Any) -> None:
        if kw.get("percentage") is not None:
            kw["percentage"] = lo + (hi - lo) * float(kw["percentage"]) / 100.0
        progress(**kw)

    return forward  # type: ignore[return-value]


def train_strategy(
    strategy_config: NeuroFuzzyStrategy | Mapping[str, Any] | str,
    bars_by_timeframe: Mapping[str, pd.DataFrame],
    *,
    device: str = "auto",
    cancel: CancelToken | None = None,
    progress: ProgressFn | None = None,
    checkpoint: CheckpointFn | None = None,
    resume_from: bytes | None = None,
    seed: int | None = None,
    compute: IndicatorFn | None = None,
    request: dict[str, Any] | None = None,
    device_profile: DeviceProfile | None = None,
) -> TrainingResult:
    """Train the strategy's model on one symbol's bars (``{timeframe: OHLCV frame}``).

    ``strategy_config``: a validated strategy, or a mapping, YAML text or strategy name to validate
    (:func:`validated`). ``seed`` overrides ``training.seed``. ``device_profile`` changes how a step
    runs on the device (CUDA graphs), never the batch size or any other setting of the strategy.
    ``checkpoint(state_bytes, epoch)`` is called every ``training.checkpoint_every`` epochs (and
    with the last whole epoch on cancellation); pass such bytes back as ``resume_from`` to
    continue. ``request`` (the original job) is stored in checkpoints for the resuming worker.
    Raises :class:`ktrdr.cancel.OperationCancelled` when ``cancel`` is set.
    """
    progress = progress or no_progress
    strategy = validated(strategy_config)
    seed = int(seed if seed is not None else strategy.training.seed)
    progress(percentage=0.0, step="preparing data", message="computing features and labels")

    data = prepare_dataset(strategy, bars_by_timeframe, compute=compute)
    x_train, y_train = data.part("train")
    x_val, y_val = data.part("val")
    x_test, y_test = data.part("test")
    if len(x_train) == 0:
        raise ValueError("no complete training rows (too little data for the indicators and labels?)")
    if cancel is not None:
        cancel.raise_if_cancelled()

    if resume_from is not None:
        scaler = StandardScaler.from_dict(read_checkpoint(resume_from)["extra"]["scaler"])
    else:
        scaler = StandardScaler.fit(x_train)
    feature_names = list(data.features.columns)
    model_config = ModelConfig.from_spec(strategy.model)
    trainer_config = TrainerConfig.from_training(strategy.training)
    trainer = Trainer(model_config, trainer_config, device=device, seed=seed, profile=device_profile)
    progress(
        percentage=_PREP,
        step="training",
        message=f"{len(x_train)} train / {len(x_val)} val / {len(x_test)} test rows, "
        f"{len(feature_names)} features on {trainer.device}",
    )
    fit = trainer.fit(
        scaler.transform(x_train),
        y_train,
        scaler.transform(x_val) if len(x_val) else None,
        y_val if len(y_val) else None,
        cancel=cancel,
        progress=_scaled_progress(progress, _PREP, _TRAIN_END),
        checkpoint=checkpoint,
        resume_from=resume_from,
        extra_state={
            "scaler": scaler.to_dict(),
            "request": request or {},
            "feature_names": feature_names,
            "seed": seed,
        },
    )

    progress(percentage=_TRAIN_END, step="evaluating", message="test-set evaluation")
    model = fit.model.to("cpu")
    evaluation: dict[str, Any] = {}
    if len(x_test):
        predicted = predict_logits(model, scaler.transform(x_test)).argmax(axis=1)
        evaluation = evaluate_predictions(y_test, predicted, model_config.num_classes, train_labels=y_train)
    sizes = data.split.sizes()
    seconds = sum(fit.train_seconds)
    metrics: dict[str, Any] = {
        **fit.metrics,
        "epochs_run": fit.epochs_run,
        "stopped_early": fit.stopped_early,
        "resumed_from_epoch": fit.resumed_from_epoch,
        "final_train_loss": fit.history[-1].train_loss if fit.history else None,
        "final_val_loss": fit.history[-1].val_loss if fit.history else None,
        "device": fit.device,
        "batch_size": fit.batch_size,
        "cuda_graphs": fit.cuda_graphs,
        "seed": seed,
        "samples": {"train": sizes[0], "val": sizes[1], "test": sizes[2]},
        "train_class_counts": np.bincount(y_train, minlength=model_config.num_classes).tolist(),
        "train_seconds": seconds,
        "train_samples_per_second": len(x_train) * len(fit.train_seconds) / seconds if seconds else None,
        "test_accuracy": evaluation.get("accuracy"),
        "test_edge": evaluation.get("edge"),
    }
    document = strategy.document or strategy.model_dump()
    fuzzy = {name: fs.to_dict() for name, fs in parse_fuzzy_sets(document["fuzzy_sets"]).items()}
    bundle = ModelBundle(
        model_config=model_config,
        state_dict={k: v.detach().cpu() for k, v in model.state_dict().items()},
        feature_names=feature_names,
        scaler=scaler,
        strategy_text=yaml.safe_dump(document, sort_keys=False),
        fuzzy_sets=fuzzy,
        base_timeframe=data.base_timeframe,
        timeframes=sorted({c.split("_", 1)[0] for c in feature_names}),
        labels={
            "source": data.label_config.source,
            "threshold": data.label_config.threshold,
            "lookahead": data.label_config.lookahead,
        },
        training_metrics={**metrics, "history": [h.to_dict() for h in fit.history]},
        evaluation=evaluation,
    )
    data_bytes = bundle.to_bytes()
    progress(percentage=100.0, step="done", message=f"test accuracy {evaluation.get('accuracy')}")
    return TrainingResult(
        bundle=data_bytes,
        metrics=metrics,
        evaluation=evaluation,
        history=[h.to_dict() for h in fit.history],
        feature_names=feature_names,
    )
