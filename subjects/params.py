"""Parameters of each operation type: validated by the coordinator before dispatch (a bad request
is a 422 naming the field, never a failed op) and by the worker again before it runs them."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from subjects.fields import TIMEFRAMES
from subjects.objective import Ranks


class DummyParams(BaseModel):
    """``dummy``: a diagnostic op that every worker type serves."""

    model_config = ConfigDict(extra="forbid")

    duration: float = Field(default=5.0, ge=0, le=86_400, description="seconds of simulated work")
    steps: int = Field(default=10, ge=1, le=100_000)
    fail: bool | str = Field(default=False, description="true or an error message: end failed")


# The bar timeframes of ktrdr.data.timeframes, spelled here so the wire contract needs no domain code.
_SYMBOL = re.compile(r"^[A-Za-z0-9_-][A-Za-z0-9_.-]{0,31}$")
ParamValue = int | float | str | bool
# Bars before a backtest's window that only warm its indicators up: a 200-day average on minute bars
# is under 300,000; more is a mistake, and a memory bill.
MAX_WARMUP_BARS = 500_000


# Bounds of a carried-in position (``CarryIn``). Shares: the largest count a float holds exactly (equity is
# cash + shares x close, in floats). Amounts and prices: a billion billion, past any account, far inside a
# float. Bars held: more than 1,900 years of minute bars.
MAX_CARRIED_SHARES = 2**53
MAX_CARRIED_AMOUNT = 1e18
MAX_CARRIED_BARS = 1_000_000_000


class CarriedPosition(BaseModel):
    """A position another backtest left open at its end, held from this one's first bar."""

    model_config = ConfigDict(extra="forbid")

    side: Literal[-1, 1] = Field(description="1: long, -1: short")
    size: int = Field(ge=1, le=MAX_CARRIED_SHARES, description="whole shares")
    entry_price: float = Field(gt=0, le=MAX_CARRIED_AMOUNT, allow_inf_nan=False,
                               description="its fill price, slippage included")
    commission: float = Field(ge=0, le=MAX_CARRIED_AMOUNT, allow_inf_nan=False, description="paid on entry")
    entry_time: datetime = Field(description="the bar whose open filled it (UTC)")
    bars_held: int = Field(ge=1, le=MAX_CARRIED_BARS, description="bars it was held before this window")

    @field_validator("entry_time")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        return v.replace(tzinfo=UTC) if v.tzinfo is None else v


class CarryIn(BaseModel):
    """The state another backtest ended in, for this one to go on from (a walk-forward's carried folds):
    flat (no ``position``: ``capital`` is all cash), or ``position`` with ``cash`` beside it.

    The backtest starts in that state and its strategy decides from the bar before its window (its
    last warm-up bar), filled at the window's first open: a rule-based strategy walks its rules, a
    model its decisions, from the carried side (it holds what it holds: a HOLD keeps it, and the
    warm-up bars' signals do not replay a position of their own). Wanted as held, the position is
    kept, and its trade, when closed, keeps its entry price and commission (``entry_bar`` =
    -``bars_held``: before the window); otherwise it is closed (or reversed) at that open, paying the
    exit. With no bar before the window the position is kept through the first bar. An entry that
    was skipped (not one whole share affordable) is carried as flat.
    """

    model_config = ConfigDict(extra="forbid")

    position: CarriedPosition | None = None
    cash: float | None = Field(default=None, ge=-MAX_CARRIED_AMOUNT, le=MAX_CARRIED_AMOUNT, allow_inf_nan=False,
                               description="the cash held beside the position; only with one")

    @model_validator(mode="after")
    def _cash_with_position(self) -> CarryIn:
        if self.position is not None and self.cash is None:
            raise ValueError("cash: give the cash held beside the carried position")
        if self.position is None and self.cash is not None:
            raise ValueError("cash: only with a position; carried flat, the capital is all cash")
        return self


class BacktestParams(BaseModel):
    """``backtesting``: one strategy on one symbol's bars between two instants."""

    model_config = ConfigDict(extra="forbid")

    strategy: str = Field(min_length=1, description="packaged name, file name in the strategies dir or "
                                                     "YAML text; never a path")
    symbol: str
    timeframe: str
    start: datetime | None = Field(default=None, description="first bar (UTC); none: the first stored")
    end: datetime | None = Field(default=None, description="last bar (UTC); none: the last stored")
    capital: float = Field(default=100_000.0, gt=0)
    commission: float = Field(default=0.001, ge=0, lt=1)
    slippage: float = Field(default=0.0005, ge=0, lt=1)
    sizing: Literal["fraction", "all_cash"] = "fraction"
    fraction: float = Field(default=0.25, gt=0, le=1)
    close_at_end: bool = True
    parameters: dict[str, ParamValue] = Field(default_factory=dict, description="strategy parameter overrides")
    model: str | None = Field(default=None, description="neuro-fuzzy: the model as name@version")
    # Equity curves are most of a stored result; a sweep's children leave them out by default.
    include_curves: bool = True
    warmup_bars: int = Field(default=0, ge=0, le=MAX_WARMUP_BARS,
                             description="bars before start that only warm the indicators up (no fills, no equity); "
                                         "fewer when the data begins sooner")
    carry_in: CarryIn | None = Field(default=None, description="go on from where another backtest ended (its cash "
                                                               "and open position); capital: the equity it ended with")

    @field_validator("symbol")
    @classmethod
    def _symbol(cls, v: str) -> str:
        if not _SYMBOL.match(v):
            raise ValueError(f"invalid symbol {v!r}: use letters, digits, '.', '_' or '-'")
        return v

    @field_validator("timeframe")
    @classmethod
    def _timeframe(cls, v: str) -> str:
        if v not in TIMEFRAMES:
            raise ValueError(f"unknown timeframe {v!r}; one of {', '.join(TIMEFRAMES)}")
        return v

    @field_validator("start", "end")
    @classmethod
    def _utc(cls, v: datetime | None) -> datetime | None:
        return v.replace(tzinfo=UTC) if v is not None and v.tzinfo is None else v

    @field_validator("end")
    @classmethod
    def _after_start(cls, v: datetime | None, info: ValidationInfo) -> datetime | None:
        start = info.data.get("start")
        if v is not None and start is not None and v <= start:
            raise ValueError(f"end {v.isoformat()} must be after start {start.isoformat()}")
        return v

    @field_validator("carry_in")
    @classmethod
    def _entered_before_start(cls, v: CarryIn | None, info: ValidationInfo) -> CarryIn | None:
        start = info.data.get("start")
        if v is not None and v.position is not None and start is not None and v.position.entry_time >= start:
            raise ValueError(f"the carried position was entered at {v.position.entry_time.isoformat()}, not before "
                             f"start {start.isoformat()}")
        return v


MAX_SWEEP_COMBINATIONS = 10_000
# A sweep's block: variants one child evaluates together (sized from the live workers' slots).
MAX_BLOCK_VARIANTS = 2_000


class SweepParams(BacktestParams, Ranks):
    """``sweep``: every combination of ``grid``, evaluated in blocks, ranked by ``objective``.

    ``parameters`` holds overrides every variant shares; each combination is applied on top.
    ``block_size``: variants per child (none: a few blocks per live worker slot). The best
    ``full_results`` variants are backtested again in full (equity curve and trades).
    """

    grid: dict[str, list[ParamValue]] = Field(min_length=1)
    top: int = Field(default=10, ge=1, le=1000, description="best variants kept in the op result")
    block_size: int | None = Field(default=None, ge=1, le=MAX_BLOCK_VARIANTS, description="variants per child")
    full_results: int = Field(default=1, ge=0, le=100, description="best variants backtested again in full")
    include_curves: bool = False

    @field_validator("carry_in")
    @classmethod
    def _starts_flat(cls, v: CarryIn | None) -> CarryIn | None:
        if v is not None:
            raise ValueError("a sweep's variants all start flat from capital; carry_in is for one backtest")
        return v

    @field_validator("grid")
    @classmethod
    def _grid(cls, v: dict[str, list[ParamValue]]) -> dict[str, list[ParamValue]]:
        count = 1
        for name, values in v.items():
            if not values:
                raise ValueError(f"parameter {name!r} has no values")
            count *= len(values)
        if count > MAX_SWEEP_COMBINATIONS:
            raise ValueError(f"{count} combinations; at most {MAX_SWEEP_COMBINATIONS}")
        return v

    def child_params(self, combination: dict[str, ParamValue]) -> dict[str, object]:
        """The ``backtesting`` params of one combination (JSON-ready)."""
        base = self.model_dump(mode="json", exclude=set(SweepParams.model_fields) - set(BacktestParams.model_fields))
        base["parameters"] = {**self.parameters, **combination}
        return base
