"""Performance metrics of a simulated equity curve and its trades.

Returns are per bar, from closing equity; annualisation multiplies by ``periods_per_year``
(or its square root), which every result states. No risk-free rate, as in the first ktrdr.

A curve's reductions (:class:`CurveStats`) come from one curve (:func:`curve_stats`) or from many
curves of one length at once, one per row (:func:`curve_columns`, for a sweep's block); both feed
:func:`metrics_from`, which turns them into metrics. A block takes the metrics of many runs at once,
as columns (:func:`metrics_of_rows`): the same floats as ``metrics_from`` run by run, by the same
correctly rounded operations, and ``metrics_from`` itself where that could not be vouched for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from ktrdr.backtest.result import _clean


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


@dataclass(frozen=True, slots=True)
class CurveColumns:
    """The :class:`CurveStats` of many curves of one length: a column (one value per curve) per field."""

    bars: int
    final: np.ndarray
    sd: np.ndarray
    mean: np.ndarray
    downside: np.ndarray
    drawdown: np.ndarray
    drawdown_ratio: np.ndarray
    exposed: np.ndarray

    def __len__(self) -> int:
        return len(self.final)

    @classmethod
    def concat(cls, parts: Sequence[CurveColumns]) -> CurveColumns:
        """The curves of ``parts`` (of one length), one after the other."""
        if len(parts) == 1:
            return parts[0]
        return cls(bars=parts[0].bars, **{name: np.concatenate([getattr(p, name) for p in parts])
                                          for name in ("final", "sd", "mean", "downside", "drawdown",
                                                       "drawdown_ratio", "exposed")})

    def stats(self) -> list[CurveStats]:
        """Each curve's :class:`CurveStats`, as Python floats and ints."""
        return [CurveStats(bars=self.bars, final=f, sd=s, mean=m, downside=d, drawdown=a, drawdown_ratio=r, exposed=e)
                for f, s, m, d, a, r, e in zip(self.final.tolist(), self.sd.tolist(), self.mean.tolist(),
                                               self.downside.tolist(), self.drawdown.tolist(),
                                               self.drawdown_ratio.tolist(), self.exposed.tolist(), strict=True)]


def curve_stats_of_rows(equity: np.ndarray, exposed: np.ndarray) -> list[CurveStats]:
    """:func:`curve_stats` of each row of ``equity`` (curves x bars, at least one bar), ``exposed[i]``
    being row ``i``'s bars with a position: :func:`curve_columns`, a :class:`CurveStats` per row."""
    return curve_columns(equity, exposed).stats()


def curve_columns(equity: np.ndarray, exposed: np.ndarray, *,
                  scratch: tuple[np.ndarray, np.ndarray] | None = None) -> CurveColumns:
    """:func:`curve_stats` of each row of a C-contiguous ``equity`` (curves x bars, at least one bar),
    ``exposed[i]`` being row ``i``'s bars with a position, as columns. ``scratch``: two float64
    arrays of at least curves x (bars - 1) cells each to work in (the caller's, for one call after
    another), else they are allocated.

    The same reductions along each row, the same ufuncs ``ndarray.mean`` and ``ndarray.std`` call
    (the sum, divided by the count; the squares of the deviations from that mean, summed, divided
    by the count less one, rooted), each worked out once. Sums are the only ones whose floats
    depend on the order of the terms: numpy sums a row of a C-contiguous array as it sums a 1-D
    array of its own, which :func:`rows_sum_as_vectors` checks once per shape; where it does not,
    each row is reduced alone.
    """
    rows, n = equity.shape
    exposed = np.asarray(exposed)
    if not equity.flags.c_contiguous or not rows_sum_as_vectors(rows, n - 1):
        alone = [curve_stats(row, e) for row, e in zip(equity, exposed.tolist(), strict=True)]
        return CurveColumns(bars=n, final=np.array([c.final for c in alone], dtype=np.float64),
                            sd=np.array([c.sd for c in alone], dtype=np.float64),
                            mean=np.array([c.mean for c in alone], dtype=np.float64),
                            downside=np.array([c.downside for c in alone], dtype=np.float64),
                            drawdown=np.array([c.drawdown for c in alone], dtype=np.float64),
                            drawdown_ratio=np.array([c.drawdown_ratio for c in alone], dtype=np.float64),
                            exposed=exposed)
    sd, mean, downside = np.zeros(rows), np.zeros(rows), np.zeros(rows)
    if n > 1:
        m = n - 1
        cells = rows * m
        if scratch is None or min(len(scratch[0]), len(scratch[1])) < cells:
            scratch = (np.empty(cells), np.empty(cells))
        returns, work = (s[:cells].reshape(rows, m) for s in scratch)
        np.divide(equity[:, 1:], equity[:, :-1], out=returns)
        np.subtract(returns, 1.0, out=returns)
        mean = np.add.reduce(returns, axis=1) / m
        # np.minimum(returns, 0.0), squared: the same squares (NaN propagates through both), in half the time.
        np.clip(returns, -np.inf, 0.0, out=work)
        np.square(work, out=work)  # what ``** 2`` calls
        downside = np.sqrt(np.add.reduce(work, axis=1) / m)
        if m > 1:
            np.subtract(returns, mean[:, None], out=returns)
            np.square(returns, out=returns)
            sd = np.sqrt(np.add.reduce(returns, axis=1) / (m - 1))
    drawdown, drawdown_ratio = _drawdowns(equity)
    return CurveColumns(bars=n, final=equity[:, -1].copy(), sd=sd, mean=mean, downside=downside, drawdown=drawdown,
                        drawdown_ratio=drawdown_ratio, exposed=exposed)


# Bars per block of the running peak (see _drawdowns).
_PEAK_BLOCK = 128


def _drawdowns(equity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: ``max(peak - equity)`` and ``max((peak - equity) / peak)``, ``peak`` being the running
    maximum: the very floats ``np.maximum.accumulate`` gives, worked out only where it moves.

    ``np.maximum.accumulate`` is a scalar loop (~4 ns a bar, most of a curve's reductions). In bars
    cut into blocks, the peak inside a block that does not rise above the peak before it is that
    earlier peak throughout; only the few blocks that set a new high need the running maximum. In
    the others, where that peak is finite and positive, the largest fall is the one to the block's
    lowest bar: rounded subtraction and division by a positive number never reverse an order, so
    ``peak - x`` and ``(peak - x) / peak`` are largest, as floats too, where ``x`` is least.
    """
    rows, n = equity.shape
    full, rest = divmod(n, _PEAK_BLOCK)
    if full == 0:
        return _drawdowns_by_peak(equity)
    # Each row's blocks, then what is left of it (a shorter last block), reduced by reduceat: a
    # reduction along a short inner axis costs several times more.
    cols = full + (rest > 0)
    starts = (np.arange(rows)[:, None] * n + np.arange(cols) * _PEAK_BLOCK).reshape(-1)
    flat = equity.reshape(-1)
    top = np.maximum.reduceat(flat, starts).reshape(rows, cols)
    if np.isnan(top).any():  # NaN poisons a running maximum from its bar on: keep its loop
        return _drawdowns_by_peak(equity)
    before = np.empty_like(top)  # the peak before each block (the first: its own first bar)
    before[:, 0] = equity[:, 0]
    np.maximum.accumulate(top[:, :-1], axis=1, out=before[:, 1:])
    if not np.all((before > 0) & (before < np.inf)):  # no order to rely on: the running maximum throughout
        return _drawdowns_by_peak(equity)
    fall = before - np.minimum.reduceat(flat, starts).reshape(rows, cols)
    ratio = fall / before
    rising = top > before
    whole = rising[:, :full]
    if whole.any():
        inside = equity[:, :full * _PEAK_BLOCK].reshape(rows, full, _PEAK_BLOCK)[whole]
        peak = np.maximum.accumulate(inside, axis=1)
        np.maximum(peak, before[:, :full][whole][:, None], out=peak)
        np.subtract(peak, inside, out=inside)
        fall[:, :full][whole] = np.maximum.reduce(inside, axis=1)
        np.divide(inside, peak, out=inside)
        ratio[:, :full][whole] = np.maximum.reduce(inside, axis=1)
    if rest:
        ends = np.flatnonzero(rising[:, full])
        if len(ends):
            tail = equity[ends, full * _PEAK_BLOCK:]
            peak = np.maximum.accumulate(tail, axis=1)
            np.maximum(peak, before[ends, full][:, None], out=peak)
            drop = peak - tail
            fall[ends, full] = drop.max(axis=1)
            ratio[ends, full] = (drop / peak).max(axis=1)
    return np.maximum.reduce(fall, axis=1), np.maximum.reduce(ratio, axis=1)


def _drawdowns_by_peak(equity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """:func:`_drawdowns` as :func:`curve_stats` works them out, bar by bar."""
    peak = np.maximum.accumulate(equity, axis=1)
    fall = peak - equity
    return fall.max(axis=1), (fall / peak).max(axis=1)


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


Column = list[Any]  # one metric of many runs: floats, ints, strings, None where undefined or not finite


def metrics_of_rows(curves: CurveColumns, *, pnl: np.ndarray, bars_held: np.ndarray, trade_starts: np.ndarray,
                    initial_capital: float, close: np.ndarray, periods_per_year: float,
                    annualization_basis: str = "") -> tuple[dict[str, Column], dict[int, str]]:
    """:func:`metrics_from` of many runs over the same bars, as JSON has them (NaN and infinities
    None), a column (one value per run) per metric; and the runs for which ``metrics_from`` raises,
    with ``"<exception type>: <message>"`` (their values are None). Run ``i``'s curve is
    ``curves``' row ``i``, its trades ``pnl`` and ``bars_held`` at ``trade_starts[i]:trade_starts[i + 1]``.

    The same floats as ``metrics_from`` row by row: what is worked out for every run at once is
    elementwise + - * / and comparisons (correctly rounded, in numpy as in Python), maxima and
    minima, and counts; what is not is done run by run as ``metrics_from`` does it: the power of
    the annualised return (numpy may vectorise it with other roundings) and the sums of each run's
    winning and losing trades (numpy sums an array pairwise, in blocks that depend on its length).
    Inputs on which ``metrics_from`` would raise for every run, or that it would take other types
    of, go through ``metrics_from`` run by run.
    """
    rows, n = len(curves), curves.bars
    try:
        bh = 100.0 * (float(close[-1]) / float(close[0]) - 1.0) if n else 0.0
    except ZeroDivisionError:
        bh = None
    # Python floats (or ints they hold exactly), positive: a capital of any other type or sign, or
    # an annualisation that fails, goes through metrics_from itself.
    plain = (type(initial_capital) is float or (type(initial_capital) is int and initial_capital <= _EXACT)) and \
        type(periods_per_year) in (float, int) and 0 < initial_capital < math.inf and 0 < periods_per_year < math.inf
    if n == 0 or bh is None or not plain or not np.issubdtype(bars_held.dtype, np.integer):
        return _metrics_run_by_run(curves, pnl=pnl, bars_held=bars_held, trade_starts=trade_starts,
                                   initial_capital=initial_capital, close=close, periods_per_year=periods_per_year,
                                   annualization_basis=annualization_basis)
    ic = initial_capital
    trade_starts = np.asarray(trade_starts, dtype=np.int64)
    lo, hi = int(trade_starts[0]), int(trade_starts[-1])
    pnl, bars_held, trade_starts = pnl[lo:hi], bars_held[lo:hi], trade_starts - lo
    first, last = trade_starts[:-1], trade_starts[1:]
    trades = last - first
    traded = trades > 0
    final = curves.final
    errors: dict[int, str] = {}
    with np.errstate(all="ignore"):  # where metrics_from gives None or cleans a NaN away
        total = final - ic
        years = (n - 1) / periods_per_year
        root = math.sqrt(periods_per_year)
        ann = np.full(rows, np.nan)
        has_ann = np.zeros(rows, dtype=bool)
        if years > 0:
            finals = final.tolist()
            for i in np.flatnonzero(final > 0).tolist():
                try:
                    ann[i] = 100.0 * ((finals[i] / ic) ** (1.0 / years) - 1.0)
                except Exception as exc:  # as from metrics_from: e.g. an annualised return that overflows
                    errors[i] = f"{type(exc).__name__}: {exc}"
                else:
                    has_ann[i] = True
        sd, mean, downside = curves.sd, curves.mean, curves.downside
        dd_abs = curves.drawdown
        dd_pct = curves.drawdown_ratio * 100.0
        calmar_num, calmar_den = ann / 100.0, dd_pct / 100.0
        wins, losses = pnl > 0, pnl < 0
        n_wins, n_losses = _counts(wins, trade_starts), _counts(losses, trade_starts)
        win_sum, win_max = _sums_and_extremes(pnl[wins], n_wins, np.maximum)
        loss_sum, loss_min = _sums_and_extremes(pnl[losses], n_losses, np.minimum)
        held = np.concatenate(([0], np.cumsum(bars_held, dtype=np.int64)))
        columns: dict[str, Column] = {
            "initial_capital": [_clean(ic)] * rows,
            "final_equity": _floats(final),
            "total_return": _floats(total),
            "total_return_pct": _floats(100.0 * total / ic),
            "bars": [n] * rows,
            "annualization_factor": [_clean(periods_per_year)] * rows,
            "annualization_basis": [_clean(annualization_basis)] * rows,
            "annualized_return_pct": _floats(ann, has_ann),
            "volatility_pct": _floats(100.0 * sd * root),
            "sharpe_ratio": _floats(mean / sd * root, sd > 0),
            "sortino_ratio": _floats(mean / downside * root, downside > 0),
            "max_drawdown": _floats(dd_abs),
            "max_drawdown_pct": _floats(dd_pct),
            "calmar_ratio": _floats(calmar_num / calmar_den, has_ann & (calmar_den > 0) & np.isfinite(calmar_num)),
            "recovery_factor": _floats(total / dd_abs, (dd_abs > 0) & np.isfinite(total)),
            "trades": trades.tolist(),
            "winning_trades": n_wins.tolist(),
            "losing_trades": n_losses.tolist(),
            "win_rate": _floats(n_wins / trades, traded),
            "profit_factor": _floats(win_sum / -loss_sum, traded & (-loss_sum > 0) & np.isfinite(win_sum)),
            "avg_win": _floats(win_sum / n_wins, n_wins > 0),
            "avg_loss": _floats(loss_sum / n_losses, n_losses > 0),
            "largest_win": _floats(win_max, n_wins > 0),
            "largest_loss": _floats(loss_min, n_losses > 0),
            # Whole numbers: their float sum is the same in any order while it stays below 2**53.
            "avg_bars_held": _floats((held[last] - held[first]).astype(np.float64) / trades, traded),
            "exposure": _floats(curves.exposed.astype(np.float64) / n),
            "buy_and_hold_return_pct": [_clean(bh)] * rows,
        }
    if len(bars_held) and int(np.abs(bars_held).max()) * len(bars_held) >= _EXACT:
        columns["avg_bars_held"] = [
            float(np.add.reduce(bars_held[a:b], dtype=np.float64)) / (b - a) if b > a else None
            for a, b in zip(first.tolist(), last.tolist(), strict=True)]
    for i in errors:
        for column in columns.values():
            column[i] = None
    return columns, errors


_EXACT = 2 ** 53  # integers up to here are floats exactly


def _counts(flags: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per run, how many of its ``flags`` (its trades are ``starts[i]:starts[i + 1]``) are set."""
    before = np.concatenate(([0], np.cumsum(flags, dtype=np.int64)))
    return before[starts[1:]] - before[starts[:-1]]


def _sums_and_extremes(values: np.ndarray, counts: np.ndarray,
                       extreme: np.ufunc) -> tuple[np.ndarray, np.ndarray]:
    """Per run, the sum of its ``values`` (``counts[i]`` of them, run after run) as ``np.add.reduce``
    of them alone gives it (0.0 for none: an empty sum), and their ``extreme`` (undefined for none)."""
    ends = np.cumsum(counts)
    begins = ends - counts
    add = np.add.reduce
    sums = np.array([float(add(values[a:b])) if b > a else 0.0 for a, b in zip(begins.tolist(), ends.tolist(),
                                                                                strict=True)], dtype=np.float64)
    out = np.full(len(counts), np.nan)
    some = counts > 0
    if some.any():
        out[some] = extreme.reduceat(values, begins[some])
    return sums, out


def _floats(values: np.ndarray, defined: np.ndarray | None = None) -> Column:
    """``values`` as Python floats, None where not ``defined`` or not finite (JSON has neither)."""
    ok = np.isfinite(values)
    if defined is not None:
        ok &= defined
    out: Column = values.tolist()
    if not ok.all():
        for i in np.flatnonzero(~ok).tolist():
            out[i] = None
    return out


def _metrics_run_by_run(curves: CurveColumns, *, pnl: np.ndarray, bars_held: np.ndarray, trade_starts: np.ndarray,
                        initial_capital: float, close: np.ndarray, periods_per_year: float,
                        annualization_basis: str) -> tuple[dict[str, Column], dict[int, str]]:
    """:func:`metrics_of_rows` by :func:`metrics_from` itself, one run at a time."""
    found: list[dict[str, Any] | None] = []
    errors: dict[int, str] = {}
    bounds = np.asarray(trade_starts).tolist()
    for i, curve in enumerate(curves.stats()):
        a, b = bounds[i], bounds[i + 1]
        try:
            found.append(metrics_from(curve, pnl=pnl[a:b], bars_held=bars_held[a:b], initial_capital=initial_capital,
                                      close=close, periods_per_year=periods_per_year,
                                      annualization_basis=annualization_basis))
        except Exception as exc:  # that run's result
            found.append(None)
            errors[i] = f"{type(exc).__name__}: {exc}"
    names = list(next((m for m in found if m is not None), {}))
    return {name: [None if m is None else _clean(m[name]) for m in found] for name in names}, errors
