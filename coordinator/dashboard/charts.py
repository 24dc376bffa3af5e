"""What an op's page draws, made from its stored result (``results`` store) and cut to a size a
page can take: a backtest's equity and drawdown beside buy and hold with its trades, a
walk-forward's stitched curve and folds, a sweep's ranking, a training's loss and accuracy per epoch.

A curve of millions of bars is reduced to at most ``MAX_POINTS`` points, keeping each bucket's
lowest and highest equity so the drawdowns a chart shows are the real ones.
"""

from __future__ import annotations

import json
import math
from typing import Any

from ktrdr.backtest.sweep import heatmap
from subjects.objective import Objective

MAX_POINTS = 2_000
MAX_TRADES = 500  # the last ones; the count says how many there were
MAX_RANKED = 200
MAX_HEATMAP_CELLS = 2_500
MAX_EPOCHS = 5_000
# Stored results are parsed whole: one this large is described, not drawn.
MAX_RESULT_BYTES = 256 * 1024 * 1024


def _finite(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None


def _buckets(n: int) -> list[tuple[int, int]]:
    if n <= MAX_POINTS:
        return [(i, i + 1) for i in range(n)]
    size = math.ceil(n / (MAX_POINTS // 2))
    return [(i, min(n, i + size)) for i in range(0, n, size)]


def reduce_curves(index_ns: list[int], series: dict[str, list[float]]) -> dict[str, Any]:
    """Times (ms) and each series at those times, at most about MAX_POINTS points. Per bucket, the
    bars where ``equity`` (the first series) is lowest and highest are kept, in time order."""
    n = len(index_ns)
    first = next(iter(series.values()))
    keep: list[int] = []
    for lo, hi in _buckets(n):
        if hi - lo == 1:
            keep.append(lo)
            continue
        window = range(lo, hi)
        low = min(window, key=first.__getitem__)
        high = max(window, key=first.__getitem__)
        keep.extend(sorted({low, high}))
    return {"time_ms": [index_ns[i] // 1_000_000 for i in keep],
            **{name: [_finite(values[i]) for i in keep] for name, values in series.items()}}


def drawdown_pct(equity: list[float]) -> list[float]:
    peak, out = -math.inf, []
    for value in equity:
        peak = max(peak, value)
        out.append(100.0 * (value - peak) / peak if peak > 0 else 0.0)
    return out


def backtest(doc: dict[str, Any]) -> dict[str, Any]:
    index_ns, equity, benchmark = doc.get("index_ns") or [], doc.get("equity") or [], doc.get("benchmark") or []
    out: dict[str, Any] = {"kind": "backtest", "strategy": doc.get("strategy"), "timeframe": doc.get("timeframe"),
                           "parameters": doc.get("parameters", {}), "metrics": doc.get("metrics", {}),
                           "open_position": doc.get("open_position")}
    if index_ns and len(equity) == len(index_ns):
        series = {"equity": equity, "drawdown_pct": drawdown_pct(equity)}
        if len(benchmark) == len(index_ns):
            series |= {"benchmark": benchmark, "benchmark_drawdown_pct": drawdown_pct(benchmark)}
        out["curves"] = reduce_curves(index_ns, series)
    trades = doc.get("trades") or {}
    count = len(trades.get("pnl", []))
    start = max(0, count - MAX_TRADES)
    rows = []
    last = len(index_ns) - 1
    for i in range(start, count):
        row = {k: _finite(v[i]) for k, v in trades.items() if i < len(v)}
        if index_ns:
            for side in ("entry", "exit"):
                bar = row.get(f"{side}_bar")
                if isinstance(bar, int) and bar >= 0:
                    row[f"{side}_time_ms"] = index_ns[min(bar, last)] // 1_000_000
        rows.append(row)
    out["trades"] = {"count": count, "shown": rows}
    return out


def walkforward(doc: dict[str, Any]) -> dict[str, Any]:
    out = {"kind": "folds", "metric": doc.get("metric"), "metrics": doc.get("metrics", {}),
           "efficiency": doc.get("efficiency"), "folds": doc.get("folds", []),
           "fold_windows": doc.get("fold_windows", [])}
    index_ns, equity = doc.get("index_ns") or [], doc.get("equity") or []
    if index_ns and len(equity) == len(index_ns):
        out["curves"] = reduce_curves(index_ns, {"equity": equity, "drawdown_pct": drawdown_pct(equity)})
    return out


def _described(objective: Any) -> str | None:
    try:
        return Objective.model_validate(objective).describe() if objective else None
    except ValueError:
        return None


class BadAxes(ValueError):
    """A heatmap's ``x`` / ``y`` that the op's chart cannot have (the route answers 422); ``field``
    names the one at fault."""

    def __init__(self, message: str, field: str = "x") -> None:
        super().__init__(message)
        self.field = field


def _axes(grid: Any, x: str | None, y: str | None) -> tuple[str, str] | None:
    """The pair of parameters the heatmap is drawn over: the grid's first two unless chosen."""
    if x is None and y is None:
        if not isinstance(grid, dict) or len(grid) < 2:
            return None
        first, second = list(grid)[:2]
        return first, second
    names = list(grid) if isinstance(grid, dict) else []
    valid = ", ".join(names) or "none"
    if x is None or y is None:
        raise BadAxes(f"give both x and y (two of the sweep's grid parameters: {valid})",
                      "y" if y is None else "x")
    for axis, name in (("x", x), ("y", y)):
        if name not in names:
            raise BadAxes(f"{axis}: {name!r} is not a parameter of the sweep's grid; valid names: {valid}", axis)
    if x == y:
        raise BadAxes(f"x and y are both {x!r}: choose two different parameters of the sweep's grid ({valid})",
                      "y")
    return x, y


def _heatmap(doc: dict[str, Any], x: str | None = None, y: str | None = None) -> dict[str, Any] | None:
    """The metric over two of the grid's parameters (its first two unless ``x`` and ``y`` are given);
    with more parameters, each cell holds the best value over the others (``rest``). ``cells`` is None
    when the pair has more than ``MAX_HEATMAP_CELLS`` cells."""
    grid, ranking = doc.get("grid"), doc.get("ranking")
    axes = _axes(grid, x, y)
    if axes is None or not isinstance(grid, dict) or not isinstance(ranking, list):
        return None
    x, y = axes
    out: dict[str, Any] = {"x": x, "y": y, "parameters": list(grid), "rest": [n for n in grid if n not in axes],
                           "cells": None}
    if len(grid[x]) * len(grid[y]) > MAX_HEATMAP_CELLS:
        out["too_large"] = f"{len(grid[x])} x {len(grid[y])} cells, over {MAX_HEATMAP_CELLS}"
        return out
    try:
        xs, ys, cells = heatmap(ranking, grid, str(doc.get("metric")), x=x, y=y,
                                descending=bool(doc.get("descending", True)))
    except (ValueError, TypeError):
        return None
    return out | {"x_values": xs, "y_values": ys, "cells": cells}


def sweep(doc: dict[str, Any], *, x: str | None = None, y: str | None = None) -> dict[str, Any]:
    ranking = doc.get("ranking", [])
    objective = doc.get("objective")
    return {"kind": "ranking", "metric": doc.get("metric"), "descending": doc.get("descending"),
            "heatmap": _heatmap(doc, x, y),
            "objective": _described(objective),
            "eligible": doc.get("eligible"), "no_best": doc.get("no_best"),
            "combinations": doc.get("combinations"), "completed": doc.get("completed"),
            "failed": len(doc.get("failed", [])), "ranking": ranking[:MAX_RANKED], "ranked": len(ranking)}


def training(doc: dict[str, Any]) -> dict[str, Any]:
    history = doc.get("history", [])
    return {"kind": "epochs", "epochs": [{k: _finite(v) for k, v in h.items()} for h in history[-MAX_EPOCHS:]]}


def chart(data: bytes, *, x: str | None = None, y: str | None = None) -> dict[str, Any]:
    """The page's view of one stored result, whatever kind it is. ``x`` and ``y`` choose a sweep's
    heatmap axes (:class:`BadAxes` for names not in its grid, the same one twice, or any other kind)."""
    axes = x is not None or y is not None
    if len(data) > MAX_RESULT_BYTES:
        return {"kind": "too_large", "bytes": len(data)}
    doc = json.loads(data)
    fmt = str(doc.get("format", "")) if isinstance(doc, dict) else ""
    if axes and not fmt.startswith("ktrdr.sweep"):
        raise BadAxes("x and y choose a sweep's heatmap axes: this op's result is not a sweep's")
    if not isinstance(doc, dict):
        return {"kind": "unknown"}
    if fmt.startswith("ktrdr.walkforward"):
        return walkforward(doc)
    if fmt.startswith("ktrdr.sweep"):
        return sweep(doc, x=x, y=y)
    if fmt.startswith("ktrdr.training"):
        return training(doc)
    if fmt.startswith("ktrdr.backtest.result") or "equity" in doc:
        return backtest(doc)
    return {"kind": "unknown", "format": fmt}
