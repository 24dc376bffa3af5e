"""Checks of a backtest or sweep request that need the domain: does the strategy load, with its
overrides and every grid parameter? Shared by the coordinator's API and the CLI, so that a bad
strategy is refused before anything is queued."""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from ktrdr.backtest.sweep import combinations
from ktrdr.errors import FieldError
from ktrdr.strategy import RuleStrategy, Strategy, StrategyError, load_strategy, with_parameters

# ``field`` names the request field at fault (``strategy``, ``parameters.fast``, ``grid.slow``...).
RequestProblem = FieldError


def check_strategy(strategy: str, parameters: Mapping[str, Any] | None = None,
                   grid: Mapping[str, Sequence[Any]] | None = None) -> str:
    """The strategy's name if it loads with ``parameters`` and every combination of ``grid``.

    A grid whose parameters all set leaves of the strategy's indicators is checked by validating each
    distinct indicator spec its combinations make, once (a sweep of 10,000 SMA pairs: 520 specs, not
    10,000 strategies); the first combination found bad is then refused with the very error the
    combination-by-combination check gives. Any other grid is checked combination by combination.
    """
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
    if grid and not (isinstance(loaded, RuleStrategy) and _check_by_indicator(loaded, overrides, grid)):
        for combo in combinations(grid):
            _check_combination(loaded, overrides, combo)
    return loaded.name


def _check_combination(loaded: Strategy, overrides: Mapping[str, Any], combo: Mapping[str, Any]) -> None:
    try:
        with_parameters(loaded, {**overrides, **combo})
    except StrategyError as exc:
        label = ", ".join(f"{k}={v}" for k, v in combo.items())
        raise RequestProblem("grid", f"combination {label}: {exc}") from None


def _typed(values: Sequence[Any]) -> Hashable:
    # 5, 5.0 and True are equal in Python but not to an indicator's validation.
    return tuple((type(v).__qualname__, v) for v in values)


def _check_by_indicator(loaded: RuleStrategy, overrides: Mapping[str, Any], grid: Mapping[str, Sequence[Any]]) -> bool:
    """True when every combination of ``grid`` (over ``overrides``) loads, decided from the distinct
    indicator specs the combinations make (see ``ktrdr.backtest.block.Variants``, which makes a
    variant from them); raises for the first combination that does not load; False when the grid
    cannot be decided that way (a parameter that is not an indicator's leaf)."""
    from ktrdr.backtest.block import Variants

    variants = Variants(loaded)
    # A combination's parameters in the order with_parameters applies them: {**overrides, **combo}.
    names = list({**overrides, **dict.fromkeys(grid)})
    setters: dict[str, dict[str, str]] = {}  # indicator id -> {key: the parameter that sets it last}
    for name in names:
        found = variants.leaf_of(name)
        if found is None:
            return False
        setters.setdefault(found[0], {})[found[1]] = name
    # Per indicator that the grid varies: the grid parameters it reads, and its specs found bad.
    varying = {ident: [n for n in keys.values() if n in grid] for ident, keys in setters.items()}
    bad: dict[str, set[Hashable]] = {}
    for ident, grid_names in varying.items():
        if not grid_names:
            continue  # set by the overrides alone, checked with them
        keys = setters[ident]
        for values in itertools.product(*(grid[n] for n in grid_names)):
            chosen = dict(zip(grid_names, values, strict=True))
            fields = {leaf: chosen[n] if n in chosen else overrides[n] for leaf, n in keys.items()}
            if variants.validated({**variants.documented(ident), **fields}) is None:
                bad.setdefault(ident, set()).add(_typed(values))
    if not bad:
        return True
    # The first bad combination in grid order, refused by the full check for its exact message.
    order = list(grid)
    for values in itertools.product(*(grid[n] for n in order)):
        combo = dict(zip(order, values, strict=True))
        if any(_typed([combo[n] for n in varying[ident]]) in keys for ident, keys in bad.items()):
            _check_combination(loaded, overrides, combo)
            return False  # the full check let it through after all: let it decide every combination
    return False
