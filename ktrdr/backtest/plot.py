"""Equity and drawdown chart of a backtest, with buy-and-hold beside it, as a PNG."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on workers

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ktrdr.backtest.result import BacktestResult  # noqa: E402


@contextmanager
def figure(path: Path, *args: Any, **kwargs: Any) -> Iterator[tuple[Any, Any]]:
    """``plt.subplots(*args, **kwargs)`` for the block's drawing, then laid out and written as a PNG at
    ``path``; the figure is freed either way (a worker draws many)."""
    fig, axes = plt.subplots(*args, **kwargs)
    try:
        yield fig, axes
        fig.tight_layout()
        fig.savefig(Path(path), dpi=100)
    finally:
        plt.close(fig)


def plot_result(result: BacktestResult, path: Path, *, title: str | None = None) -> Path:
    index = result.index
    with figure(path, 2, 1, figsize=(11, 7), sharex=True, height_ratios=(3, 1)) as (fig, (top, bottom)):
        top.plot(index, result.equity, label=f"{result.strategy}", linewidth=1.0)
        top.plot(index, result.benchmark, label="buy and hold", linewidth=1.0, alpha=0.7)
        top.set_ylabel("equity")
        top.legend(loc="upper left")
        top.grid(alpha=0.3)
        top.set_title(title or f"{result.strategy} ({result.config.symbol or 'bars'} {result.timeframe}): "
                      f"{result.metrics['total_return_pct']:.2f} % vs buy and hold "
                      f"{result.metrics['buy_and_hold_return_pct']:.2f} %")
        for curve, label in ((result.equity, "strategy"), (result.benchmark, "buy and hold")):
            peak = np.maximum.accumulate(curve)
            bottom.plot(index, 100.0 * (curve - peak) / peak, label=label, linewidth=0.8)
        bottom.set_ylabel("drawdown %")
        bottom.grid(alpha=0.3)
    return Path(path)


def plot_heatmap(xs: Sequence[object], ys: Sequence[object], cells: list[list[float | None]], *, path: Path,
                 x: str, y: str, metric: str) -> Path:
    """A sweep's metric over two parameters, one coloured cell per pair (blank: no value)."""
    data = np.array([[np.nan if c is None else c for c in row] for row in cells], dtype=float)
    with figure(path, figsize=(max(5.0, 0.6 * len(xs) + 2), max(4.0, 0.4 * len(ys) + 2))) as (fig, ax):
        image = ax.imshow(np.ma.masked_invalid(data), origin="lower", aspect="auto", cmap="viridis")
        ax.set_xticks(range(len(xs)), [str(v) for v in xs], rotation=90 if len(xs) > 12 else 0)
        ax.set_yticks(range(len(ys)), [str(v) for v in ys])
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        fig.colorbar(image, ax=ax, label=metric)
        ax.set_title(f"{metric} by {x} and {y}")
    return Path(path)


def plot_compare(curves: dict[str, tuple[list[int], list[float]]], *, path: Path, title: str) -> Path:
    """Equity curves overlaid, each as a percentage of its starting capital."""
    import pandas as pd

    with figure(path, figsize=(11, 5)) as (fig, ax):
        for label, (index_ns, growth) in curves.items():
            ax.plot(pd.to_datetime(index_ns, utc=True), growth, label=label, linewidth=1.0)
        ax.axhline(100.0, color="grey", linewidth=0.6)
        ax.set_ylabel("equity, % of starting capital")
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
        ax.set_title(title)
    return Path(path)
