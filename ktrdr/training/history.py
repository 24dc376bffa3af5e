"""Per-epoch training history and the metrics derived from it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class EpochMetrics:
    epoch: int  # 1-based
    train_loss: float
    train_accuracy: float
    val_loss: float | None
    val_accuracy: float | None
    learning_rate: float
    duration_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _monitored(e: EpochMetrics) -> float:
    return e.val_loss if e.val_loss is not None else e.train_loss


def derived_metrics(history: list[EpochMetrics], min_delta: float = 0.001, window: int = 5) -> dict[str, Any]:
    """Best epoch / loss, epochs since improvement, and overfitting / plateau flags.

    Overfitting: over the last ``window`` epochs train loss kept falling while validation loss
    rose. Plateau: the monitored loss moved less than ``min_delta`` across that window.
    """
    if not history:
        return {
            "best_epoch": None,
            "best_val_loss": None,
            "epochs_since_improvement": 0,
            "is_overfitting": False,
            "is_plateau": False,
        }
    best_epoch, best = history[0].epoch, _monitored(history[0])
    for e in history[1:]:
        if _monitored(e) < best - min_delta:
            best_epoch, best = e.epoch, _monitored(e)
    recent = history[-window:]
    overfitting = plateau = False
    if len(recent) >= window:
        train_drop = recent[0].train_loss - recent[-1].train_loss
        if recent[0].val_loss is not None and recent[-1].val_loss is not None:
            overfitting = train_drop > min_delta and recent[-1].val_loss - recent[0].val_loss > min_delta
        span = [_monitored(e) for e in recent]
        plateau = max(span) - min(span) < min_delta
    return {
        "best_epoch": best_epoch,
        "best_val_loss": best if not math.isnan(best) else None,
        "epochs_since_improvement": history[-1].epoch - best_epoch,
        "is_overfitting": overfitting,
        "is_plateau": plateau,
    }
