"""Performance metrics of a simulated equity curve and its trades.

Returns are per bar, from closing equity; annualisation multiplies by ``periods_per_year``
(or its square root), which every result states. No risk-free rate, as in the first ktrdr.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 and math.isfinite(num) else None


def compute_metrics(*, equity: np.ndarray, initial_capital: float, close: np.ndarray, shares: np.ndarray,
                    pnl: np.ndarray, bars_held: np.ndarray, periods_per_year: float,
                    annualization_basis: str = "") -> dict[str, Any]:
    n = len(equity)
    final = float(equity[-1]) if n else initial_capital
    total = final - initial_capital
    m: dict[str, Any] = {
        "initial_capital": initial_capital,
        "final_equity": final,
        "total_return": total,
        "total_return_pct": 100.0 * total / initial_capital,
        "bars": n,
        "annualization_factor": periods_per_year,
        "annualization_basis": annualization_basis,
    }

    returns = equity[1:] / equity[:-1] - 1.0 if n > 1 else np.empty(0)
    years = (n - 1) / periods_per_year
    m["annualized_return_pct"] = (100.0 * ((final / initial_capital) ** (1.0 / years) - 1.0)
                                  if years > 0 and final > 0 else None)
    sd = float(returns.std(ddof=1)) if len(returns) > 1 else 0.0
    mean = float(returns.mean()) if len(returns) else 0.0
    downside = float(np.sqrt(np.mean(np.minimum(returns, 0.0) ** 2))) if len(returns) else 0.0
    root = math.sqrt(periods_per_year)
    m["volatility_pct"] = 100.0 * sd * root
    m["sharpe_ratio"] = (mean / sd * root) if sd > 0 else None
    m["sortino_ratio"] = (mean / downside * root) if downside > 0 else None

    peak = np.maximum.accumulate(equity) if n else np.empty(0)
    dd_abs = float((peak - equity).max()) if n else 0.0
    dd_pct = float(((peak - equity) / peak).max()) * 100.0 if n else 0.0
    m["max_drawdown"] = dd_abs
    m["max_drawdown_pct"] = dd_pct
    ann = m["annualized_return_pct"]
    m["calmar_ratio"] = _ratio(ann / 100.0, dd_pct / 100.0) if ann is not None else None
    m["recovery_factor"] = _ratio(total, dd_abs)

    wins, losses = pnl[pnl > 0], pnl[pnl < 0]
    trades = len(pnl)
    m["trades"] = trades
    m["winning_trades"] = len(wins)
    m["losing_trades"] = len(losses)
    m["win_rate"] = len(wins) / trades if trades else None
    m["profit_factor"] = _ratio(float(wins.sum()), float(-losses.sum())) if trades else None
    m["avg_win"] = float(wins.mean()) if len(wins) else None
    m["avg_loss"] = float(losses.mean()) if len(losses) else None
    m["largest_win"] = float(wins.max()) if len(wins) else None
    m["largest_loss"] = float(losses.min()) if len(losses) else None
    m["avg_bars_held"] = float(bars_held.mean()) if trades else None
    m["exposure"] = float(np.count_nonzero(shares)) / n if n else 0.0
    m["buy_and_hold_return_pct"] = 100.0 * (float(close[-1]) / float(close[0]) - 1.0) if n else 0.0
    return m
