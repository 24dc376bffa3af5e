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


@dataclass(kw_only=True)
class Simulation:
    equity: np.ndarray  # cash + position at every bar's close
    shares: np.ndarray  # signed shares held during each bar (after its open's fill)
    trades: dict[str, np.ndarray]  # TRADE_COLUMNS; exit_bar == n for a position closed at the last close
    open_position: dict[str, float] | None = None  # left open at the end (close_at_end=False)
    skipped_entries: int = 0  # entries whose budget did not buy one whole share


def simulate(open_: np.ndarray, close: np.ndarray, wanted: np.ndarray, config: BacktestConfig, *,
             cancel: CancelToken | None = None, report: ChunkReport | None = None) -> Simulation:
    """``wanted[i]`` (+1, 0, -1) is the position asked for after bar ``i``'s close."""
    n = len(close)
    held = np.zeros(n, dtype=np.int8)
    held[1:] = wanted[:-1]  # the last bar's wish has no next open to fill at
    changes = np.flatnonzero(held[1:] != held[:-1]) + 1 if n > 1 else np.empty(0, dtype=np.int64)

    comm, slip = config.commission, config.slippage
    budget_share = config.fraction if config.sizing == "fraction" else 1.0
    cash = float(config.initial_capital)
    shares = 0
    entry_bar = 0
    entry_price = entry_comm = 0.0
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
                         "unrealised_pnl": shares * (float(close[-1]) - entry_price) - entry_comm}
    trades = {k: np.asarray(v, dtype=np.float64 if k in ("entry_price", "exit_price", "pnl", "commission")
                            else np.int64) for k, v in cols.items()}
    return Simulation(equity=equity, shares=position, trades=trades, open_position=open_position,
                      skipped_entries=skipped)

