"""The fill simulator run for many rows of wanted positions at once: a sweep block's variants.

Row ``i``'s run is exactly ``simulate(open_, close, wanted_i, config)`` (``ktrdr.backtest.simulator``),
bit for bit: the same float operations in the same order on the same values, each numpy call doing
it for many rows where ``simulate`` does it for one.

Only the cash is sequential: an entry is sized from the cash that the fills before it left. So the
rows advance together, one position change a step: step ``k`` fills every row's ``k``-th change
with a few array operations. Rows are laid out by how many changes they have, most first, so the
rows still going at step ``k`` are a prefix and each step reads one slice. Everything off that
chain is done for all rows at once: fill prices before it; trades, open positions and equity
curves after it. A step costs the same for 10 rows as for 1,000, so the more rows the better.

A row whose run meets a value on which ``simulate`` raises or could (a NaN, an infinity, a zero
price sizing an entry, more shares than a float counts exactly) is marked ``unsure``: its result
here is not to be used, and ``simulate`` alone must say what happens to it.

Memory: about 210 bytes per position change at the peak (70 kept), plus what :meth:`Batch.equity`
is asked for.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ktrdr.backtest.config import BacktestConfig
from ktrdr.backtest.simulator import Simulation, change_bars, held_positions
from ktrdr.cancel import CancelToken
from ktrdr.strategy.signals import PositionChanges

# A step takes ~15 us: checking every 1,024 keeps well under the 50 ms between cancellation checks.
_CANCEL_STEPS = 1024
# Rows still going when fewer than this many are go on one by one (see _walk).
_ALONE_BELOW = 16
# Shares are counted in floats here, in Python ints in simulate: the same numbers below 2**53.
_EXACT = 2.0 ** 53


@dataclass(frozen=True, slots=True)
class Changes:
    """One row's position changes: at the open of bar ``bars[i]`` the position becomes ``wants[i]``."""

    bars: np.ndarray  # int64, increasing, >= 1
    wants: np.ndarray  # int8: -1, 0 or 1


def changes_of(wanted: np.ndarray) -> Changes:
    """The changes ``simulate`` fills for ``wanted`` (+1/0/-1 after each bar's close), starting flat."""
    held = held_positions(wanted)
    bars = change_bars(held)
    return Changes(bars=bars, wants=held[bars])


def changes_of_rows(changes: PositionChanges, trade_from: int = 0) -> list[Changes]:
    """:func:`changes_of` of each row's wanted positions from bar ``trade_from`` on (``wanted[trade_from:]``),
    the rows' wanted positions given by their changes (``ktrdr.strategy.signals.position_changes_rows``).

    In the window the position held at bar ``j`` (``j >= 1``) is the one wanted after bar
    ``trade_from + j - 1``: it moves at bar 1 to what was wanted after bar ``trade_from`` (when that is
    not flat), and at bar ``c - trade_from + 1`` for each change of the wish after a bar ``c`` from
    ``trade_from + 1`` to the second last (the last bar's wish has no next open to fill at).
    """
    rows, n, t = changes.rows, changes.bars, trade_from
    if rows == 0:
        return []
    if n - t < 2:
        return [Changes(bars=np.empty(0, dtype=np.int64), wants=np.empty(0, dtype=np.int8)) for _ in range(rows)]
    row, bar, to = changes.row, changes.bar, changes.to
    key = row * (n + 1) + bar  # increasing: by row, then by bar
    every = np.arange(rows, dtype=np.int64) * (n + 1)
    # What each row wants after bar t: its last change up to there, else what it wanted before any.
    last = np.searchsorted(key, every + t, side="right") - 1
    ok = last >= np.searchsorted(key, every, side="left")
    start = np.where(ok, to[np.maximum(last, 0)] if len(to) else np.int8(0), np.int8(changes.state)).astype(np.int8)
    inside = (bar > t) & (bar <= n - 2)
    w_row, w_bar, w_to = row[inside], bar[inside] - t + 1, to[inside]
    moves = np.flatnonzero(start != 0)
    # Each row's move at bar 1 goes before its other moves.
    at = np.searchsorted(w_row, moves, side="left")
    bars = np.insert(w_bar, at, 1)
    wants = np.insert(w_to, at, start[moves])
    ends = np.cumsum(np.bincount(np.insert(w_row, at, moves), minlength=rows)).tolist()
    # Slices, as np.split makes them, without its ~2 us of Python per piece.
    return [Changes(bars=bars[a:b], wants=wants[a:b]) for a, b in zip([0, *ends[:-1]], ends, strict=True)]


@dataclass(kw_only=True)
class Batch:
    """Rows' runs side by side. Events (position changes) are row-major: row ``i``'s are
    ``starts[i]:starts[i + 1]``; so are trades, by ``trade_starts``."""

    close: np.ndarray
    initial_capital: float
    starts: np.ndarray
    bar: np.ndarray  # each event's bar
    cash: np.ndarray  # the cash after its fills
    shares: np.ndarray  # the shares held after it, signed (floats of whole numbers)
    end_cash: np.ndarray  # per row: the cash at the end (after the close at the end, if any)
    closed_at_end: np.ndarray  # per row: whether a position was closed at the last close
    skipped: np.ndarray  # per row: entries whose budget did not buy one whole share
    unsure: np.ndarray  # per row: not to be used, see the module's doc
    trades: dict[str, np.ndarray]  # TRADE_COLUMNS, row-major
    trade_starts: np.ndarray
    # Per row, for a position left open at the end (close_at_end=False), else None.
    open_positions: list[dict[str, float] | None]

    @property
    def rows(self) -> int:
        return len(self.end_cash)

    def equity(self, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """Rows ``lo:hi``'s equity curves (C-contiguous, rows x bars) and each one's bars with a position."""
        n, count = len(self.close), hi - lo
        e0, e1 = int(self.starts[lo]), int(self.starts[hi])
        first = self.starts[lo:hi] - e0
        # A row's segments: the bars before its first change (flat, with the capital), then one per change.
        seg_bar = np.insert(self.bar[e0:e1], first, 0)
        seg_cash = np.insert(self.cash[e0:e1], first, self.initial_capital)
        seg_shares = np.insert(self.shares[e0:e1], first, 0.0)
        seg_begin = np.repeat(np.arange(count) * n, np.diff(self.starts[lo:hi + 1]) + 1) + seg_bar
        lengths = np.diff(seg_begin, append=count * n)
        # simulate: cash + shares * close, run by run; a sum is the same either way round.
        equity = np.repeat(seg_shares, lengths).reshape(count, n)
        equity *= self.close
        equity += np.repeat(seg_cash, lengths).reshape(count, n)
        ended = np.flatnonzero(self.closed_at_end[lo:hi])
        equity[ended, -1] = self.end_cash[lo + ended]
        exposed = np.add.reduceat(np.where(seg_shares != 0, lengths, 0), first + np.arange(count))
        return equity, exposed

    def trades_of(self, row: int) -> dict[str, np.ndarray]:
        a, b = int(self.trade_starts[row]), int(self.trade_starts[row + 1])
        return {name: column[a:b] for name, column in self.trades.items()}

    def simulation(self, row: int) -> Simulation:
        """Row ``row``'s run as ``simulate`` returns it (copies: curves for one row)."""
        equity, _ = self.equity(row, row + 1)
        a, b = int(self.starts[row]), int(self.starts[row + 1])
        held = np.zeros(len(self.close), dtype=np.int64)
        bounds = [*self.bar[a:b].tolist(), len(self.close)]
        for start, stop, shares in zip(bounds, bounds[1:], self.shares[a:b].tolist(), strict=False):
            held[start:stop] = shares
        return Simulation(equity=equity[0], shares=held,
                          trades={k: v.copy() for k, v in self.trades_of(row).items()},
                          open_position=self.open_positions[row], skipped_entries=int(self.skipped[row]))


def simulate_batch(open_: np.ndarray, close: np.ndarray, rows: Sequence[Changes], config: BacktestConfig, *,
                   cancel: CancelToken | None = None) -> Batch:
    """Each of ``rows`` (see :func:`changes_of`) run as ``simulate`` runs it, starting flat."""
    n, count = len(close), len(rows)
    counts = np.array([len(r.bars) for r in rows], dtype=np.int64)
    starts = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(counts, out=starts[1:])
    bar = np.concatenate([r.bars for r in rows]).astype(np.int64) if count else np.empty(0, dtype=np.int64)
    want = np.concatenate([r.wants for r in rows]).astype(np.float64) if count else np.empty(0)
    row = np.repeat(np.arange(count), counts)
    first = np.zeros(len(bar), dtype=bool)  # each row's first change: nothing held before it
    first[starts[:-1][counts > 0]] = True
    held_before = np.where(first, 0.0, np.roll(want, 1))

    comm, slip = config.commission, config.slippage
    budget_share = config.fraction if config.sizing == "fraction" else 1.0
    # The fill prices simulate computes at each change, from the side bought into or closed.
    opens = open_[bar]
    entry_price = np.where(want > 0, opens * (1 + slip), opens * (1 - slip))
    exit_price = np.where(held_before > 0, opens * (1 - slip), opens * (1 + slip))

    with np.errstate(all="ignore"):  # where simulate would raise, the row is unsure
        cash, sized, qty = _walk(counts, starts, row, config.initial_capital, comm, cancel=cancel,
                                 exit_price=exit_price, entry_price=entry_price,
                                 denominator=entry_price * (1 + comm),
                                 budget=np.where(want != 0, budget_share, 0.0), want=want)
    unsure = np.zeros(count, dtype=bool)
    unsure[row[~(np.isfinite(cash) & np.isfinite(sized) & (sized < _EXACT))]] = True
    skipped = np.bincount(row[(want != 0) & ~(qty > 0)], minlength=count)

    last = starts[1:] - 1  # each row's last change (where it has one)
    moved = counts > 0

    def after_last(values: np.ndarray, flat: float) -> np.ndarray:
        """Per row: ``values`` at its last change, ``flat`` where it has none."""
        return np.where(moved, values[np.maximum(last, 0)], flat) if len(values) else np.full(count, flat)

    final_cash = after_last(cash, float(config.initial_capital))
    final_qty, final_side = after_last(qty, 0.0), after_last(want, 0.0)
    ref = float(close[-1]) if n else 0.0
    # Each closed trade: a change (after a row's first) that had shares to close; its entry is the
    # change before it. Then, with close_at_end, what is still held, at the last close.
    closing = np.flatnonzero(~first & (np.roll(qty, 1) > 0))
    end_rows = np.flatnonzero(final_qty > 0) if config.close_at_end else np.empty(0, dtype=np.int64)
    end_price = np.where(final_side[end_rows] > 0, ref * (1 - slip), ref * (1 + slip))
    with np.errstate(all="ignore"):  # an unsure row's values may be anything
        trades = _trades(entry=np.concatenate((closing - 1, last[end_rows])),
                         exit_price=np.concatenate((exit_price[closing], end_price)),
                         exit_bar=np.concatenate((bar[closing], np.full(len(end_rows), n, dtype=np.int64))),
                         bar=bar, qty=qty, side=want, entry_price=entry_price, comm=comm)
        end_value = final_qty[end_rows] * end_price
        end_cash = final_cash.copy()
        end_cash[end_rows] = final_cash[end_rows] + (final_side[end_rows] * end_value - end_value * comm)
    # Row-major: a row's closed trades, then its close at the end.
    trade_row = np.concatenate((row[closing], end_rows))
    order = np.argsort(2 * trade_row + np.repeat([0, 1], [len(closing), len(end_rows)]), kind="stable")
    trade_starts = np.zeros(count + 1, dtype=np.int64)
    np.cumsum(np.bincount(trade_row, minlength=count), out=trade_starts[1:])
    closed_at_end = np.zeros(count, dtype=bool)
    closed_at_end[end_rows] = True
    open_positions: list[dict[str, float] | None] = [None] * count
    if not config.close_at_end:
        for r in np.flatnonzero(final_qty > 0).tolist():
            open_positions[r] = _open_position(int(last[r]), bar=bar, qty=qty, side=want, entry_price=entry_price,
                                               comm=comm, cash=float(final_cash[r]), last_close=ref)
    return Batch(close=close, initial_capital=float(config.initial_capital), starts=starts, bar=bar, cash=cash,
                 shares=qty * want, end_cash=end_cash, closed_at_end=closed_at_end, skipped=skipped, unsure=unsure,
                 trades={name: column[order] for name, column in trades.items()}, trade_starts=trade_starts,
                 open_positions=open_positions)


def _walk(counts: np.ndarray, starts: np.ndarray, row: np.ndarray, capital: float, comm: float, *,
          cancel: CancelToken | None, exit_price: np.ndarray, entry_price: np.ndarray, denominator: np.ndarray,
          budget: np.ndarray, want: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The sequential part, every row one change a step: per change (row-major, like its inputs)
    the cash after its fills, the shares the entry's budget came to before flooring at zero, and
    the shares bought (0: none wanted, or skipped)."""
    events = len(want)
    # Step layout: step k's events are rows (most changes first) 0..live[k]-1, at off[k] + rank.
    steps = int(counts.max()) if len(counts) else 0
    order = np.argsort(-counts, kind="stable")
    rank = np.empty(len(counts), dtype=np.int64)
    rank[order] = np.arange(len(counts))
    live = len(counts) - np.searchsorted(np.sort(counts), np.arange(steps), side="right")
    off = np.zeros(steps + 1, dtype=np.int64)
    np.cumsum(live, out=off[1:])
    at = off[np.arange(events) - starts[row]] + rank[row]

    def laid(values: np.ndarray) -> np.ndarray:
        out = np.empty_like(values)
        out[at] = values
        return out

    xp, ep, den, bs, side = laid(exit_price), laid(entry_price), laid(denominator), laid(budget), laid(want)
    neg = -side
    cash, sized, qty = np.empty(events), np.empty(events), np.empty(events)
    width = int(live[0]) if steps else 0
    prev_cash, prev_qty, prev_side = np.full(width, float(capital)), np.zeros(width), np.zeros(width)
    t, u = np.empty(width), np.empty(width)
    # A step costs ~15 us however few rows it has; one row's change ~0.7 us in Python floats.
    alone_from = int(np.searchsorted(-live, -_ALONE_BELOW, side="right"))
    for k in range(alone_from):
        if cancel is not None and k % _CANCEL_STEPS == 0:
            cancel.raise_if_cancelled()
        m, a = int(live[k]), int(off[k])
        b = a + m
        c, q, tk, uk = cash[a:b], qty[a:b], t[:m], u[:m]
        # Close what is held: value = qty * price, fee = value * comm, cash += side * value - fee.
        np.multiply(prev_qty[:m], xp[a:b], out=tk)
        np.multiply(tk, comm, out=uk)
        np.multiply(prev_side[:m], tk, out=tk)
        np.subtract(tk, uk, out=tk)
        np.add(prev_cash[:m], tk, out=c)
        # Enter what is wanted: qty = floor(cash * budget share / (price * (1 + comm)) + 1e-9) if > 0;
        # then value = qty * price, commission = value * comm, cash += -value - commission for a
        # long, value - commission for a short. No entry wanted: budget 0, so qty 0 and cash + 0.
        s = sized[a:b]
        np.multiply(c, bs[a:b], out=tk)
        np.divide(tk, den[a:b], out=tk)
        np.add(tk, 1e-9, out=tk)
        np.floor(tk, out=s)
        np.maximum(s, 0.0, out=q)
        np.multiply(q, ep[a:b], out=tk)
        np.multiply(tk, comm, out=uk)
        np.multiply(neg[a:b], tk, out=tk)
        np.subtract(tk, uk, out=tk)
        np.add(c, tk, out=c)
        prev_cash, prev_qty, prev_side = c, q, side[a:b]
    for r in range(int(live[alone_from]) if alone_from < steps else 0):
        # Rows still going after the vectorised steps, each on alone: at steps alone_from..its last.
        if cancel is not None:
            cancel.raise_if_cancelled()
        at_steps = off[alone_from:int(counts[order[r]])] + r
        state = (float(prev_cash[r]), float(prev_qty[r]), float(prev_side[r])) if alone_from else (
            float(capital), 0.0, 0.0)
        cash[at_steps], sized[at_steps], qty[at_steps] = _alone(
            state, comm, xp[at_steps].tolist(), bs[at_steps].tolist(), den[at_steps].tolist(),
            ep[at_steps].tolist(), side[at_steps].tolist())
    return cash[at], sized[at], qty[at]


def _alone(state: tuple[float, float, float], comm: float, xp: list[float], bs: list[float], den: list[float],
           ep: list[float], side: list[float]) -> tuple[list[float], list[float], list[float]]:
    """One row's changes from ``state`` (cash, shares held, their side): a step's operations on Python
    floats, which are the same IEEE doubles. Where a step would go non-finite (``simulate`` raises
    or may), the rest is NaN: the row is unsure."""
    c, q, held_side = state
    cash: list[float] = []
    sized: list[float] = []
    qty: list[float] = []
    for x, b, d, e, w in zip(xp, bs, den, ep, side, strict=True):
        value = q * x
        c = c + (held_side * value - value * comm)
        try:
            raw = math.floor(c * b / d + 1e-9)
        except (ZeroDivisionError, ValueError, OverflowError):
            nan = [math.nan] * (len(xp) - len(cash))
            return cash + nan, sized + nan, qty + nan
        s = float(raw)
        q = s if s > 0 else 0.0
        value = q * e
        c = c + (-w * value - value * comm)
        held_side = w
        cash.append(c)
        sized.append(s)
        qty.append(q)
    return cash, sized, qty


def _trades(*, entry: np.ndarray, exit_price: np.ndarray, exit_bar: np.ndarray, bar: np.ndarray, qty: np.ndarray,
            side: np.ndarray, entry_price: np.ndarray, comm: float) -> dict[str, np.ndarray]:
    """Trades entered at changes ``entry`` and closed at ``exit_price`` on ``exit_bar``, with
    simulate's sums: entry commission = qty * entry price * comm, exit fee = qty * exit price *
    comm, pnl = side * qty * (exit price - entry price) - entry commission - exit fee."""
    size, entry_side, price = qty[entry], side[entry], entry_price[entry]
    entry_comm = size * price * comm
    fee = size * exit_price * comm
    entry_bar = bar[entry]
    return {"entry_bar": entry_bar, "exit_bar": exit_bar, "side": entry_side.astype(np.int64),
            "size": size.astype(np.int64), "entry_price": price, "exit_price": exit_price,
            "pnl": (entry_side * size) * (exit_price - price) - entry_comm - fee,
            "commission": entry_comm + fee, "bars_held": exit_bar - entry_bar}


def _open_position(e: int, *, bar: np.ndarray, qty: np.ndarray, side: np.ndarray, entry_price: np.ndarray,
                   comm: float, cash: float, last_close: float) -> dict[str, float]:
    """What simulate reports of a position entered at change ``e`` and still open at the end."""
    held_side, size, price = int(side[e]), int(qty[e]), float(entry_price[e])
    entry_comm = float(qty[e] * entry_price[e] * comm)
    return {"side": held_side, "size": size, "entry_bar": int(bar[e]), "entry_price": price, "commission": entry_comm,
            "unrealised_pnl": held_side * size * (last_close - price) - entry_comm, "cash": cash}
