"""``monte_carlo``: an op type written from the README's guide (Adding an operation type), for tests only.

It resamples a completed backtest's trades into many equity paths and says how the final return
spreads. Everything the platform does with it comes from the declaration below: its API route, its
admission (a source that is not a completed backtest with trades is refused at submission: no check
on the worker), the read of the source's results (``ctx.results.of``: no blob names), and its result
page and summary line (``view``). It is declared by the tests that use it (:func:`declared`), not on
import, so the rest of the suite's backtest workers never see it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ktrdr.client.results import BacktestResults
from ktrdr.optypes import OpType, Rejected, declare, on, retract
from ktrdr.optypes.backtesting import BACKTEST
from ktrdr.optypes.lookups import Lookups, completed
from ktrdr.optypes.views import Chart, Series, Table, View
from ktrdr.runtime.context import JobContext
from subjects import names

PERCENTILES = (5, 25, 50, 75, 95)
BINS = 20


class MonteCarloParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(description="the op id of a completed backtest whose trades are resampled")
    paths: int = Field(default=1_000, ge=10, le=100_000)
    seed: int = 0

    @field_validator("source")
    @classmethod
    def _an_op_id(cls, v: str) -> str:
        return names.validate_token(v, what="operation id")


class MonteCarloResult(BaseModel):
    source: str
    paths: int
    trades: int
    percentiles: dict[str, float]  # final return, %, by percentile ("p5", ...)
    edges: list[float]  # the histogram of final returns: BINS + 1 edges, %
    counts: list[int]


async def verify_source(params: MonteCarloParams, lookups: Lookups) -> None:
    """The source is a completed backtest that made trades: anything else is refused at submission."""
    source = await completed(lookups, params.source, field="source", of=BACKTEST)
    trades = ((source.result or {}).get("metrics") or {}).get("trades")
    if not trades:
        raise Rejected("source", f"backtest {params.source} made no trades: there is nothing to resample")


def run_monte_carlo(ctx: JobContext, params: MonteCarloParams) -> MonteCarloResult:
    """Each path draws the source's trades with replacement, as many as it made (a plain function:
    numpy work runs in the worker's thread, off its event loop)."""
    source = ctx.call(ctx.results.of(params.source, BacktestResults))
    pnl = source.trades["pnl"].to_numpy(dtype=float)
    capital = float(source.op.params.get("capital") or 100_000.0)
    rng = np.random.default_rng(params.seed)
    finals = np.empty(params.paths)
    for start in range(0, params.paths, 1_000):
        ctx.raise_if_cancelled()
        stop = min(params.paths, start + 1_000)
        finals[start:stop] = rng.choice(pnl, size=(stop - start, len(pnl))).sum(axis=1) / capital * 100.0
        ctx.progress(percentage=100.0 * stop / params.paths, items_done=stop, items_total=params.paths,
                     message=f"{stop} of {params.paths} paths")
    counts, edges = np.histogram(finals, bins=BINS)
    return MonteCarloResult(source=params.source, paths=params.paths, trades=len(pnl),
                            percentiles={f"p{q}": float(np.percentile(finals, q)) for q in PERCENTILES},
                            edges=[float(e) for e in edges], counts=[int(c) for c in counts])


def view(result: MonteCarloResult, document: bytes | None) -> View:
    """Its page: the spread's figures, the histogram of final returns, the percentiles as a table."""
    centres = [(a + b) / 2 for a, b in zip(result.edges, result.edges[1:], strict=False)]
    return View(
        figures={"paths": result.paths, "median %": result.percentiles["p50"], "p5 %": result.percentiles["p5"],
                 "p95 %": result.percentiles["p95"]},
        charts=[Chart(title="Final return of the resampled paths", x=centres, kind="bars", x_label="return %",
                      series=[Series(name="paths", values=[float(c) for c in result.counts])])],
        tables=[Table(title="Percentiles of the final return", columns=["percentile", "return %"],
                      rows=[[k, v] for k, v in result.percentiles.items()])])


MONTE_CARLO: OpType[Any, Any] = OpType(
    name="monte_carlo", params=MonteCarloParams, result=MonteCarloResult, runs=on(names.CAP_BACKTEST_CPU),
    summary="resample a completed backtest's trades into equity paths", verify=verify_source,
    api="/api/v1/montecarlo", view=view)


@contextmanager
def declared() -> Iterator[OpType[Any, Any]]:
    """``monte_carlo`` declared for the duration (before a coordinator starts: its API route is made then)."""
    declare(MONTE_CARLO)
    try:
        yield MONTE_CARLO
    finally:
        retract(MONTE_CARLO)
