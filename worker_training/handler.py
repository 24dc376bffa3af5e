"""The ``training`` handler, shared by the CPU training worker and the GPU host (only the device
differs): bars from the ``data`` bucket, :func:`train_strategy` with the op's cancel token and
progress, checkpoints in the ``checkpoints`` store, the bundle in the model registry.

A retried attempt (``ctx.attempt > 1``) resumes from the last checkpoint its predecessor wrote
and records the epoch in the op record (``info.resumed_from_epoch``).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ktrdr.data import DataStore
from ktrdr.models.training_plan import plan_training
from ktrdr.progress import ProgressFn
from ktrdr.runtime.context import Handler, JobContext
from ktrdr.runtime.services import DatasetMissing
from ktrdr.training import train_strategy
from ktrdr.training.checkpoint import read_checkpoint
from ktrdr.training.device import resolve_device
from subjects.results import TrainingResult
from subjects.training import TrainingParams

log = logging.getLogger(__name__)

CHECKPOINT_TIMEOUT_S = 30.0


class MissingBars(FileNotFoundError):
    pass


def load_bars(ctx: JobContext, store: DataStore, symbol: str, timeframe: str,
              start: datetime | None, end: datetime | None) -> pd.DataFrame:
    """The bucket's current bars for ``symbol``/``timeframe`` (cached locally), cut to [start, end]."""
    try:
        ctx.call(ctx.datasets.fetch(store, symbol, timeframe))
    except DatasetMissing:
        if not store.exists(symbol, timeframe):
            raise MissingBars(f"no {symbol} {timeframe} bars in the data bucket (publish them first) "
                              f"nor in {store.root}") from None
        log.warning("%s %s is not in the data bucket; training on the local copy", symbol, timeframe)
    bars = store.load(symbol, timeframe, start, end)
    if bars.empty:
        raise MissingBars(f"no {symbol} {timeframe} bars between {start or 'the start'} and {end or 'the end'}")
    return bars


def _resume_state(ctx: JobContext) -> bytes | None:
    if ctx.attempt <= 1:
        return None
    data = ctx.call(ctx.checkpoints.get())
    if data is None:
        ctx.log.info("no checkpoint, training from the start")
        return None
    try:
        epoch = int(read_checkpoint(data)["epoch"])
    except (ValueError, KeyError, RuntimeError) as exc:
        ctx.log.warning("unreadable checkpoint (%s); training from the start", exc)
        return None
    ctx.info(resumed_from_epoch=epoch)
    ctx.log.info("resumes after epoch %d", epoch)
    return data


def _with_device(progress: ProgressFn, device: str) -> ProgressFn:
    def forward(**fields: Any) -> None:
        fields["context"] = {"device": device, **(fields.get("context") or {})}
        progress(**fields)

    return forward  # type: ignore[return-value]


def plain(value: Any) -> Any:
    """JSON-safe copy (numpy scalars and arrays become Python values)."""
    def convert(obj: Any) -> Any:
        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
        return str(obj)

    return json.loads(json.dumps(value, default=convert))


def make_training_handler(*, device: str, data_root: Path) -> Handler:
    """A training handler that trains on ``device`` (``cpu``, ``cuda``, ``mps`` or ``auto``)."""

    def run_training(ctx: JobContext, params: TrainingParams) -> TrainingResult:
        plan = plan_training(params)
        store = DataStore(root=data_root)
        ctx.progress(percentage=0.0, step="loading data", message=f"{plan.symbol} {', '.join(plan.timeframes)}")
        bars = {tf: load_bars(ctx, store, plan.symbol, tf, params.start, params.end) for tf in plan.timeframes}
        ctx.raise_if_cancelled()
        resume_from = _resume_state(ctx)

        def checkpoint(state: bytes, epoch: int) -> bool:
            # Best effort: a lost checkpoint costs a retry some epochs, never the training itself;
            # False makes the trainer try again after the next epoch.
            try:
                ctx.call(ctx.checkpoints.put(state), timeout=CHECKPOINT_TIMEOUT_S)
            except Exception as exc:
                ctx.log.warning("checkpoint of epoch %d not saved (tried again after the next epoch): %s", epoch, exc)
                return False
            ctx.info(last_checkpoint_epoch=epoch)
            return True

        used = resolve_device(device).type
        result = train_strategy(plan.strategy, bars, device=device, cancel=ctx.token,
                                progress=_with_device(ctx.progress, used), checkpoint=checkpoint,
                                resume_from=resume_from, request=ctx.job.params)
        metrics = plain(result.metrics)
        metadata = {
            "op_id": ctx.op_id, "attempt": ctx.attempt, "worker_id": ctx.worker_id,
            "strategy": plan.strategy.name, "symbol": plan.symbol, "timeframes": plan.timeframes,
            "start": str(bars[plan.timeframes[0]].index[0]), "end": str(bars[plan.timeframes[0]].index[-1]),
            "metrics": metrics, "feature_names": result.feature_names,
        }
        version = ctx.call(ctx.models.save(plan.model_name, result.bundle, metadata))
        # Loss and accuracy per epoch, for the op's page (the record keeps only the final ones).
        history = {"format": "ktrdr.training.history/1", "model": f"{plan.model_name}@{version}",
                   "history": result.history}
        try:
            ctx.call(ctx.results.put(json.dumps(plain(history)).encode(),
                                     description=f"training history of {plan.model_name}@{version}"))
        except Exception as exc:  # the model is stored; the history only feeds a chart
            ctx.log.warning("training history not stored: %s", exc)
        try:
            ctx.call(ctx.checkpoints.delete())
        except Exception as exc:  # the model is stored; a stale checkpoint only costs space
            ctx.log.warning("checkpoint not deleted: %s", exc)
        return TrainingResult(model=f"{plan.model_name}@{version}", model_name=plan.model_name,
                              model_version=version, symbol=plan.symbol, timeframes=plan.timeframes, metrics=metrics)

    return run_training
