"""The fill simulator: turns wanted positions into fills, trades and an equity curve.

Vectorised over bars; the only Python loop runs over position changes. A position wanted after
bar ``i``'s close is filled at bar ``i + 1``'s open, so between two changes cash and shares are
constant and equity is ``cash + shares * close`` for a whole run of bars at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ktrdr.backtest.config import BacktestConfig
from ktrdr.cancel import CancelToken

# A chunk is at most this many bars or position changes; either bound keeps one chunk well
# under the 50 ms between cancellation checks (about 1 us per change, 0.1 us per bar).
CHUNK_BARS = 131_072
CHUNK_CHANGES = 16_384

TRADE_COLUMNS = ("entry_bar", "exit_bar", "side", "size", "entry_price", "exit_price", "pnl", "commission",
                 "bars_held")

ChunkReport = Callable[[int, float, int], None]  # (bars done, equity at the last of them, trades so far)


@dataclass(frozen=True, kw_only=True)
class Opening:
    """The state a simulation starts in when it goes on from another one's end (a carried position).

    ``cash`` beside ``side`` (+1, -1; 0: flat) x ``size`` shares, filled at ``entry_price`` paying
    ``commission``; ``entry_bar`` counts from this run's first bar, so it is negative (-k: filled k
    bars before it) and a trade closed here has ``bars_held`` since its real entry. ``wanted_before``:
    the position wanted after the bar before the first one, filled at the first bar's open like any
    wish: the position is kept when it is wanted, else closed (or reversed) there, paying the exit.
    """

    cash: float
    side: int = 0
    size: int = 0
    entry_price: float = 0.0
    commission: float = 0.0
    entry_bar: int = 0
    wanted_before: int = 0

    def __post_init__(self) -> None:
        if self.side not in (-1, 0, 1) or self.wanted_before not in (-1, 0, 1):
            raise ValueError(f"side and wanted_before are -1, 0 or 1, got {self.side!r} and {self.wanted_before!r}")
        if not math.isfinite(self.cash):
            raise ValueError(f"cash must be finite, got {self.cash!r}")
        if (self.side == 0) != (self.size == 0) or self.size < 0:
            raise ValueError(f"a carried position has a side and a size > 0 (flat: both 0), got side {self.side}, "
                             f"size {self.size}")
        if self.side and not (self.entry_bar < 0 and self.entry_price > 0 and self.commission >= 0):
            raise ValueError(f"a carried position was entered before the first bar (entry_bar < 0, got "
                             f"{self.entry_bar}) at a price > 0 (got {self.entry_price}) paying a commission >= 0")


@dataclass(kw_only=True)
class Simulation:
    equity: np.ndarray  # cash + position at every bar's close
    shares: np.ndarray  # signed shares held during each bar (after its open's fill)
    trades: dict[str, np.ndarray]  # TRADE_COLUMNS; exit_bar == n for a position closed at the last close
    # Left open at the end (close_at_end=False), with the cash beside it: what a run going on needs.
    open_position: dict[str, float] | None = None
    skipped_entries: int = 0  # entries whose budget did not buy one whole share


def held_positions(wanted: np.ndarray, wanted_before: int = 0) -> np.ndarray:
    """The position held during each bar: the one wanted after the bar before (filled at this bar's
    open); ``wanted_before`` for the first bar."""
    held = np.zeros(len(wanted), dtype=np.int8)
    held[1:] = wanted[:-1]  # the last bar's wish has no next open to fill at
    held[:1] = wanted_before
    return held


def change_bars(held: np.ndarray) -> np.ndarray:
    """The bars at whose open the held position changes (after the first bar)."""
    return np.flatnonzero(held[1:] != held[:-1]) + 1 if len(held) > 1 else np.empty(0, dtype=np.int64)


def simulate(open_: np.ndarray, close: np.ndarray, wanted: np.ndarray, config: BacktestConfig, *,
             cancel: CancelToken | None = None, report: ChunkReport | None = None,
             opening: Opening | None = None) -> Simulation:
    """``wanted[i]`` (+1, 0, -1) is the position asked for after bar ``i``'s close. The run starts
    flat with ``config.initial_capital`` in cash, or in ``opening``'s state."""
    n = len(close)
    if len(wanted) != n:
        raise ValueError(f"wanted has {len(wanted)} values for {n} bars")
    held = held_positions(wanted, 0 if opening is None else opening.wanted_before)
    changes = change_bars(held)

    comm, slip = config.commission, config.slippage
    budget_share = config.fraction if config.sizing == "fraction" else 1.0
    cash = float(config.initial_capital)
    shares = 0
    entry_bar = 0
    entry_price = entry_comm = 0.0
    if opening is not None:
        cash, shares = float(opening.cash), opening.side * opening.size
        entry_bar, entry_price, entry_comm = opening.entry_bar, float(opening.entry_price), float(opening.commission)
        if opening.wanted_before != opening.side:  # filled at the first open, as any change
            changes = np.concatenate((np.zeros(1, dtype=changes.dtype), changes))
    cols: dict[str, list[float]] = {c: [] for c in TRADE_COLUMNS}
    skipped = 0
    equity = np.empty(n)
    position = np.empty(n, dtype=np.int64)
    # Only the bars where the position changes are visited: convert just those to Python values
    # (a whole year of hourly bars, twice, was a third of a short backtest).
    change_open = open_[changes].tolist()
    change_want = held[changes].tolist()

    def close_position(bar: int, exit_bar: int, ref_price: float) -> None:
        nonlocal cash, shares
        side = 1 if shares > 0 else -1
        qty = abs(shares)
        price = ref_price * (1 - slip) if side > 0 else ref_price * (1 + slip)
        value = qty * price
        fee = value * comm
        cash += side * value - fee
        pnl = side * qty * (price - entry_price) - entry_comm - fee
        for key, val in (("entry_bar", entry_bar), ("exit_bar", exit_bar), ("side", side), ("size", qty),
                         ("entry_price", entry_price), ("exit_price", price), ("pnl", pnl),
                         ("commission", entry_comm + fee), ("bars_held", exit_bar - entry_bar)):
            cols[key].append(val)
        shares = 0

    a = 0
    while a < n:
        if cancel is not None:
            cancel.raise_if_cancelled()
        b = min(a + CHUNK_BARS, n)
        lo, hi = np.searchsorted(changes, [a, b])
        if hi - lo > CHUNK_CHANGES:
            hi = lo + CHUNK_CHANGES
            b = int(changes[hi])
        seg_start, seg_cash, seg_shares = [a], [cash], [shares]
        for j, o, want in zip(changes[lo:hi].tolist(), change_open[lo:hi], change_want[lo:hi], strict=True):
            if shares:
                close_position(j, j, o)
            if want:
                price = o * (1 + slip) if want > 0 else o * (1 - slip)
                # The tiny epsilon keeps an exact fit (budget == qty * cost) from flooring one share short.
                qty = math.floor(cash * budget_share / (price * (1 + comm)) + 1e-9)
                if qty > 0:
                    value = qty * price
                    entry_comm = value * comm
                    cash += -value - entry_comm if want > 0 else value - entry_comm
                    shares = qty * want
                    entry_bar, entry_price = j, price
                else:
                    skipped += 1
            seg_start.append(j)
            seg_cash.append(cash)
            seg_shares.append(shares)
        lengths = np.diff(np.append(seg_start, b))
        run_cash = np.repeat(seg_cash, lengths)
        run_shares = np.repeat(np.asarray(seg_shares, dtype=np.int64), lengths)
        position[a:b] = run_shares
        equity[a:b] = run_cash + run_shares * close[a:b]
        if report is not None:
            report(b, float(equity[b - 1]), len(cols["pnl"]))
        a = b

    open_position = None
    if shares and config.close_at_end:
        close_position(n - 1, n, float(close[-1]))
        equity[-1] = cash
    elif shares:
        open_position = {"side": 1 if shares > 0 else -1, "size": abs(shares), "entry_bar": entry_bar,
                         "entry_price": entry_price, "commission": entry_comm,
                         "unrealised_pnl": shares * (float(close[-1]) - entry_price) - entry_comm, "cash": cash}
    trades = {k: np.asarray(v, dtype=np.float64 if k in ("entry_price", "exit_price", "pnl", "commission")
                            else np.int64) for k, v in cols.items()}
    return Simulation(equity=equity, shares=position, trades=trades, open_position=open_position,
                      skipped_entries=skipped)

