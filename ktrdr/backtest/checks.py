"""Checks of a backtest or sweep request that need the domain: does the strategy load, with its
overrides and every grid parameter? Shared by the coordinator's API and the CLI, so that a bad
strategy is refused before anything is queued."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ktrdr.backtest.sweep import combinations
from ktrdr.errors import FieldError
from ktrdr.strategy import StrategyError, load_strategy, with_parameters

# ``field`` names the request field at fault (``strategy``, ``parameters.fast``, ``grid.slow``...).
RequestProblem = FieldError


def check_strategy(strategy: str, parameters: Mapping[str, Any] | None = None,
                   grid: Mapping[str, Sequence[Any]] | None = None) -> str:
    """The strategy's name if it loads with ``parameters`` and every combination of ``grid``."""
    try:
        loaded = load_strategy(strategy)
    except StrategyError as exc:
        raise RequestProblem("strategy", str(exc)) from None
    overrides = dict(parameters or {})
    try:
        if overrides:
            with_parameters(loaded, overrides)
    except StrategyError as exc:
        raise RequestProblem("parameters", str(exc)) from None
    for combo in combinations(grid or {}) if grid else []:
        try:
            with_parameters(loaded, {**overrides, **combo})
        except StrategyError as exc:
            label = ", ".join(f"{k}={v}" for k, v in combo.items())
            raise RequestProblem("grid", f"combination {label}: {exc}") from None
    return loaded.name
