"""Key figures of an outcome, in words a researcher reads first (an op type's ``headline``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


def number(value: Any, spec: str = ".2f", unit: str = "") -> str:
    """A figure as text; ``-`` for a missing or undefined one (a ratio with no trades)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "-"
    return f"{value:{spec}}{unit}"


def parameters(values: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items())


def performance(metrics: Mapping[str, Any]) -> str:
    """Return, Sharpe, drawdown and trades: what a backtest is judged on at a glance."""
    text = (f"return {number(metrics.get('total_return_pct'), '+.2f', ' %')}, "
            f"Sharpe {number(metrics.get('sharpe_ratio'))}, "
            f"max drawdown {number(metrics.get('max_drawdown_pct'), '.2f', ' %')}")
    if "trades" in metrics:
        text += f", {number(metrics.get('trades'), 'd')} trades"
    return text
