"""The strategy's neural network: an MLP over fuzzy-membership features, 3 output classes."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from ktrdr.strategy.schema import ModelSpec

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
    def from_spec(cls, model: ModelSpec) -> ModelConfig:
        """The validated strategy's ``model`` section (type, ranges and activation checked there)."""
        arch = model.architecture
        return cls(hidden_layers=tuple(arch.hidden_layers), dropout=arch.dropout, activation=arch.activation)

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
