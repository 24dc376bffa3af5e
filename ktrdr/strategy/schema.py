"""Pydantic models of the two strategy forms.

* :class:`RuleStrategy` -- indicators plus entry/exit conditions; needs no model. Strict: an
  unknown key is an error, so typos do not silently change a backtest.
* :class:`NeuroFuzzyStrategy` -- the first ktrdr's version "3.0" layout (indicators -> fuzzy
  sets -> MLP). Every field listed here is type- and range-checked. ``training`` is strict: it is
  the whole configuration of a training (:func:`ktrdr.training.train_strategy` reads nothing else),
  so its defaults here are the ones that apply and a misspelt key is an error, not a default. The
  first ktrdr's names are read too: ``data_split``, ``zigzag_threshold``, ``label_lookahead`` and
  hyperparameters under ``model.training`` (``training`` wins where both set one). Other sections
  stay open for the first ktrdr's descriptive keys (``hypothesis``, ``deployment``, ...).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from ktrdr.data.timeframes import TIMEFRAMES
from ktrdr.indicators import validate_spec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    model_config = ConfigDict(extra="allow")


class IndicatorSpec(_Open):
    type: str

    @model_validator(mode="after")
    def _known(self) -> IndicatorSpec:
        validate_spec(self.spec())
        return self

    def spec(self) -> dict[str, Any]:
        return {"type": self.type, **(self.model_extra or {})}


class ParameterSpec(_Strict):
    path: str  # dotted path into the strategy document, e.g. "indicators.fast.period"
    description: str = ""


class _StrategyBase(BaseModel):
    name: str = Field(min_length=1)
    description: str = ""
    indicators: dict[str, IndicatorSpec] = Field(default_factory=dict)
    parameters: dict[str, ParameterSpec] = Field(default_factory=dict)

    _source: str = PrivateAttr(default="<inline>")
    _document: dict[str, Any] = PrivateAttr(default_factory=dict)

    @field_validator("parameters", mode="before")
    @classmethod
    def _short_parameters(cls, value: Any) -> Any:
        # ``fast: indicators.fast.period`` is shorthand for ``fast: {path: indicators.fast.period}``.
        if isinstance(value, dict):
            return {k: {"path": v} if isinstance(v, str) else v for k, v in value.items()}
        return value

    @property
    def source(self) -> str:
        return self._source

    @property
    def document(self) -> dict[str, Any]:
        """The YAML document as loaded (after parameter overrides)."""
        return self._document

    def indicator_specs(self) -> dict[str, dict[str, Any]]:
        return {k: v.spec() for k, v in self.indicators.items()}


class RuleSet(_Strict):
    entry_long: dict[str, Any] | None = None
    exit_long: dict[str, Any] | None = None
    entry_short: dict[str, Any] | None = None
    exit_short: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _has_entry(self) -> RuleSet:
        if self.entry_long is None and self.entry_short is None:
            raise ValueError("needs entry_long or entry_short")
        return self


class RuleStrategy(_StrategyBase, _Strict):
    kind: Literal["rules"] = "rules"
    version: str = "1.0"
    rules: RuleSet
    allow_short: bool = False

    @model_validator(mode="after")
    def _short_rules(self) -> RuleStrategy:
        if self.rules.entry_short is not None and not self.allow_short:
            raise ValueError("rules.entry_short is set but allow_short is false")
        return self


Member = list[float] | dict[str, Any]


class FuzzySetSpec(_Open):
    indicator: str

    @model_validator(mode="after")
    def _members(self) -> FuzzySetSpec:
        members = self.model_extra or {}
        if not members:
            raise ValueError("needs at least one member, e.g. low: [0, 20, 40]")
        for name, value in members.items():
            _check_member(name, value)
        return self

    @property
    def members(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


def _check_member(name: str, value: Any) -> None:
    if isinstance(value, dict):
        kind = str(value.get("type", "")).lower()
        if kind == "gaussian":
            if not {"mean", "sigma"} <= set(value) or float(value["sigma"]) <= 0:
                raise ValueError(f"member {name!r}: gaussian needs mean and sigma > 0")
            return
        if kind not in ("triangular", "trapezoidal"):
            raise ValueError(f"member {name!r}: type must be triangular, trapezoidal or gaussian")
        value = value.get("parameters")
        want = 3 if kind == "triangular" else 4
        if not isinstance(value, list) or len(value) != want:
            raise ValueError(f"member {name!r}: {kind} needs parameters: a list of {want} numbers")
    if not isinstance(value, list) or len(value) not in (3, 4):
        raise ValueError(f"member {name!r}: use [a, b, c] (triangular), [a, b, c, d] (trapezoidal) "
                         "or {type: gaussian, mean, sigma}")
    try:
        nums = [float(v) for v in value]
    except (TypeError, ValueError):
        raise ValueError(f"member {name!r}: parameters must be numbers, got {value!r}") from None
    if any(a > b for a, b in zip(nums, nums[1:], strict=False)):
        raise ValueError(f"member {name!r}: parameters must be non-decreasing, got {value!r}")


class NNInput(_Strict):
    fuzzy_set: str
    timeframes: list[str] | Literal["all"] = "all"


class Architecture(_Open):
    hidden_layers: list[int] = Field(min_length=1)
    dropout: float = Field(default=0.2, ge=0.0, lt=1.0)
    activation: Literal["relu", "tanh", "sigmoid", "leaky_relu", "gelu", "elu"] = "relu"

    @field_validator("hidden_layers")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(h < 1 for h in v):
            raise ValueError("every hidden layer needs at least 1 unit")
        return v


class ModelSpec(_Open):
    type: Literal["mlp"]
    architecture: Architecture


class Decisions(_Open):
    output_format: Literal["classification"] = "classification"
    confidence_threshold: float = Field(default=0.5, ge=0.0, le=1.0)


class Labels(_Strict):
    source: Literal["zigzag", "forward_return"] = "zigzag"
    # The first ktrdr's names, and ``horizon`` (what lookahead is for forward returns), are read too;
    # giving two names of one field is an error (the second is an unknown key).
    threshold: float = Field(default=0.05, gt=0.0, validation_alias=AliasChoices("threshold", "zigzag_threshold"))
    lookahead: int = Field(default=20, ge=1,
                           validation_alias=AliasChoices("lookahead", "label_lookahead", "horizon"))


class EarlyStopping(_Strict):
    enabled: bool = True
    patience: int = Field(default=10, ge=1)
    min_delta: float = Field(default=0.001, ge=0.0)
    restore_best: bool = True  # end with the weights of the best validation epoch, not the last


class Split(_Strict):
    train: float = Field(default=0.7, gt=0.0, lt=1.0)
    validation: float = Field(default=0.15, ge=0.0, lt=1.0)
    test: float = Field(default=0.15, ge=0.0, lt=1.0)

    @model_validator(mode="after")
    def _sums_to_one(self) -> Split:
        if not math.isclose(self.train + self.validation + self.test, 1.0, abs_tol=1e-6):
            raise ValueError("train + validation + test must be 1")
        return self


class Training(_Strict):
    """How the model is trained. These defaults apply on every device: a device only changes how a
    step runs (CUDA graphs), never what is optimised, so a training that falls back from GPU to CPU,
    or resumes on another device, optimises the same thing."""

    epochs: int = Field(default=100, ge=1)
    batch_size: int = Field(default=32, ge=1)
    learning_rate: float = Field(default=0.001, gt=0.0)
    weight_decay: float = Field(default=0.0, ge=0.0)
    labels: Labels = Field(default_factory=Labels)
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    class_weights: list[float] | Literal["balanced"] | None = None
    split: Split = Field(default_factory=Split, validation_alias=AliasChoices("split", "data_split"))
    # Rows left out between split parts; None: labels.lookahead, so no label of one part sees the next.
    split_gap: int | None = Field(default=None, ge=0)
    seed: int = Field(default=42, ge=0)
    checkpoint_every: int = Field(default=10, ge=0)  # epochs; 0: no periodic checkpoints
    # The first ktrdr's; each has one value here.
    method: Literal["supervised"] = "supervised"
    optimizer: Literal["adam"] = "adam"

    @field_validator("early_stopping", mode="before")
    @classmethod
    def _switch(cls, v: Any) -> Any:
        # ``early_stopping: false`` is shorthand for ``{enabled: false}``.
        return {"enabled": v} if isinstance(v, bool) else v

    @field_validator("class_weights")
    @classmethod
    def _three_classes(cls, v: Any) -> Any:
        if isinstance(v, list) and (len(v) != 3 or any(w < 0 for w in v)):
            raise ValueError("class_weights needs 3 non-negative numbers (BUY, SELL, HOLD)")
        return v


def _listish(value: Any) -> Any:
    # The first ktrdr wrote ``symbols: {mode: single, list: [EURUSD]}``; a bare string means one.
    if isinstance(value, dict) and "list" in value:
        return value["list"]
    if isinstance(value, dict) and "symbol" in value:
        return [value["symbol"]]
    if isinstance(value, dict) and "timeframe" in value:
        return [value["timeframe"]]
    if isinstance(value, str):
        return [value]
    return value


class TrainingData(_Open):
    symbols: list[str] = Field(min_length=1)
    timeframes: list[str] = Field(min_length=1)
    history_required: int = Field(default=200, ge=0)

    @field_validator("symbols", "timeframes", mode="before")
    @classmethod
    def _lists(cls, v: Any) -> Any:
        return _listish(v)

    @field_validator("timeframes")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        bad = [tf for tf in v if tf not in TIMEFRAMES]
        if bad:
            raise ValueError(f"unknown timeframe(s) {bad}; one of {list(TIMEFRAMES)}")
        return v


class NeuroFuzzyStrategy(_StrategyBase, _Open):
    kind: Literal["neuro_fuzzy"] = "neuro_fuzzy"
    version: Literal["3.0"]
    fuzzy_sets: dict[str, FuzzySetSpec] = Field(min_length=1)
    nn_inputs: list[NNInput] = Field(default_factory=list)
    model: ModelSpec
    decisions: Decisions = Field(default_factory=Decisions)
    training: Training = Field(default_factory=Training)
    training_data: TrainingData

    @model_validator(mode="before")
    @classmethod
    def _first_ktrdr_hyperparameters(cls, data: Any) -> Any:
        # The first ktrdr kept epochs, batch size, learning rate... under model.training: ignored,
        # they would silently give way to defaults. Keys set in training win.
        if not isinstance(data, dict):
            return data
        model = data.get("model")
        legacy = model.get("training") if isinstance(model, dict) else None
        if not isinstance(legacy, dict) or not legacy:
            return data
        training = data.get("training")
        if training is not None and not isinstance(training, dict):
            return data
        return {**data, "training": {**legacy, **(training or {})}}


Strategy = RuleStrategy | NeuroFuzzyStrategy
