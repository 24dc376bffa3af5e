"""Results of each operation type, as an op record keeps them (``Operation.result``).

A result is the small summary a record carries; the full output (trades, equity curves, a sweep's
whole ranking) lives in the ``results`` store under the op id. Unknown keys are kept (``extra``):
a newer worker may add a fact that an older reader has no field for.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

Metrics = dict[str, Any]


class Result(BaseModel):
    model_config = ConfigDict(extra="allow")


class DummyResult(Result):
    steps: int
    duration: float


class BacktestSummary(Result):
    strategy: str
    symbol: str
    timeframe: str
    start: str
    end: str
    parameters: dict[str, Any] = Field(default_factory=dict)
    metrics: Metrics = Field(default_factory=dict)
    result_bytes: int = 0
    curves: bool = True
    # Model-driven backtests: the version traded and how its bars relate to the training bars.
    model: str | None = None
    model_trained_on: dict[str, str] | None = None
    in_sample_bars: int | None = None
    # Bars before ``start`` the indicators warmed up on (what the data had of those asked for).
    warmup_bars: int = 0
    # With close_at_end false: what a backtest going on from this one's end is given, ``capital`` (the
    # equity it ended with) and ``carry_in`` (its cash and the position left open; {}: flat). A few numbers.
    carry_out: dict[str, Any] | None = None


class TrainingResult(Result):
    model: str  # name@version
    model_name: str
    model_version: int
    symbol: str
    timeframes: list[str]
    metrics: Metrics = Field(default_factory=dict)


class DataLoadResult(Result):
    symbol: str
    timeframe: str
    mode: str
    segments: int
    no_data_segments: int
    bars_fetched: int
    new_bars: int
    requests: int
    stored_bars: int
    first: str | None = None
    last: str | None = None
    object: str | None = None
    digest: str | None = None


class SweepEntry(Result):
    rank: int
    index: int | None = None  # the variant's position in the grid's combinations
    op_id: str | None = None  # the variant backtested again in full (the best few), else None
    parameters: dict[str, Any]


class SweepResult(Result):
    metric: str
    descending: bool
    objective: dict[str, Any] = Field(default_factory=dict)  # subjects.objective.Objective, in full
    combinations: int
    completed: int
    eligible: int | None = None  # completed variants that meet the objective (None: before objectives)
    failed: int
    cancelled: int
    best: SweepEntry | None = None
    # Why there is no best although variants completed: none met the objective (counted by reason).
    no_best: str | None = None
    top: list[SweepEntry] = Field(default_factory=list)
