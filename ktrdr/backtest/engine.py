"""``run_backtest``: indicators -> signals -> fills -> metrics, all vectorised over bars."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ktrdr.backtest.config import BacktestConfig
from ktrdr.backtest.metrics import CurveStats, curve_stats, metrics_from
from ktrdr.backtest.result import BacktestResult
from ktrdr.backtest.simulator import Opening, Simulation, simulate
from ktrdr.cancel import CancelToken
from ktrdr.data.timeframes import infer_timeframe, periods_per_year
from ktrdr.progress import ProgressFn
from ktrdr.strategy import (
    NeuroFuzzyStrategy,
    RuleStrategy,
    Strategy,
    generate_signals,
    load_strategy,
    load_strategy_file,
    target_positions,
)
from ktrdr.strategy.signals import IndicatorCache, Signals
from subjects.params import CarryIn

# Share of the progress bar each phase takes; the simulation is the part whose length varies.
_SIGNALS_PCT = 10.0
_SIM_PCT = 85.0


def run_backtest(bars: pd.DataFrame, strategy: Strategy | str | Path, config: BacktestConfig | None = None, *,
                 cancel: CancelToken | None = None, progress: ProgressFn | None = None,
                 wanted: np.ndarray | None = None, cache: IndicatorCache | None = None,
                 trade_from: int = 0, carry_in: CarryIn | None = None) -> BacktestResult:
    """Backtest ``strategy`` on ``bars`` (UTC-indexed OHLCV).

    ``trade_from``: the bars before it only warm the indicators up (``ktrdr.strategy.warmup``): the
    strategy's positions are computed on every bar, and the backtest (fills, equity, metrics, the
    result's bars) starts at that bar, holding what the strategy wants there. ``wanted``, when
    given, covers every bar too.

    ``wanted`` (+1/0/-1 after each bar's close) replaces the strategy's own signals: a neuro-fuzzy
    strategy's decisions come from its trained model, computed elsewhere. ``cache``, an
    :class:`IndicatorCache` made for these very ``bars``, lets backtests of one frame share indicators
    (see :func:`ktrdr.backtest.block.run_block`); the result is the same with or without it.

    ``carry_in``: start in the state another backtest ended in instead of flat (see
    :class:`subjects.params.CarryIn`); ``config.initial_capital`` is then the equity it ended with,
    checked against the last close before the window when there is one. A rule-based strategy's
    rules walk from the carried side, from the bar before the window on; ``wanted``, when given,
    is the caller's to have walked so.
    """
    config = config or BacktestConfig()
    if isinstance(strategy, Path):
        strategy = load_strategy_file(strategy)  # the caller's own file
    elif not isinstance(strategy, RuleStrategy | NeuroFuzzyStrategy):
        strategy = load_strategy(strategy)
    if len(bars) == 0:
        raise ValueError("no bars to backtest")
    if not 0 <= trade_from < len(bars):
        raise ValueError(f"trade_from {trade_from} is not one of the {len(bars)} bars")
    warm = bars
    if trade_from:  # a frame sliced for nothing costs a tenth of a small backtest
        bars = bars.iloc[trade_from:]
    n = len(bars)
    index = pd.DatetimeIndex(bars.index)
    timeframe = _timeframe(index, config)

    def report(pct: float, step: str, done: int, context: dict[str, object] | None = None) -> None:
        if progress is not None:
            progress(percentage=pct, step=step, items_done=done, items_total=n, context=context)

    report(0.0, "signals", 0)
    long_only = not getattr(strategy, "allow_short", True)
    side = 0 if carry_in is None or carry_in.position is None else carry_in.position.side
    before: int = side  # the position wanted after the bar before the window (carry_in only)
    if wanted is None:
        if not isinstance(strategy, RuleStrategy):
            raise ValueError(f"strategy {strategy.name!r} is neuro-fuzzy: pass the model's decisions as wanted=")
        if carry_in is None:
            wanted = _rule_positions(strategy, warm, cancel=cancel, cache=cache)[trade_from:]
        else:
            # It holds what was carried in: its rules walk from there, from the bar before the window
            # on; the warm-up bars' own signals would replay a position it may not hold.
            first = max(trade_from - 1, 0)
            signals = generate_signals(strategy, warm, cancel=cancel, cache=cache)
            walked = target_positions(Signals(entry_long=signals.entry_long[first:],
                                              exit_long=signals.exit_long[first:],
                                              entry_short=signals.entry_short[first:],
                                              exit_short=signals.exit_short[first:]),
                                      cancel=cancel, state=max(side, 0) if long_only else side)
            before, wanted = (int(walked[0]), walked[1:]) if trade_from else (side, walked)
    elif len(wanted) != len(warm):
        raise ValueError(f"wanted has {len(wanted)} values for {len(warm)} bars")
    else:
        given = np.asarray(wanted)
        wanted = np.sign(given[trade_from:]).astype(np.int8)
        if long_only:
            wanted = np.maximum(wanted, 0)
        if carry_in is not None and trade_from:
            before = int(np.sign(given[trade_from - 1]))
    opening = None if carry_in is None else _opening(carry_in, max(before, 0) if long_only else before, config,
                                                     warm["close"].iloc[trade_from - 1] if trade_from else None)

    open_, close = _prices(bars)
    index_ns = index.as_unit("ns").asi8

    def chunk_done(done: int, equity: float, trades: int) -> None:
        report(_SIGNALS_PCT + _SIM_PCT * done / n, "simulation", done,
               {"date": index[done - 1].isoformat(), "equity": equity, "trades": trades})

    sim = simulate(open_, close, wanted, config, cancel=cancel, report=chunk_done if progress else None,
                   opening=opening)

    metrics = _metrics(sim, config=config, close=close, timeframe=timeframe, ppy=periods_per_year(timeframe))
    benchmark = config.initial_capital * close / close[0]
    report(100.0, "done", n, {"date": index[-1].isoformat(), "equity": float(sim.equity[-1]),
                              "trades": metrics["trades"]})
    return BacktestResult(strategy=strategy.name, config=config, timeframe=timeframe, metrics=metrics,
                          index_ns=index_ns, equity=sim.equity, benchmark=benchmark, trades=sim.trades,
                          open_position=sim.open_position,
                          carry_in=None if carry_in is None else carry_in.model_dump(mode="json"),
                          parameters={k: _param_value(strategy, p.path) for k, p in strategy.parameters.items()})


# The steps below are shared with the block evaluator (ktrdr.backtest.block), which runs each once per
# block where it depends on the bars alone: one definition keeps a block's metrics those of run_backtest.

def _opening(carry_in: CarryIn, wanted_before: int, config: BacktestConfig, last_close: float | None) -> Opening:
    """The simulation's starting state from ``carry_in``; ``last_close``: the close before the window."""
    pos = carry_in.position
    if pos is None:
        return Opening(cash=config.initial_capital, wanted_before=wanted_before)
    assert carry_in.cash is not None  # CarryIn: with a position, its cash
    if last_close is not None:
        # The same sum the run it goes on from ended with: equity = cash + shares x close.
        marked = carry_in.cash + pos.side * pos.size * float(last_close)
        if not math.isclose(marked, config.initial_capital, rel_tol=1e-9):
            raise ValueError(f"capital {config.initial_capital!r} is not the equity carried in: cash {carry_in.cash!r} "
                             f"+ {pos.side * pos.size} shares x {float(last_close)!r} (the last close before the "
                             f"window) = {marked!r}; give the equity the backtest it goes on from ended with")
    return Opening(cash=carry_in.cash, side=pos.side, size=pos.size, entry_price=pos.entry_price,
                   commission=pos.commission, entry_bar=-pos.bars_held, wanted_before=wanted_before)


def _timeframe(index: pd.DatetimeIndex, config: BacktestConfig) -> str:
    return config.timeframe or infer_timeframe(index) or "1d"


def _prices(bars: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return bars["open"].to_numpy(dtype=np.float64), bars["close"].to_numpy(dtype=np.float64)


def _rule_positions(strategy: RuleStrategy, bars: pd.DataFrame, *, cancel: CancelToken | None,
                    cache: IndicatorCache | None) -> np.ndarray:
    return target_positions(generate_signals(strategy, bars, cancel=cancel, cache=cache), cancel=cancel)


def _metrics(sim: Simulation, *, config: BacktestConfig, close: np.ndarray, timeframe: str,
             ppy: float) -> dict[str, Any]:
    return _metrics_of(curve_stats(sim.equity, int(np.count_nonzero(sim.shares))), pnl=sim.trades["pnl"],
                       bars_held=sim.trades["bars_held"], skipped=sim.skipped_entries, config=config, close=close,
                       timeframe=timeframe, ppy=ppy)


def _metrics_of(curve: CurveStats, *, pnl: np.ndarray, bars_held: np.ndarray, skipped: int, config: BacktestConfig,
                close: np.ndarray, timeframe: str, ppy: float) -> dict[str, Any]:
    """A run's metrics from its curve's reductions and its trades (however the curve was reduced)."""
    metrics = metrics_from(curve, pnl=pnl, bars_held=bars_held, initial_capital=config.initial_capital, close=close,
                           periods_per_year=ppy, annualization_basis=_basis(timeframe, ppy))
    metrics["skipped_entries"] = skipped
    return metrics


def _basis(timeframe: str, ppy: float) -> str:
    """What a result says its annualisation is based on."""
    return f"{timeframe} bars: {ppy:g} per year"


def _param_value(strategy: Strategy, path: str) -> object:
    node: object = strategy.model_dump()
    for part in path.split("."):
        node = node[part] if isinstance(node, dict) else None
    return node
