"""Walk-forward analysis: fold windows, the stitched out-of-sample curve, its metrics and chart.

Pure domain code: the caller optimises on each fold's in-sample bars, backtests the chosen
parameters on its out-of-sample bars, and hands those curves back here to be joined.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from numbers import Integral
from pathlib import Path
from typing import Any, Final, Literal

import matplotlib

matplotlib.use("Agg")  # no display on workers

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ktrdr.backtest.metrics import compute_metrics  # noqa: E402
from ktrdr.backtest.plot import figure  # noqa: E402
from ktrdr.data.timeframes import infer_timeframe, periods_per_year  # noqa: E402

Mode = Literal["rolling", "anchored"]
Length = int | timedelta

MAX_FOLDS: Final = 200
# A window of one bar has no return to measure, so no window (in- or out-of-sample) is shorter.
MIN_WINDOW_BARS: Final = 2

# compute_metrics fields that the stitched curve alone cannot define: trades, exposure and the
# benchmark belong to the folds' own results, and the caller aggregates them from there.
_NOT_FROM_CURVE: Final = frozenset({
    "trades", "winning_trades", "losing_trades", "win_rate", "profit_factor", "avg_win", "avg_loss",
    "largest_win", "largest_loss", "avg_bars_held", "exposure", "buy_and_hold_return_pct",
})


class FoldError(ValueError):
    """The bars and the requested windows do not make a valid walk-forward split."""


@dataclass(frozen=True, kw_only=True)
class Fold:
    """One walk-forward fold; both windows are closed intervals of actual bar timestamps.

    ``in_end`` and ``out_start`` are consecutive bars, so no bar is in both windows and none is
    skipped between them.
    """

    index: int
    in_start: datetime
    in_end: datetime
    out_start: datetime
    out_end: datetime

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "in_start": self.in_start.isoformat(), "in_end": self.in_end.isoformat(),
                "out_start": self.out_start.isoformat(), "out_end": self.out_end.isoformat()}


def make_folds(index: pd.DatetimeIndex, *, mode: Mode, in_sample: Length | None = None,
               out_of_sample: Length | None = None, folds: int | None = None, ratio: float = 4.0) -> list[Fold]:
    """Split the bars of ``index`` (sorted, unique, UTC) into walk-forward folds.

    Give ``in_sample`` and ``out_of_sample`` as bar counts or durations (they may be mixed), or
    ``folds`` alone. A duration window starting at bar t holds the bars in [t, t + duration);
    a data gap stretches it so that it still holds at least 2 bars. Out-of-sample windows follow
    one another with no gap; the last may be shorter but holds at least 2 bars, else it is dropped.

    ``mode="rolling"``: the in-sample window is the ``in_sample`` length just before each
    out-of-sample window, so it slides by the out-of-sample length. ``mode="anchored"``: it always
    starts at the first bar and grows.

    With ``folds=N`` the out-of-sample windows hold the largest equal bar count ``m`` such that
    ``floor(ratio * m)`` in-sample bars and N such windows fit; the bars left over (fewer than
    ``ratio + N``) are dropped from the start, which keeps the most recent data out of sample.
    ``ratio`` is ignored when lengths are given.
    """
    index = _checked_index(index)
    if mode not in ("rolling", "anchored"):
        raise FoldError(f"mode must be 'rolling' or 'anchored', got {mode!r}")
    if folds is not None:
        if in_sample is not None or out_of_sample is not None:
            raise FoldError("give either folds or in_sample and out_of_sample, not both")
        return _folds_by_count(index, mode=mode, folds=folds, ratio=ratio)
    if in_sample is None or out_of_sample is None:
        raise FoldError("give in_sample and out_of_sample (bar counts or durations), or folds")
    _check_length("in_sample", in_sample)
    _check_length("out_of_sample", out_of_sample)
    return _build(index, mode=mode, in_sample=in_sample, out_of_sample=out_of_sample, first=0)


def _checked_index(index: pd.DatetimeIndex) -> pd.DatetimeIndex:
    if not isinstance(index, pd.DatetimeIndex):
        raise FoldError(f"expected a DatetimeIndex, got {type(index).__name__}")
    if index.tz is None:
        raise FoldError("the bar index has no time zone; expected UTC timestamps")
    index = index.tz_convert("UTC")
    if len(index) > 1 and not (index[1:] > index[:-1]).all():
        raise FoldError("the bar index must be sorted and without duplicates")
    return index


def _check_length(name: str, length: Length) -> None:
    if isinstance(length, bool) or not isinstance(length, Integral | timedelta):
        raise FoldError(f"{name} must be a bar count or a duration, got {length!r}")
    if isinstance(length, timedelta):
        if length <= timedelta(0):
            raise FoldError(f"{name} must be a positive duration, got {_describe(length)}")
    elif length < MIN_WINDOW_BARS:
        raise FoldError(f"{name} must be at least {MIN_WINDOW_BARS} bars, got {length}")


def _describe(length: Length) -> str:
    return str(pd.Timedelta(length)) if isinstance(length, timedelta) else f"{length} bars"


def _folds_by_count(index: pd.DatetimeIndex, *, mode: Mode, folds: int, ratio: float) -> list[Fold]:
    if isinstance(folds, bool) or not isinstance(folds, Integral) or folds <= 0:
        raise FoldError(f"folds must be a positive whole number, got {folds!r}")
    if folds > MAX_FOLDS:
        raise FoldError(f"{folds} folds requested; at most {MAX_FOLDS} are allowed")
    if not (math.isfinite(ratio) and ratio > 0):
        raise FoldError(f"ratio (in-sample : out-of-sample) must be a positive number, got {ratio!r}")
    folds = int(folds)

    def used(m: int) -> int:
        return math.floor(ratio * m) + folds * m

    n = len(index)
    # n / (ratio + folds) always fits; flooring the in-sample length can leave room for one more.
    oos = int(n // (ratio + folds))
    while used(oos + 1) <= n:
        oos += 1
    ins = math.floor(ratio * oos)
    if oos < MIN_WINDOW_BARS or ins < MIN_WINDOW_BARS:
        smallest = max(MIN_WINDOW_BARS, math.ceil(MIN_WINDOW_BARS / ratio))
        while math.floor(ratio * smallest) < MIN_WINDOW_BARS:  # float rounding in the ceil above
            smallest += 1
        raise FoldError(f"not enough bars for {folds} walk-forward folds at in-sample:out-of-sample ratio "
                        f"{ratio:g}: the range has {n} bars and needs at least {used(smallest)} "
                        f"({math.floor(ratio * smallest)} in-sample + {folds} x {smallest} out-of-sample)")
    result = _build(index, mode=mode, in_sample=ins, out_of_sample=oos, first=n - used(oos))
    assert len(result) == folds, (len(result), folds)
    return result


def _window_end(index: pd.DatetimeIndex, start: int, length: Length) -> int:
    """Position just past the window of ``length`` that starts at bar ``start``."""
    if isinstance(length, timedelta):
        return max(int(index.searchsorted(index[start] + length, side="left")), start + MIN_WINDOW_BARS)
    return start + int(length)


def _window_start(index: pd.DatetimeIndex, end: int, length: Length) -> int:
    """First position of the window of ``length`` that ends just before bar ``end``."""
    if isinstance(length, timedelta):
        return min(int(index.searchsorted(index[end] - length, side="left")), end - MIN_WINDOW_BARS)
    return end - int(length)


def _build(index: pd.DatetimeIndex, *, mode: Mode, in_sample: Length, out_of_sample: Length,
           first: int) -> list[Fold]:
    n = len(index)
    if n - first < MIN_WINDOW_BARS:
        raise _not_enough(index, first=first, out_pos=n, in_sample=in_sample, out_of_sample=out_of_sample)
    out_pos = _window_end(index, first, in_sample)
    if out_pos + MIN_WINDOW_BARS > n:
        raise _not_enough(index, first=first, out_pos=out_pos, in_sample=in_sample, out_of_sample=out_of_sample)

    def stamp(pos: int) -> datetime:
        return index[pos].to_pydatetime().astimezone(UTC)

    result: list[Fold] = []
    while out_pos + MIN_WINDOW_BARS <= n:
        if len(result) == MAX_FOLDS:
            raise FoldError(f"more than {MAX_FOLDS} folds: out-of-sample windows of {_describe(out_of_sample)} "
                            f"over {n - first} bars; lengthen out_of_sample or shorten the range")
        out_end = min(_window_end(index, out_pos, out_of_sample), n)
        # The first fold's in-sample window is the first bars themselves, even across a data gap.
        in_pos = first if mode == "anchored" or not result else max(first, _window_start(index, out_pos, in_sample))
        result.append(Fold(index=len(result), in_start=stamp(in_pos), in_end=stamp(out_pos - 1),
                           out_start=stamp(out_pos), out_end=stamp(out_end - 1)))
        out_pos = out_end
    return result


def _not_enough(index: pd.DatetimeIndex, *, first: int, out_pos: int, in_sample: Length,
                out_of_sample: Length) -> FoldError:
    have = len(index) - first
    span = f" ({index[first].isoformat()} to {index[-1].isoformat()})" if have > 0 else ""
    if isinstance(in_sample, timedelta) or isinstance(out_of_sample, timedelta):
        taken = f"{out_pos - first} bars here" if out_pos < len(index) else "more than the whole range"
        need = (f"the in-sample window ({_describe(in_sample)}: {taken}) plus an out-of-sample window "
                f"({_describe(out_of_sample)}) of at least {MIN_WINDOW_BARS} bars")
    else:
        need = (f"{in_sample + out_of_sample} ({in_sample} in-sample + {out_of_sample} out-of-sample; "
                f"at least {in_sample + MIN_WINDOW_BARS} with a shortened out-of-sample window)")
    return FoldError(f"not enough bars for one walk-forward fold: the range has {have} bars{span}; "
                     f"one fold needs {need}")


def stitch(curves: Sequence[tuple[np.ndarray, np.ndarray]], *, initial_capital: float,
           starts: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Join the folds' out-of-sample (index_ns, equity) curves into one compounded curve.

    Each fold's backtest starts from ``initial_capital``, or from ``starts[k]``; the stitched curve
    re-invests each fold's ending equity in the next, so fold k is scaled by (stitched equity at
    the end of fold k-1) / its start, and fold 0 by ``initial_capital`` / its start (1: as is). A
    fold that went on from the last one's end (a carried position) started from that very equity:
    its scale is exactly 1, its curve kept as is.
    """
    if not curves:
        raise ValueError("no fold curves to stitch")
    if not initial_capital > 0:
        raise ValueError(f"initial_capital must be > 0, got {initial_capital!r}")
    if starts is not None and (len(starts) != len(curves) or not all(s > 0 and math.isfinite(s) for s in starts)):
        raise ValueError(f"starts: one starting equity > 0 per fold, got {list(starts)!r} for {len(curves)} folds")
    indexes: list[np.ndarray] = []
    pieces: list[np.ndarray] = []
    scale = 1.0 if starts is None else initial_capital / starts[0]
    for k, (index_ns, equity) in enumerate(curves):
        index_ns = np.asarray(index_ns, dtype=np.int64)
        equity = np.asarray(equity, dtype=np.float64)
        if len(equity) == 0 or len(index_ns) != len(equity):
            raise ValueError(f"fold {k}: {len(index_ns)} timestamps for {len(equity)} equity values")
        piece = equity * scale
        indexes.append(index_ns)
        pieces.append(piece)
        if k + 1 < len(curves):
            scale = float(piece[-1]) / (initial_capital if starts is None else starts[k + 1])
    index = np.concatenate(indexes)
    if len(index) > 1 and not (np.diff(index) > 0).all():
        raise ValueError("the folds' timestamps are not strictly increasing: out-of-sample windows overlap "
                         "or are out of order")
    return index, np.concatenate(pieces)


def stitched_metrics(index_ns: np.ndarray, equity: np.ndarray, *, initial_capital: float,
                     timeframe: str | None = None) -> dict[str, Any]:
    """Metrics of the stitched out-of-sample curve, with ``compute_metrics``'s definitions.

    Annualised the way ``run_backtest`` does it; ``timeframe=None`` infers it from the bars.
    Fields about trades, exposure and buy-and-hold are left out: see ``_NOT_FROM_CURVE``.
    """
    index_ns = np.asarray(index_ns, dtype=np.int64)
    equity = np.asarray(equity, dtype=np.float64)
    if len(index_ns) != len(equity):
        raise ValueError(f"{len(index_ns)} timestamps for {len(equity)} equity values")
    if timeframe is None:
        timeframe = infer_timeframe(pd.DatetimeIndex(pd.to_datetime(index_ns, utc=True))) or "1d"
    ppy = periods_per_year(timeframe)
    n = len(equity)
    none = np.empty(0)
    metrics = compute_metrics(equity=equity, initial_capital=initial_capital, close=np.ones(n),
                              shares=np.zeros(n), pnl=none, bars_held=none, periods_per_year=ppy,
                              annualization_basis=f"{timeframe} bars: {ppy:g} per year")
    return {k: v for k, v in metrics.items() if k not in _NOT_FROM_CURVE}


Window = tuple[float | None, int | None]  # a window's total return in % and its bars


def trade_statistics(pnl: Sequence[float]) -> dict[str, Any]:
    """Count, win rate, profit factor and average, best and worst trade of a list of trade pnls."""
    values = np.asarray(pnl, dtype=np.float64)
    wins, losses = values[values > 0], values[values < 0]
    return {"trades": int(len(values)), "winning_trades": int(len(wins)), "losing_trades": int(len(losses)),
            "win_rate": float(len(wins) / len(values)) if len(values) else None,
            "profit_factor": float(wins.sum() / -losses.sum()) if len(losses) and len(wins) else None,
            "total_pnl": float(values.sum()), "avg_pnl": float(values.mean()) if len(values) else None,
            "best_trade": float(values.max()) if len(values) else None,
            "worst_trade": float(values.min()) if len(values) else None}


def parameter_stability(chosen: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per parameter, what the folds chose: the values in fold order, how many distinct, the most
    common and the share of folds that chose it (1.0: every fold agreed), and the range if numeric."""
    out: dict[str, dict[str, Any]] = {}
    for name in dict.fromkeys(k for c in chosen for k in c):
        values = [c.get(name) for c in chosen]
        counts: dict[str, int] = {}
        for v in values:
            counts[json.dumps(v)] = counts.get(json.dumps(v), 0) + 1
        common, times = max(counts.items(), key=lambda kv: kv[1])
        numeric = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
        out[name] = {"values": values, "distinct": len(counts), "most_common": json.loads(common),
                     "agreement": times / len(values),
                     **({"min": min(numeric), "max": max(numeric)} if len(numeric) == len(values) else {})}
    return out


def _log_growth(total_return_pct: float | None, bars: int | None) -> tuple[float, int] | None:
    """ln(final / initial) and the bar-to-bar steps it took; None when unusable."""
    if total_return_pct is None or bars is None or bars < 2:
        return None
    growth = 1.0 + float(total_return_pct) / 100.0
    if not math.isfinite(growth) or growth <= 0:
        return None
    return math.log(growth), int(bars) - 1


def walk_forward_efficiency(in_sample: Sequence[Window], out_of_sample: Window) -> float | None:
    """Out-of-sample return per bar over in-sample return per bar, both as log returns.

    ``in_sample``: each fold's chosen variant on its in-sample bars, as (total return %, bars);
    their log growth is pooled over all their bars. ``out_of_sample``: the stitched out-of-sample
    curve, so the efficiency has the sign of the walk-forward's own result. Nothing is annualised:
    annualising a few hundred hourly bars turned -2.49 % into -24.1 %, and a ratio of annualised
    means could be positive while the stitched curve lost money. None when no in-sample fold is
    usable, the out-of-sample curve is not, or the in-sample return per bar is not positive.
    """
    pooled = [g for g in (_log_growth(*w) for w in in_sample) if g is not None]
    stitched = _log_growth(*out_of_sample)
    if not pooled or stitched is None:
        return None
    per_bar_in = sum(g for g, _ in pooled) / sum(n for _, n in pooled)
    per_bar_out = stitched[0] / stitched[1]
    return per_bar_out / per_bar_in if per_bar_in > 0 else None


def plot_walkforward(*, index_ns: np.ndarray, equity: np.ndarray, folds: Sequence[Fold], path: Path,
                     title: str) -> Path:
    """PNG of the stitched out-of-sample equity and its drawdown, a line where each fold starts."""
    index = pd.DatetimeIndex(pd.to_datetime(np.asarray(index_ns, dtype=np.int64), utc=True))
    equity = np.asarray(equity, dtype=np.float64)
    with figure(path, 2, 1, figsize=(11, 7), sharex=True, height_ratios=(3, 1)) as (fig, (top, bottom)):
        top.plot(index, equity, label="out-of-sample (stitched)", linewidth=1.0)
        peak = np.maximum.accumulate(equity)
        bottom.plot(index, 100.0 * (equity - peak) / peak, linewidth=0.8)
        for fold in folds:
            for ax in (top, bottom):
                ax.axvline(fold.out_start, color="grey", linestyle="--", linewidth=0.6, alpha=0.7)
            # x in data, y in axes units: the label stays at the top whatever the equity scale.
            top.text(fold.out_start, 0.98, f" fold {fold.index}", transform=top.get_xaxis_transform(),
                     rotation=90, va="top", ha="left", fontsize=7, color="grey")
        top.set_ylabel("equity")
        top.legend(loc="lower left")
        top.grid(alpha=0.3)
        top.set_title(title)
        bottom.set_ylabel("drawdown %")
        bottom.grid(alpha=0.3)
    return Path(path)
