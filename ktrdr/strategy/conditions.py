"""Rule conditions of rule-based strategies, checked at load time and evaluated as whole arrays.

A condition is a one-key mapping:

* ``cross_above: [a, b]`` -- ``a[i-1] < b[i-1] and a[i] > b[i]`` (strict both sides: touching is no cross)
* ``cross_below: [a, b]`` -- ``a[i-1] > b[i-1] and a[i] < b[i]``
* ``above: [a, b]`` / ``below: [a, b]`` -- ``a[i] > b[i]`` / ``a[i] < b[i]``
* ``all: [cond, ...]`` / ``any: [cond, ...]`` / ``not: cond``

Operands are indicator ids, ``id.column`` for multi-output indicators, OHLCV column names, or
numbers. NaN (indicator warm-up) compares false, so no signal fires before both sides exist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

COMPARISONS = ("cross_above", "cross_below", "above", "below")
COMBINATORS = ("all", "any", "not")
OPERATORS = COMPARISONS + COMBINATORS

Operand = str | float | int
Resolver = Callable[[Operand], np.ndarray | float]


def check_condition(cond: Any, path: str, is_operand: Callable[[str], bool]) -> list[tuple[str, str]]:
    """Problems with a condition as ``(field path, message)`` pairs; empty when it is valid."""
    if not isinstance(cond, dict) or len(cond) != 1:
        return [(path, f"a condition is a mapping with exactly one of {list(OPERATORS)}, got {cond!r}")]
    (op, arg), = cond.items()
    here = f"{path}.{op}"
    if op not in OPERATORS:
        return [(here, f"unknown operator {op!r}; one of {list(OPERATORS)}")]
    if op == "not":
        return check_condition(arg, here, is_operand)
    if op in ("all", "any"):
        if not isinstance(arg, list) or not arg:
            return [(here, "needs a non-empty list of conditions")]
        return [p for i, c in enumerate(arg) for p in check_condition(c, f"{here}[{i}]", is_operand)]
    if not isinstance(arg, list) or len(arg) != 2:
        return [(here, f"needs a list of two operands, got {arg!r}")]
    problems = []
    for i, operand in enumerate(arg):
        if isinstance(operand, bool) or not isinstance(operand, str | int | float):
            problems.append((f"{here}[{i}]", f"operand must be an indicator id, a column or a number, got {operand!r}"))
        elif isinstance(operand, str) and not is_operand(operand):
            problems.append((f"{here}[{i}]", f"unknown operand {operand!r}"))
    if all(not isinstance(o, str) for o in arg) and not problems:
        problems.append((here, "compares two constants"))
    return problems


def evaluate(cond: dict[str, Any], resolve: Resolver, n: int) -> np.ndarray:
    """The condition at each of ``n`` bars: :func:`evaluate_rows` for one row (one implementation of
    the rules, so a block's variants and a single backtest compare the very same floats)."""
    return np.array(np.broadcast_to(evaluate_rows(cond, resolve, (1, n)), (1, n))[0])


def evaluate_rows(cond: dict[str, Any], resolve: Resolver, shape: tuple[int, int],
                  memo: dict[tuple[Operand, Operand], np.ndarray] | None = None) -> np.ndarray:
    """:func:`evaluate` for many rows at once (a sweep's variants over the same bars): an operand
    resolves to a rows x bars array (it differs between rows), a bars array (shared) or a number.
    The result broadcasts to ``shape`` (rows, bars), row ``i`` equal to ``evaluate`` with row ``i``'s
    operands: the same comparisons of the same floats. ``a > b`` of two operands is worked out once
    (``memo``, shared by the rules of one set of rows): ``below: [a, b]`` is ``b > a`` and a cross
    reads both directions of its pair."""
    memo = {} if memo is None else memo
    (op, arg), = cond.items()
    if op == "not":
        return ~evaluate_rows(arg, resolve, shape, memo)
    if op in ("all", "any"):
        out = np.ones(shape, dtype=bool) if op == "all" else np.zeros(shape, dtype=bool)
        for c in arg:
            if op == "all":
                out &= evaluate_rows(c, resolve, shape, memo)
            else:
                out |= evaluate_rows(c, resolve, shape, memo)
        return out

    def greater(x: Operand, y: Operand) -> np.ndarray:
        key = (x, y)
        if key not in memo:
            memo[key] = np.asarray(np.asarray(resolve(x), dtype=np.float64) > np.asarray(resolve(y), dtype=np.float64))
        return memo[key]

    a, b = arg
    if op == "above":
        return greater(a, b)
    if op == "below":
        return greater(b, a)
    up, down = greater(a, b), greater(b, a)  # a > b, a < b
    out = np.empty(np.broadcast_shapes(up.shape, down.shape, (shape[1],)), dtype=bool)
    out[..., :1] = False
    if shape[1] < 2:
        return out
    # Straight into out: a rows x bars temporary and its copy cost as much as the comparison.
    if op == "cross_above":
        np.logical_and(down[..., :-1], up[..., 1:], out=out[..., 1:])
    else:
        np.logical_and(up[..., :-1], down[..., 1:], out=out[..., 1:])
    return out
