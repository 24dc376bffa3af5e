"""The strategy's neural network: an MLP over fuzzy-membership features, 3 output classes."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
}


@dataclass(frozen=True)
class ModelConfig:
    hidden_layers: tuple[int, ...] = (32, 16)
    dropout: float = 0.2
    activation: str = "relu"
    num_classes: int = 3

    @classmethod
    def from_strategy(cls, model: Mapping[str, Any] | None) -> ModelConfig:
        model = model or {}
        kind = str(model.get("type", "mlp")).lower()
        if kind != "mlp":
            raise ValueError(f"unsupported model type {kind!r} (only mlp)")
        arch = {**model, **(model.get("architecture") or {})}
        cfg = cls(
            hidden_layers=tuple(int(h) for h in arch.get("hidden_layers", cls.hidden_layers)),
            dropout=float(arch.get("dropout", cls.dropout)),
            activation=str(arch.get("activation", cls.activation)).lower(),
            num_classes=int(arch.get("num_classes", cls.num_classes)),
        )
        if cfg.activation not in _ACTIVATIONS:
            raise ValueError(f"unknown activation {cfg.activation!r}; one of {sorted(_ACTIVATIONS)}")
        if not 0.0 <= cfg.dropout < 1.0:
            raise ValueError("dropout must be in [0, 1)")
        return cfg

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["hidden_layers"] = list(self.hidden_layers)
        return d


def build_mlp(input_size: int, config: ModelConfig) -> nn.Sequential:
    """Linear -> activation -> dropout per hidden layer, then a linear head producing logits."""
    modules: list[nn.Module] = []
    width = input_size
    for hidden in config.hidden_layers:
        modules += [nn.Linear(width, hidden), _ACTIVATIONS[config.activation]()]
        if config.dropout > 0:
            modules.append(nn.Dropout(config.dropout))
        width = hidden
    modules.append(nn.Linear(width, config.num_classes))
    return nn.Sequential(*modules)
