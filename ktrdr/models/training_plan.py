"""Turning a ``training`` request into what :func:`train_strategy` needs.

Shared by the coordinator (which validates before dispatch) and the training handler, so both
read a request the same way. Strategies come by packaged name, as a file name in the strategies
directory or as YAML text (:func:`ktrdr.strategy.load_strategy`), never as a path: a path would
name a file on whichever machine reads it.
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass

from ktrdr.strategy import NeuroFuzzyStrategy, StrategyError, load_strategy
from ktrdr.strategy.loader import parse_strategy
from subjects.training import MODEL_NAME, TrainingParams


class TrainingRequestError(ValueError):
    """A request that cannot be trained; ``field`` names the parameter at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class TrainingPlan:
    strategy: NeuroFuzzyStrategy  # with the request's overrides applied
    symbol: str
    timeframes: list[str]
    model_name: str


def load_neuro_strategy(source: str) -> NeuroFuzzyStrategy:
    try:
        strategy = load_strategy(source)
    except StrategyError as exc:
        raise TrainingRequestError("strategy", str(exc)) from None
    if not isinstance(strategy, NeuroFuzzyStrategy):
        raise TrainingRequestError("strategy", f"{strategy.name!r} is rule-based: it has no model to train")
    return strategy


def default_model_name(strategy_name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", strategy_name).lstrip(".")[:64] or "model"
    return name if MODEL_NAME.match(name) else "model"


def plan_training(params: TrainingParams) -> TrainingPlan:
    """The strategy with overrides applied, the symbol, timeframes and model name; raises
    :class:`TrainingRequestError` naming the field when the request cannot be trained."""
    strategy = load_neuro_strategy(params.strategy)
    overrides = {k: v for k, v in (("epochs", params.epochs), ("seed", params.seed),
                                   ("checkpoint_every", params.checkpoint_every)) if v is not None}
    if overrides:
        doc = copy.deepcopy(strategy.document)
        doc["training"] = {**(doc.get("training") or {}), **overrides}
        try:
            strategy = parse_strategy(doc, source=strategy.source)  # type: ignore[assignment]
        except StrategyError as exc:
            raise TrainingRequestError("strategy", str(exc)) from None
    wanted = strategy.training_data.timeframes
    timeframes = params.timeframes or list(wanted)
    used = {tf for item in strategy.nn_inputs if isinstance(item.timeframes, list) for tf in item.timeframes}
    missing = sorted(used - set(timeframes))
    if missing:
        raise TrainingRequestError("timeframes", f"the strategy's nn_inputs need {missing}")
    symbol = (params.symbols or strategy.training_data.symbols)[0]
    return TrainingPlan(strategy=strategy, symbol=symbol, timeframes=timeframes,
                        model_name=params.model_name or default_model_name(strategy.name))
