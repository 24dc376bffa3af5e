"""A backtest may go on from where another ended (``carry_in``): flat, or a position with the cash
beside it. Every carried value is bounded and every bad one refused naming its field; a sweep, its
blocks and a walk-forward start flat and refuse one."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from ktrdr.optypes.backtest_block import BacktestBlockParams
from ktrdr.optypes.walkforward import WalkForwardParams
from subjects.params import MAX_CARRIED_AMOUNT, MAX_CARRIED_SHARES, BacktestParams, CarryIn, SweepParams

BASE = {"strategy": "sma_crossover", "symbol": "X", "timeframe": "1h", "start": "2024-02-01T00:00:00Z",
        "capital": 100_300.0}
POSITION = {"side": 1, "size": 250, "entry_price": 101.2, "commission": 25.3, "entry_time": "2024-01-31T20:00:00Z",
            "bars_held": 4}


def carried(**position: Any) -> dict[str, Any]:
    return {**BASE, "carry_in": {"cash": 75_000.0, "position": {**POSITION, **position}}}


def test_a_carried_position_reads_with_its_cash_and_entry_in_utc() -> None:
    params = BacktestParams.model_validate(carried())
    assert params.carry_in is not None and params.carry_in.position is not None
    assert params.carry_in.cash == 75_000.0 and params.carry_in.position.entry_time.tzinfo is not None
    naive = BacktestParams.model_validate(carried(entry_time="2024-01-31T20:00:00"))
    assert naive.carry_in == params.carry_in
    assert BacktestParams.model_validate({**BASE, "carry_in": {}}).carry_in == CarryIn()  # carried flat
    assert BacktestParams.model_validate(BASE).carry_in is None  # starts flat from capital


@pytest.mark.parametrize(("position", "field"), [
    ({"side": 0}, "side"), ({"side": 2}, "side"),
    ({"size": 0}, "size"), ({"size": MAX_CARRIED_SHARES + 1}, "size"), ({"size": 2.5}, "size"),
    ({"entry_price": 0.0}, "entry_price"), ({"entry_price": -1.0}, "entry_price"),
    ({"entry_price": float("inf")}, "entry_price"), ({"entry_price": float("nan")}, "entry_price"),
    ({"entry_price": MAX_CARRIED_AMOUNT * 10}, "entry_price"),
    ({"commission": -0.01}, "commission"), ({"commission": float("nan")}, "commission"),
    ({"bars_held": 0}, "bars_held"), ({"entry_time": "yesterday"}, "entry_time"),
    ({"colour": "red"}, "colour"),
])
def test_a_bad_carried_value_is_refused_naming_its_field(position: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as refused:
        BacktestParams.model_validate(carried(**position))
    assert any(e["loc"][:3] == ("carry_in", "position", field) for e in refused.value.errors()), refused.value


@pytest.mark.parametrize("cash", [float("nan"), float("inf"), -MAX_CARRIED_AMOUNT * 2, MAX_CARRIED_AMOUNT * 2])
def test_carried_cash_is_a_finite_bounded_amount(cash: float) -> None:
    body = carried()
    body["carry_in"]["cash"] = cash
    with pytest.raises(ValidationError, match="carry_in.cash"):
        BacktestParams.model_validate(body)


def test_cash_comes_with_a_position_and_only_with_one() -> None:
    with pytest.raises(ValidationError, match="give the cash held beside the carried position"):
        BacktestParams.model_validate({**BASE, "carry_in": {"position": POSITION}})
    with pytest.raises(ValidationError, match="only with a position; carried flat, the capital is all cash"):
        BacktestParams.model_validate({**BASE, "carry_in": {"cash": 5.0}})


def test_a_carried_position_was_entered_before_the_backtest_starts() -> None:
    with pytest.raises(ValidationError, match="entered at 2024-02-01T00:00:00.* not before start"):
        BacktestParams.model_validate(carried(entry_time="2024-02-01T00:00:00Z"))


def test_sweeps_blocks_and_walkforwards_start_flat() -> None:
    flat = {"carry_in": {}}
    with pytest.raises(ValidationError, match="a sweep's variants all start flat"):
        SweepParams.model_validate({**BASE, "grid": {"fast": [5]}, **flat})
    with pytest.raises(ValidationError, match="a block's variants all start flat"):
        BacktestBlockParams.model_validate({**BASE, "grid": {"fast": [5]}, "first": 0, "stop": 1, **flat})
    with pytest.raises(ValidationError, match=r"its folds carry their own positions \(carry: true\)"):
        WalkForwardParams.model_validate({**BASE, "folds": 2, "grid": {"fast": [5]}, **flat})
    params = WalkForwardParams.model_validate({**BASE, "folds": 2, "grid": {"fast": [5]}, "carry": True})
    assert params.carry and params.backtest(start="2024-03-01", end="2024-04-01").carry_in is None
