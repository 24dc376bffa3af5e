"""Feature standardisation fitted on the training part only (fitting on all rows would leak
the validation/test distribution into training)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class StandardScaler:
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, x: np.ndarray) -> StandardScaler:
        mean = x.mean(axis=0)
        std = x.std(axis=0)
        # A constant feature would divide by zero; leave it centred at 0 instead.
        std = np.where(std > 1e-12, std, 1.0)
        return cls(tuple(float(v) for v in mean), tuple(float(v) for v in std))

    def transform(self, x: np.ndarray) -> np.ndarray:
        out = (np.asarray(x, dtype=np.float64) - np.asarray(self.mean)) / np.asarray(self.std)
        return out.astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StandardScaler:
        return cls(tuple(float(v) for v in d["mean"]), tuple(float(v) for v in d["std"]))
