"""Parameter sweeps: grid parsing (``fast=5:50:5``, ``slow=20,30``), combinations and ranking."""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

Value = int | float | str
Grid = dict[str, list[Value]]


def _number(text: str) -> Value:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return text


def parse_values(text: str) -> list[Value]:
    """``start:stop:step`` (inclusive of ``stop`` when the step lands on it), ``a,b,c`` or one value."""
    if ":" in text:
        parts = [_number(p) for p in text.split(":")]
        if len(parts) not in (2, 3) or not all(isinstance(p, int | float) for p in parts):
            raise ValueError(f"range {text!r} must be start:stop[:step] with numbers")
        start, stop = parts[0], parts[1]
        step = parts[2] if len(parts) == 3 else 1
        if step <= 0 or stop < start:  # type: ignore[operator]
            raise ValueError(f"range {text!r} needs step > 0 and stop >= start")
        # Counting steps (not adding floats) keeps 0.1:0.5:0.1 from missing its last value.
        count = math.floor((stop - start) / step + 1e-9) + 1  # type: ignore[operator]
        values = [start + i * step for i in range(count)]  # type: ignore[operator]
        if all(isinstance(p, int) for p in parts):
            return [int(v) for v in values]
        return [round(float(v), 12) for v in values]
    values = [_number(v) for v in text.split(",") if v.strip()]
    if not values:
        raise ValueError(f"no values in {text!r}")
    return values


def parse_grid(specs: Iterable[str] | str) -> Grid:
    """``["fast=5:50:5", "slow=20,30"]`` (or one string joined by spaces or ';') -> ``{name: values}``."""
    if isinstance(specs, str):
        specs = specs.replace(";", " ").split()
    grid: Grid = {}
    for spec in specs:
        name, sep, values = spec.partition("=")
        if not sep or not name.strip():
            raise ValueError(f"parameter spec {spec!r} must look like name=values")
        if name.strip() in grid:
            raise ValueError(f"parameter {name.strip()!r} given twice")
        grid[name.strip()] = parse_values(values)
    return grid


def combinations(grid: Mapping[str, Sequence[Value]]) -> list[dict[str, Value]]:
    """Every combination, the last parameter varying fastest (deterministic order)."""
    return list(combinations_between(grid, 0, None))


def combinations_between(grid: Mapping[str, Sequence[Value]], first: int,
                         stop: int | None) -> Iterator[dict[str, Value]]:
    """:func:`combinations` ``[first:stop]``, making only those (a sweep's block of a large grid)."""
    names = list(grid)
    for combo in itertools.islice(itertools.product(*(grid[n] for n in names)), first, stop):
        yield dict(zip(names, combo, strict=True))


def rank(results: Iterable[Mapping[str, Any]], metric: str, *, descending: bool = True,
         metrics_key: str | None = "metrics") -> list[Mapping[str, Any]]:
    """Results best-first by ``metric`` (read from ``result[metrics_key]`` or the result itself).

    Results without a finite value for the metric go last, in their original order.
    """
    def value(r: Mapping[str, Any]) -> float | None:
        source = r.get(metrics_key, r) if metrics_key else r
        v = source.get(metric) if isinstance(source, Mapping) else None
        return float(v) if isinstance(v, int | float) and math.isfinite(v) else None

    items = list(results)
    scored = [r for r in items if value(r) is not None]
    unscored = [r for r in items if value(r) is None]
    scored.sort(key=lambda r: value(r), reverse=descending)  # type: ignore[arg-type,return-value]
    return scored + unscored


def _as_cube(values: Mapping[int, float | None], grid: Mapping[str, Sequence[Value]]) -> Any:
    """The metric of every combination (by its position in :func:`combinations`) as an array with one
    axis per parameter, NaN where a variant has no value."""
    import numpy as np

    shape = tuple(len(v) for v in grid.values())
    cube = np.full(math.prod(shape), np.nan)
    for index, value in values.items():
        if value is not None and 0 <= index < cube.size and math.isfinite(value):
            cube[index] = value
    return cube.reshape(shape)


def neighbourhood(values: Mapping[int, float | None],
                  grid: Mapping[str, Sequence[Value]]) -> dict[int, tuple[float, int]]:
    """Per combination: the mean of the metric over it and its adjacent grid points (one step or none
    along every parameter), and how many of them had a value. A lone spike among poor neighbours
    scores low, a plateau high: what a sweep's best alone cannot say."""
    import numpy as np

    cube = _as_cube(values, grid)
    total, count = np.zeros(cube.shape), np.zeros(cube.shape)
    padded = np.pad(cube, 1, constant_values=np.nan)
    for offset in itertools.product((-1, 0, 1), repeat=cube.ndim):
        window = tuple(slice(1 + o, 1 + o + n) for o, n in zip(offset, cube.shape, strict=True))
        shifted = padded[window]
        seen = np.isfinite(shifted)
        total += np.where(seen, shifted, 0.0)
        count += seen
    # Divided as whole arrays, the same IEEE division as one element at a time, without a numpy
    # scalar per variant (that was half of a 10,000-variant ranking's time).
    with np.errstate(divide="ignore", invalid="ignore"):
        means = (total / count).ravel().tolist()
    counts = count.ravel().astype(np.int64).tolist()
    return {i: (means[i], counts[i]) for i in values if 0 <= i < len(counts) and counts[i] > 0}


def heatmap(ranking: Iterable[Mapping[str, Any]], grid: Mapping[str, Sequence[Value]], metric: str, *,
            x: str, y: str, descending: bool = True) -> tuple[list[Value], list[Value], list[list[float | None]]]:
    """The metric over two parameters: rows ``y``'s values, columns ``x``'s. With more parameters, each
    cell holds the best variant's value over the others (a slice at their best, not an average)."""
    for name in (x, y):
        if name not in grid:
            raise ValueError(f"{name!r} is not a parameter of the sweep's grid ({', '.join(grid)})")
    if x == y:
        raise ValueError("choose two different parameters")
    xs, ys = list(grid[x]), list(grid[y])
    cells: list[list[float | None]] = [[None] * len(xs) for _ in ys]
    for entry in ranking:
        value = (entry.get("metrics") or {}).get(metric)
        if not isinstance(value, int | float) or not math.isfinite(value):
            continue
        parameters = entry.get("parameters") or {}
        try:
            col, row = xs.index(parameters[x]), ys.index(parameters[y])
        except (KeyError, ValueError):
            continue
        current = cells[row][col]
        if current is None or (value > current if descending else value < current):
            cells[row][col] = float(value)
    return xs, ys, cells
