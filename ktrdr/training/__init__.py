"""Neuro-fuzzy strategy training: features, labels, trainer, evaluation and model bundles.

Domain code only: it takes a CancelToken and a ProgressFn and knows nothing of NATS.
"""

from ktrdr.training.bundle import ModelBundle, load_bundle, predict
from ktrdr.training.features import build_features, feature_names
from ktrdr.training.pipeline import TrainingResult, prepare_dataset, train_strategy
from ktrdr.training.signals import decide, target_positions
from ktrdr.training.trainer import Trainer, TrainerConfig

__all__ = [
    "ModelBundle",
    "Trainer",
    "TrainerConfig",
    "TrainingResult",
    "build_features",
    "decide",
    "feature_names",
    "load_bundle",
    "predict",
    "prepare_dataset",
    "target_positions",
    "train_strategy",
]
