"""Equity and drawdown chart of a backtest, with buy-and-hold beside it, as a PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on workers

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ktrdr.backtest.result import BacktestResult  # noqa: E402


def plot_result(result: BacktestResult, path: Path, *, title: str | None = None) -> Path:
    index = result.index
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7), sharex=True, height_ratios=(3, 1))
    try:
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
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path
