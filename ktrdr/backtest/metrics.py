"""Performance metrics of a simulated equity curve and its trades.

Returns are per bar, from closing equity; annualisation multiplies by ``periods_per_year``
(or its square root), which every result states. No risk-free rate, as in the first ktrdr.

A curve's reductions (:class:`CurveStats`) come from one curve (:func:`curve_stats`) or from many
curves of one length at once, one per row (:func:`curve_stats_of_rows`, for a sweep's block); both
feed the one :func:`metrics_from` that turns them into metrics, so the two give the same floats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np


@dataclass(frozen=True, slots=True)
class CurveStats:
    """What the metrics read from an equity curve (and the positions held along it), reduced."""

    bars: int
    final: float  # the last equity; unused when there are no bars
    sd: float  # of the per-bar returns (ddof 1); 0.0 with fewer than two returns
    mean: float  # of the per-bar returns; 0.0 with none
    downside: float  # root mean square of the negative returns; 0.0 with none
    drawdown: float  # the largest fall from a running peak, in money
    drawdown_ratio: float  # ... as a fraction of that peak
    exposed: int  # bars with a position


def _ratio(num: float, den: float) -> float | None:
    return num / den if den > 0 and math.isfinite(num) else None


def compute_metrics(*, equity: np.ndarray, initial_capital: float, close: np.ndarray, shares: np.ndarray,
                    pnl: np.ndarray, bars_held: np.ndarray, periods_per_year: float,
                    annualization_basis: str = "") -> dict[str, Any]:
    return metrics_from(curve_stats(equity, int(np.count_nonzero(shares))), pnl=pnl, bars_held=bars_held,
                        initial_capital=initial_capital, close=close, periods_per_year=periods_per_year,
                        annualization_basis=annualization_basis)


def curve_stats(equity: np.ndarray, exposed: int) -> CurveStats:
    """The reductions of one curve; ``exposed``: its bars with a position."""
    n = len(equity)
    returns = equity[1:] / equity[:-1] - 1.0 if n > 1 else np.empty(0)
    peak = np.maximum.accumulate(equity) if n else np.empty(0)
    return CurveStats(
        bars=n, final=float(equity[-1]) if n else 0.0,
        sd=float(returns.std(ddof=1)) if len(returns) > 1 else 0.0,
        mean=float(returns.mean()) if len(returns) else 0.0,
        downside=float(np.sqrt(np.mean(np.minimum(returns, 0.0) ** 2))) if len(returns) else 0.0,
        drawdown=float((peak - equity).max()) if n else 0.0,
        drawdown_ratio=float(((peak - equity) / peak).max()) if n else 0.0,
        exposed=exposed)


def curve_stats_of_rows(equity: np.ndarray, exposed: np.ndarray) -> list[CurveStats]:
    """:func:`curve_stats` of each row of a C-contiguous ``equity`` (curves x bars, at least one bar),
    ``exposed[i]`` being row ``i``'s bars with a position.

    The same reductions along each row. Sums are the only ones whose floats depend on the order of
    the terms: numpy sums a row of a C-contiguous array as it sums a 1-D array of its own, which
    :func:`rows_sum_as_vectors` checks once per shape; where it does not, each row is reduced alone.
    """
    rows, n = equity.shape
    if not equity.flags.c_contiguous or not rows_sum_as_vectors(rows, n - 1):
        return [curve_stats(row, e) for row, e in zip(equity, exposed.tolist(), strict=True)]
    zeros = np.zeros(rows)
    if n > 1:
        returns = equity[:, 1:] / equity[:, :-1]
        returns -= 1.0
        sd = returns.std(axis=1, ddof=1) if n > 2 else zeros
        mean = returns.mean(axis=1)
        np.minimum(returns, 0.0, out=returns)
        downside = np.sqrt(np.mean(returns ** 2, axis=1))
        del returns
    else:
        sd = mean = downside = zeros
    drawdown, drawdown_ratio = _drawdowns(equity)
    return [CurveStats(bars=n, final=f, sd=s, mean=m, downside=d, drawdown=a, drawdown_ratio=r, exposed=e)
            for f, s, m, d, a, r, e in zip(equity[:, -1].tolist(), sd.tolist(), mean.tolist(), downside.tolist(),
                                           drawdown.tolist(), drawdown_ratio.tolist(), exposed.tolist(), strict=True)]


# Bars per block of the running peak (see _drawdowns).
_PEAK_BLOCK = 128


def _drawdowns(equity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: ``max(peak - equity)`` and ``max((peak - equity) / peak)``, ``peak`` being the running
    maximum: the very floats ``np.maximum.accumulate`` gives, worked out only where it moves.

    ``np.maximum.accumulate`` is a scalar loop (~4 ns a bar, most of a curve's reductions). In bars
    cut into blocks, the peak inside a block that does not rise above the peak before it is that
    earlier peak throughout; only the few blocks that set a new high need the running maximum.
    """
    rows, n = equity.shape
    width = n - n % _PEAK_BLOCK
    blocks = equity[:, :width].reshape(rows, width // _PEAK_BLOCK, _PEAK_BLOCK)
    top = blocks.max(axis=2)
    if width == 0 or np.isnan(top).any():  # NaN poisons a running maximum from its bar on: keep its loop
        peak = np.maximum.accumulate(equity, axis=1)
        fall = peak - equity
        return fall.max(axis=1), (fall / peak).max(axis=1)
    before = np.empty_like(top)  # the peak before each block (the first: its own first bar)
    before[:, 0] = equity[:, 0]
    np.maximum.accumulate(top[:, :-1], axis=1, out=before[:, 1:])
    fall = before[:, :, None] - blocks
    ratio = fall / before[:, :, None]
    rising = top > before
    if rising.any():
        inside = blocks[rising]
        peak = np.maximum.accumulate(inside, axis=1)
        np.maximum(peak, before[rising][:, None], out=peak)
        fall[rising] = peak - inside
        ratio[rising] = fall[rising] / peak
    drawdown, drawdown_ratio = fall.reshape(rows, -1).max(axis=1), ratio.reshape(rows, -1).max(axis=1)
    if width < n:
        tail = equity[:, width:]
        peak = np.maximum.accumulate(tail, axis=1)
        np.maximum(peak, top.max(axis=1)[:, None], out=peak)
        fall_tail = peak - tail
        np.maximum(drawdown, fall_tail.max(axis=1), out=drawdown)
        np.maximum(drawdown_ratio, (fall_tail / peak).max(axis=1), out=drawdown_ratio)
    return drawdown, drawdown_ratio


@lru_cache(maxsize=64)
def rows_sum_as_vectors(rows: int, n: int) -> bool:
    """Whether numpy's sums, means and standard deviations along each row of a C-contiguous
    ``rows`` x ``n`` array are bit for bit those of each row alone (pairwise summation in the same
    blocks): true of the numpy versions tested, checked here because nothing documents it."""
    if rows < 2 or n < 2:
        return True  # one row, or sums of at most one term per row: order cannot matter
    # Terms of many magnitudes and signs: summed in any other grouping, they round differently.
    probe = np.random.default_rng(n).standard_normal((rows, n)) * np.exp2(np.arange(n) % 40)
    checks = ((probe.sum(axis=1), [row.sum() for row in probe]),
              (probe.mean(axis=1), [row.mean() for row in probe]),
              (probe.std(axis=1, ddof=1), [row.std(ddof=1) for row in probe]))
    return all(np.array_equal(together, np.array(alone)) for together, alone in checks)


def metrics_from(curve: CurveStats, *, pnl: np.ndarray, bars_held: np.ndarray, initial_capital: float,
                 close: np.ndarray, periods_per_year: float, annualization_basis: str = "") -> dict[str, Any]:
    n = curve.bars
    final = curve.final if n else initial_capital
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

    years = (n - 1) / periods_per_year
    m["annualized_return_pct"] = (100.0 * ((final / initial_capital) ** (1.0 / years) - 1.0)
                                  if years > 0 and final > 0 else None)
    sd, mean, downside = curve.sd, curve.mean, curve.downside
    root = math.sqrt(periods_per_year)
    m["volatility_pct"] = 100.0 * sd * root
    m["sharpe_ratio"] = (mean / sd * root) if sd > 0 else None
    m["sortino_ratio"] = (mean / downside * root) if downside > 0 else None

    dd_abs = curve.drawdown
    dd_pct = curve.drawdown_ratio * 100.0 if n else 0.0
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
    # A mean as ndarray.mean works it out (the sum, in float64, divided by the count), without its
    # ~5 us of Python: a sweep's block takes these for every variant.
    m["avg_win"] = float(np.add.reduce(wins)) / len(wins) if len(wins) else None
    m["avg_loss"] = float(np.add.reduce(losses)) / len(losses) if len(losses) else None
    m["largest_win"] = float(wins.max()) if len(wins) else None
    m["largest_loss"] = float(losses.min()) if len(losses) else None
    m["avg_bars_held"] = float(np.add.reduce(bars_held, dtype=np.float64)) / trades if trades else None
    m["exposure"] = float(curve.exposed) / n if n else 0.0
    m["buy_and_hold_return_pct"] = 100.0 * (float(close[-1]) / float(close[0]) - 1.0) if n else 0.0
    return m
