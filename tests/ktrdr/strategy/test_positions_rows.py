"""The rows-at-once walk (``target_positions_rows``, ``position_changes_rows``) and rules evaluated on
rows x bars operands (``evaluate_rows``) give, row by row, exactly what the one-row versions give."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from ktrdr.backtest.batch import changes_of, changes_of_rows
from ktrdr.strategy.conditions import evaluate, evaluate_rows
from ktrdr.strategy.signals import Signals, position_changes_rows, target_positions, target_positions_rows


def _one_by_one(signals: list[np.ndarray | None], state: int) -> np.ndarray:
    rows, n = next(s.shape for s in signals if s is not None)
    none = np.zeros((rows, n), dtype=bool)
    el, xl, es, xs = (none if s is None else s for s in signals)
    out = [target_positions(Signals(entry_long=el[r], exit_long=xl[r], entry_short=es[r], exit_short=xs[r]),
                            state=state) for r in range(rows)]
    return np.array(out, dtype=np.int8).reshape(rows, n)


def _assert_rows_match(signals: list[np.ndarray | None], state: int = 0) -> None:
    got = target_positions_rows(*signals, state=state)
    expected = _one_by_one(signals, state)
    assert got.dtype == np.int8 and got.shape == expected.shape
    assert np.array_equal(got, expected)


@pytest.mark.parametrize("seed", range(40))
def test_random_signals_walk_to_the_same_positions_row_by_row(seed: int) -> None:
    rng = np.random.default_rng(seed)
    rows, n = int(rng.integers(1, 8)), int(rng.integers(1, 60))
    density = rng.choice([0.0, 0.02, 0.2, 0.6, 1.0], size=4)
    signals: list[np.ndarray | None] = [rng.random((rows, n)) < d for d in density]
    for state in (0, 1, -1):
        _assert_rows_match(signals, state)
        _assert_rows_match([signals[0], signals[1], None, None], state)  # long only
        _assert_rows_match([None, None, signals[2], signals[3]], state)  # short only


def test_edge_cases_no_signals_all_buy_alternating_and_conflicts() -> None:
    n = 12
    no = np.zeros((3, n), dtype=bool)
    yes = np.ones((3, n), dtype=bool)
    alternating = np.tile(np.arange(n) % 2 == 0, (3, 1))
    for state in (0, 1, -1):
        _assert_rows_match([no, no, no, no], state)  # nothing fires: the state throughout
        _assert_rows_match([yes, no, no, no], state)  # all-buy
        _assert_rows_match([yes, yes, no, no], state)  # entry and exit together: the entry wins
        _assert_rows_match([yes, no, yes, no], state)  # both entries: a conflict, ignored
        _assert_rows_match([yes, no, yes, yes], state)
        _assert_rows_match([alternating, ~alternating, no, no], state)
        _assert_rows_match([alternating, no, ~alternating, no], state)  # long, short, long...
        _assert_rows_match([alternating, ~alternating, ~alternating, alternating], state)
    # No bars, one bar, no rows.
    _assert_rows_match([np.zeros((2, 0), dtype=bool)] * 4)
    _assert_rows_match([np.ones((2, 1), dtype=bool), None, None, None])
    assert target_positions_rows(np.zeros((0, 5), dtype=bool), None, None, None).shape == (0, 5)


@pytest.mark.parametrize("seed", range(20))
def test_changes_of_rows_are_changes_of_each_rows_wanted_positions_from_any_first_bar(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    rows, n = int(rng.integers(1, 6)), int(rng.integers(1, 40))
    signals = [rng.random((rows, n)) < d for d in rng.choice([0.0, 0.1, 0.5], size=4)]
    wanted = _one_by_one(list(signals), 0)
    changes = position_changes_rows(*signals)
    for trade_from in range(n):
        for r, got in enumerate(changes_of_rows(changes, trade_from)):
            expected = changes_of(wanted[r, trade_from:])
            assert got.bars.dtype == expected.bars.dtype and got.wants.dtype == expected.wants.dtype
            assert np.array_equal(got.bars, expected.bars) and np.array_equal(got.wants, expected.wants)


CONDITIONS: list[dict[str, Any]] = [
    {"cross_above": ["a", "b"]}, {"cross_below": ["a", "b"]}, {"above": ["a", 0.5]}, {"below": [0.25, "b"]},
    {"all": [{"above": ["a", "c"]}, {"not": {"below": ["b", "a"]}}]},
    {"any": [{"cross_above": ["c", "a"]}, {"cross_below": ["a", "b"]}, {"above": ["c", 0.9]}]},
]


@pytest.mark.parametrize("cond", CONDITIONS)
def test_rules_on_rows_of_operands_are_the_rules_on_each_row(cond: dict[str, Any]) -> None:
    rng = np.random.default_rng(7)
    rows, n = 5, 50
    a = rng.random((rows, n))
    a[:, :3] = np.nan  # warm-up: NaN compares false
    b = rng.random((rows, n))
    b[1] = a[1]  # equal operands: no cross, neither above nor below
    c = rng.random(n)  # shared by every row
    table = {"a": a, "b": b, "c": c}
    memo: dict[Any, np.ndarray] = {}
    got = np.broadcast_to(evaluate_rows(cond, lambda o: table[o] if isinstance(o, str) else float(o), (rows, n), memo),
                          (rows, n))
    for r in range(rows):
        one = {"a": a[r], "b": b[r], "c": c}
        assert np.array_equal(got[r], evaluate(cond, lambda o, one=one: one[o] if isinstance(o, str) else float(o), n))
