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
    out = {"kind": "folds", "metrics": doc.get("metrics", {}), "efficiency": doc.get("efficiency"),
           "folds": doc.get("folds", []), "fold_windows": doc.get("fold_windows", [])}
    index_ns, equity = doc.get("index_ns") or [], doc.get("equity") or []
    if index_ns and len(equity) == len(index_ns):
        out["curves"] = reduce_curves(index_ns, {"equity": equity, "drawdown_pct": drawdown_pct(equity)})
    return out


def _described(objective: Any) -> str | None:
    try:
        return Objective.model_validate(objective).describe() if objective else None
    except ValueError:
        return None


def _heatmap(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The metric over the grid's first two parameters (the best over any others), when it fits a page."""
    grid, ranking = doc.get("grid"), doc.get("ranking")
    if not isinstance(grid, dict) or len(grid) < 2 or not isinstance(ranking, list):
        return None
    x, y = list(grid)[:2]
    if len(grid[x]) * len(grid[y]) > MAX_HEATMAP_CELLS:
        return None
    try:
        xs, ys, cells = heatmap(ranking, grid, str(doc.get("metric")), x=x, y=y,
                                descending=bool(doc.get("descending", True)))
    except (ValueError, TypeError):
        return None
    return {"x": x, "y": y, "x_values": xs, "y_values": ys, "cells": cells}


def sweep(doc: dict[str, Any]) -> dict[str, Any]:
    ranking = doc.get("ranking", [])
    objective = doc.get("objective")
    return {"kind": "ranking", "metric": doc.get("metric"), "descending": doc.get("descending"),
            "heatmap": _heatmap(doc),
            "objective": _described(objective),
            "eligible": doc.get("eligible"), "no_best": doc.get("no_best"),
            "combinations": doc.get("combinations"), "completed": doc.get("completed"),
            "failed": len(doc.get("failed", [])), "ranking": ranking[:MAX_RANKED], "ranked": len(ranking)}


def training(doc: dict[str, Any]) -> dict[str, Any]:
    history = doc.get("history", [])
    return {"kind": "epochs", "epochs": [{k: _finite(v) for k, v in h.items()} for h in history[-MAX_EPOCHS:]]}


def chart(data: bytes) -> dict[str, Any]:
    """The page's view of one stored result, whatever kind it is."""
    if len(data) > MAX_RESULT_BYTES:
        return {"kind": "too_large", "bytes": len(data)}
    doc = json.loads(data)
    if not isinstance(doc, dict):
        return {"kind": "unknown"}
    fmt = str(doc.get("format", ""))
    if fmt.startswith("ktrdr.walkforward"):
        return walkforward(doc)
    if fmt.startswith("ktrdr.sweep"):
        return sweep(doc)
    if fmt.startswith("ktrdr.training"):
        return training(doc)
    if fmt.startswith("ktrdr.backtest.result") or "equity" in doc:
        return backtest(doc)
    return {"kind": "unknown", "format": fmt}
