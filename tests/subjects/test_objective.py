"""An objective says what "best" is: a known metric, its direction, and the constraints a variant
must meet. A variant that misses one is ranked after those that meet them all, saying why, and is
never best; a misspelt metric is an error naming the valid ones, never a silent first pick."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from subjects.objective import METRICS, Objective, Relation, summarise_exclusions
from subjects.params import SweepParams


def entry(fast: int, slow: int, **metrics: float | int | None) -> dict[str, object]:
    return {"parameters": {"fast": fast, "slow": slow}, "metrics": {"trades": 5, **metrics}}


def test_an_unknown_metric_is_refused_naming_every_valid_one() -> None:
    with pytest.raises(ValidationError) as refused:
        Objective(metric="sharpe")
    message = str(refused.value)
    assert "unknown metric 'sharpe'" in message and all(name in message for name in METRICS)


def test_each_metric_ranks_its_own_way_unless_told() -> None:
    assert Objective().descending and Objective().metric == "sharpe_ratio"
    assert Objective(metric="max_drawdown_pct").direction == "min"
    assert Objective(metric="max_drawdown_pct", direction="max").descending


SWEEP = {"strategy": "sma_crossover", "symbol": "X", "timeframe": "1h", "grid": {"fast": [5]}}


def test_the_fields_before_objectives_still_read_as_one() -> None:
    params = SweepParams.model_validate({**SWEEP, "metric": "total_return_pct", "descending": False})
    assert params.objective == Objective(metric="total_return_pct", direction="min")
    assert (params.metric, params.ranks_descending) == ("total_return_pct", False)
    with pytest.raises(ValidationError, match="unknown metric 'foo'"):
        SweepParams.model_validate({**SWEEP, "metric": "foo"})


def test_variants_that_miss_a_constraint_rank_after_every_one_that_meets_them() -> None:
    objective = Objective(metric="total_return_pct", min_trades=1, max_drawdown_pct=20, require=["fast < slow"])
    ranked = objective.rank([
        entry(20, 20, total_return_pct=0.0, trades=0, max_drawdown_pct=0.0),  # never trades
        entry(5, 30, total_return_pct=4.0, max_drawdown_pct=10.0),
        entry(30, 5, total_return_pct=9.0, max_drawdown_pct=10.0),  # fast >= slow
        entry(10, 30, total_return_pct=7.0, max_drawdown_pct=35.0),  # too deep
        entry(10, 60, total_return_pct=6.0, max_drawdown_pct=12.0),
        entry(15, 60, total_return_pct=None, max_drawdown_pct=12.0),  # nothing to rank by
    ])
    assert [(e["parameters"]["fast"], e["parameters"]["slow"]) for e in ranked] == [
        (10, 60), (5, 30), (20, 20), (30, 5), (10, 30), (15, 60)]
    assert [e["eligible"] for e in ranked] == [True, True, False, False, False, False]
    assert [e.get("excluded") for e in ranked[2:]] == [
        "fewer than 1 trade (0)", "fast < slow does not hold", "drawdown deeper than 20 % (35.00 %)",
        "no value for total_return_pct"]


def test_a_variant_that_never_trades_may_be_best_only_when_asked() -> None:
    flat, losing = entry(20, 20, max_drawdown_pct=0.0, trades=0), entry(5, 30, max_drawdown_pct=12.0)
    assert Objective(metric="max_drawdown_pct").rank([flat, losing])[0] is not flat
    assert Objective(metric="max_drawdown_pct").rank([flat, losing])[0]["parameters"] == {"fast": 5, "slow": 30}
    asked = Objective(metric="max_drawdown_pct", min_trades=0).rank([losing, flat])
    assert asked[0]["parameters"] == {"fast": 20, "slow": 20} and asked[0]["eligible"]


def test_ties_keep_grid_order_and_a_base_fills_parameters_the_grid_does_not_vary() -> None:
    objective = Objective(metric="trades", require=["fast < slow"])
    ranked = objective.rank([{"parameters": {"fast": 5}, "metrics": {"trades": 3}},
                             {"parameters": {"fast": 2}, "metrics": {"trades": 3}}], base={"slow": 4})
    assert [e["parameters"]["fast"] for e in ranked] == [2, 5]
    assert [e["eligible"] for e in ranked] == [True, False]


@pytest.mark.parametrize("text", ["fast <", "fast << slow", "import os", "fast < slow; drop", "x" * 300])
def test_a_relation_that_does_not_parse_is_refused(text: str) -> None:
    with pytest.raises(ValidationError, match="invalid relation"):
        Objective(require=[text])


def test_relations_compare_parameters_and_numbers() -> None:
    assert Relation.parse("fast>=5").holds({"fast": 5}) is True
    assert Relation.parse("fast != slow").holds({"fast": 5, "slow": 5}) is False
    assert Relation.parse("fast < slow").holds({"fast": 5}) is None  # a side missing: not comparable
    assert Relation.parse("fast < slow").holds({"fast": "a", "slow": 3}) is None
    assert Objective(require=["fast<slow", "slow >= 10.5"]).require == ["fast < slow", "slow >= 10.5"]


def test_why_none_met_is_counted_by_reason() -> None:
    ranked = Objective(min_trades=3).rank([entry(1, 2, trades=0, sharpe_ratio=1.0),
                                           entry(1, 3, trades=1, sharpe_ratio=1.0),
                                           entry(1, 4, trades=2, sharpe_ratio=None)])
    assert summarise_exclusions(ranked) == "3 with fewer than 3 trades"
