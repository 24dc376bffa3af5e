"""``backtesting``: one strategy on one symbol's bars, on a backtest worker."""

from __future__ import annotations

from typing import Any

from ktrdr.backtest.checks import RequestProblem, check_strategy
from ktrdr.optypes.defn import OpType, Rejected, declare, on
from ktrdr.optypes.headlines import parameters, performance
from ktrdr.optypes.lookups import Lookups, stored_bars
from subjects import names
from subjects.params import BacktestParams
from subjects.results import BacktestSummary


def admit_backtest(params: BacktestParams) -> BacktestParams:
    """The strategy must load with its overrides: the loader the workers use, so a job that
    skipped admission fails alike."""
    try:
        check_strategy(params.strategy, params.parameters)
    except RequestProblem as exc:
        raise Rejected(exc.field, exc.message) from None
    return params


async def verify_bars(params: BacktestParams, lookups: Lookups) -> None:
    """The bars it runs on are stored, between its start and end: refused at submission naming what
    is stored, rather than failed on a worker. (A sweep and a walk-forward check theirs the same way;
    their children, made from admitted params, are not checked again.)"""
    await stored_bars(lookups, symbol=params.symbol, timeframes=[params.timeframe], start=params.start,
                      end=params.end)


def headline(result: dict[str, Any]) -> str:
    """``return +4.21 %, Sharpe 0.83, max drawdown -7.90 %, 42 trades; fast=10, slow=30``."""
    text = performance(result["metrics"])
    chosen = result.get("parameters") or {}
    if result.get("model"):
        text += f"; model {result['model']}"
    return text + (f"; {parameters(chosen)}" if chosen else "")


BACKTEST = declare(OpType(
    name="backtesting", params=BacktestParams, result=BacktestSummary, runs=on(names.CAP_BACKTEST_CPU),
    summary="one strategy on one symbol's bars; full result in the results store",
    admit=admit_backtest, verify=verify_bars, api="/api/v1/backtests", cli="ktrdr backtest run", headline=headline))
