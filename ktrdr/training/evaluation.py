"""Classification quality on held-out data, always next to a majority-class baseline: a model
that cannot beat "always predict the commonest class" has learned nothing tradable."""

from __future__ import annotations

from typing import Any

import numpy as np

from ktrdr.training.labels import CLASS_NAMES


def evaluate_predictions(
    y_true: np.ndarray,
    y_pred: np.ndarray,
    num_classes: int = 3,
    train_labels: np.ndarray | None = None,
) -> dict[str, Any]:
    """Accuracy, per-class precision/recall/F1/support, confusion matrix (rows = true class),
    and baselines: ``majority_baseline_accuracy`` is the share of the commonest class in
    ``y_true`` (the best constant guess in hindsight); ``train_majority_baseline_accuracy``
    predicts the commonest *training* class, the baseline a constant model would really get.
    ``edge`` = accuracy - majority_baseline_accuracy."""
    y_true = np.asarray(y_true, dtype=np.int64)
    y_pred = np.asarray(y_pred, dtype=np.int64)
    n = len(y_true)
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (y_true, y_pred), 1)
    names = list(CLASS_NAMES) if num_classes == len(CLASS_NAMES) else [str(i) for i in range(num_classes)]
    per_class: dict[str, dict[str, float | int]] = {}
    for k, name in enumerate(names):
        tp = int(cm[k, k])
        predicted, actual = int(cm[:, k].sum()), int(cm[k, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": precision, "recall": recall, "f1": f1, "support": actual}
    accuracy = float(np.trace(cm) / n) if n else 0.0
    counts = np.bincount(y_true, minlength=num_classes)
    majority = float(counts.max() / n) if n else 0.0
    result: dict[str, Any] = {
        "samples": n,
        "accuracy": accuracy,
        "per_class": per_class,
        "confusion_matrix": cm.tolist(),
        "class_names": names,
        "majority_class": names[int(counts.argmax())],
        "majority_baseline_accuracy": majority,
        "edge": accuracy - majority,
    }
    if train_labels is not None and len(train_labels):
        train_major = int(np.bincount(np.asarray(train_labels, np.int64), minlength=num_classes).argmax())
        result["train_majority_baseline_accuracy"] = float(counts[train_major] / n) if n else 0.0
    return result
