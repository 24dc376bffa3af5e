"""Admission of a sweep's grid: each distinct indicator spec validated once, and a bad combination
refused with the error the combination-by-combination check gives, naming the field."""

from __future__ import annotations

from typing import Any

import pytest

from ktrdr.backtest import checks
from ktrdr.backtest.checks import RequestProblem, check_strategy
from ktrdr.backtest.sweep import combinations
from ktrdr.optypes.defn import Rejected
from ktrdr.optypes.sweep import admit_sweep
from ktrdr.strategy import StrategyError, load_strategy, with_parameters
from subjects.params import SweepParams

SHORTABLE = """
name: shortable
indicators:
  fast: {type: sma, period: 10}
  slow: {type: sma, period: 30}
rules:
  entry_long: {cross_above: [fast, slow]}
  exit_long: {cross_below: [fast, slow]}
parameters:
  fast: indicators.fast.period
  short: allow_short
"""


def _first_refusal(strategy: str, overrides: dict[str, Any], grid: dict[str, list[Any]]) -> str | None:
    """What the check of every combination, one by one, says first."""
    loaded = load_strategy(strategy)
    for combo in combinations(grid):
        try:
            with_parameters(loaded, {**overrides, **combo})
        except StrategyError as exc:
            label = ", ".join(f"{k}={v}" for k, v in combo.items())
            return f"combination {label}: {exc}"
    return None


@pytest.mark.parametrize(("overrides", "grid"), [
    ({}, {"fast": [5, 10], "slow": [20, 0, -3]}),
    ({}, {"fast": [5, 10.5], "slow": [20, 30]}),
    ({}, {"fast": [5, True], "slow": [20]}),
    ({}, {"slow": [20, "x"], "fast": [3]}),
    ({"slow": 40}, {"fast": [5, 0]}),
    ({"fast": 5}, {"fast": [7, 0], "slow": [30]}),  # the grid's value replaces the override's
    ({}, {"fast": [5], "indicators.fast.period": [7, 0]}),  # a name and its path: the last one wins
])
def test_a_bad_combination_is_refused_with_the_message_of_the_one_by_one_check(
        overrides: dict[str, Any], grid: dict[str, list[Any]]) -> None:
    expected = _first_refusal("sma_crossover", overrides, grid)
    assert expected is not None
    with pytest.raises(RequestProblem) as raised:
        check_strategy("sma_crossover", overrides, grid)
    assert raised.value.field == "grid" and raised.value.message == expected


def test_a_good_grid_is_checked_per_distinct_indicator_spec_not_per_combination(
        monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real = checks.with_parameters

    def counting(strategy: Any, overrides: Any) -> Any:
        calls.append(overrides)
        return real(strategy, overrides)

    monkeypatch.setattr(checks, "with_parameters", counting)
    grid = {"fast": list(range(5, 105, 5)), "slow": list(range(20, 2020, 4))}
    assert check_strategy("sma_crossover", {}, grid) == "sma_crossover"
    assert calls == []  # 10,000 combinations, 520 indicator specs, no strategy rebuilt
    # A parameter that is not an indicator's leaf: every combination is checked by with_parameters.
    assert check_strategy(SHORTABLE, {}, {"short": [False, True], "fast": [5, 7]}) == "shortable"
    assert len(calls) == 4


def test_a_sweep_with_a_bad_combination_is_rejected_at_admission_naming_the_grid() -> None:
    params = SweepParams(strategy="sma_crossover", symbol="SYNTH", timeframe="1h",
                         grid={"fast": [5, 10], "slow": [30, 0]})
    with pytest.raises(Rejected) as raised:
        admit_sweep(params)
    assert raised.value.field == "grid"
    assert raised.value.message == _first_refusal("sma_crossover", {}, params.grid)
