"""A trained model with everything needed to use it later: the model bundle.

Serialised as ``torch.save`` of ``{"meta_json": str, "state_dict": {...}}`` and read back with
``weights_only=True``: weights stay tensors, everything else is inspectable JSON, and loading
a bundle cannot execute code.
"""

from __future__ import annotations

import io
import json
import platform
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from torch import nn

from ktrdr.training.labels import CLASS_NAMES
from ktrdr.training.model import ModelConfig, build_mlp
from ktrdr.training.scaler import StandardScaler

BUNDLE_FORMAT = "ktrdr.model-bundle/1"


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    for pkg in ("numpy", "pandas", "ktrdr"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = "unknown"
    return versions


@dataclass
class ModelBundle:
    model_config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    feature_names: list[str]
    scaler: StandardScaler
    strategy_text: str
    fuzzy_sets: dict[str, Any] = field(default_factory=dict)
    base_timeframe: str = ""
    timeframes: list[str] = field(default_factory=list)
    labels: dict[str, Any] = field(default_factory=dict)
    training_metrics: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=library_versions)
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    _model: nn.Module | None = field(default=None, repr=False, compare=False)

    @property
    def strategy(self) -> dict[str, Any]:
        loaded = yaml.safe_load(self.strategy_text) if self.strategy_text else {}
        return loaded if isinstance(loaded, dict) else {}

    def model(self) -> nn.Module:
        """The network on CPU in eval mode (built once per bundle)."""
        if self._model is None:
            net = build_mlp(len(self.feature_names), self.model_config)
            net.load_state_dict(self.state_dict)
            self._model = net.eval()
        return self._model

    def meta(self) -> dict[str, Any]:
        return {
            "format": BUNDLE_FORMAT,
            "model_config": self.model_config.to_dict(),
            "feature_names": self.feature_names,
            "scaler": self.scaler.to_dict(),
            "strategy_text": self.strategy_text,
            "fuzzy_sets": self.fuzzy_sets,
            "base_timeframe": self.base_timeframe,
            "timeframes": self.timeframes,
            "labels": self.labels,
            "training_metrics": self.training_metrics,
            "evaluation": self.evaluation,
            "versions": self.versions,
            "created_at": self.created_at,
        }

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        weights = {k: v.detach().to("cpu") for k, v in self.state_dict.items()}
        torch.save({"meta_json": json.dumps(self.meta(), default=_jsonable), "state_dict": weights}, buffer)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ModelBundle:
        raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        meta = json.loads(raw["meta_json"])
        if meta.get("format") != BUNDLE_FORMAT:
            raise ValueError(f"not a ktrdr model bundle (format {meta.get('format')!r})")
        mc = meta["model_config"]
        return cls(
            model_config=ModelConfig(
                hidden_layers=tuple(mc["hidden_layers"]),
                dropout=mc["dropout"],
                activation=mc["activation"],
                num_classes=mc["num_classes"],
            ),
            state_dict=dict(raw["state_dict"]),
            feature_names=list(meta["feature_names"]),
            scaler=StandardScaler.from_dict(meta["scaler"]),
            strategy_text=meta["strategy_text"],
            fuzzy_sets=meta["fuzzy_sets"],
            base_timeframe=meta["base_timeframe"],
            timeframes=list(meta["timeframes"]),
            labels=meta["labels"],
            training_metrics=meta["training_metrics"],
            evaluation=meta["evaluation"],
            versions=meta["versions"],
            created_at=meta["created_at"],
        )


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, datetime | pd.Timestamp):
        return obj.isoformat()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def load_bundle(data: bytes) -> ModelBundle:
    return ModelBundle.from_bytes(data)


def predict(bundle: ModelBundle | bytes, features: pd.DataFrame) -> pd.DataFrame:
    """Class probabilities (columns BUY, SELL, HOLD) for every row at once.

    Columns are picked by the bundle's feature names (order in ``features`` is irrelevant; a
    missing one is an error). Rows with any NaN feature (warm-up) get NaN probabilities.
    """
    if isinstance(bundle, bytes | bytearray):
        bundle = ModelBundle.from_bytes(bytes(bundle))
    missing = [c for c in bundle.feature_names if c not in features.columns]
    if missing:
        raise KeyError(f"features lack columns the model needs: {missing[:5]}")
    x = features[bundle.feature_names].to_numpy(dtype=np.float64)
    valid = ~np.isnan(x).any(axis=1)
    probs = np.full((len(x), bundle.model_config.num_classes), np.nan)
    if valid.any():
        scaled = bundle.scaler.transform(x[valid])
        with torch.inference_mode():
            logits = bundle.model()(torch.from_numpy(scaled))
            probs[valid] = torch.softmax(logits, dim=1).double().numpy()
    names = list(CLASS_NAMES) if probs.shape[1] == len(CLASS_NAMES) else [str(i) for i in range(probs.shape[1])]
    return pd.DataFrame(probs, index=features.index, columns=names)
