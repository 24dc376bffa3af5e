"""``backtest_block``: one block of a sweep's variants, evaluated together on a backtest worker.

A sweep's children are blocks, not single backtests: one data load per block, each distinct
indicator computed once for the whole block (``ktrdr.backtest.block``), and one columnar object of
every variant's parameters and metrics in the ``results`` store under the block's id. Metrics are
the ones a lone backtest of that variant gives, exactly. The block names its variants by their
position in the grid's combinations (``first`` to ``stop``), so its params stay small however many
variants it holds.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, field_validator, model_validator

from ktrdr.backtest.sweep import combinations_between
from ktrdr.optypes.defn import OpType, declare, on
from subjects import names
from subjects.objective import Ranks
from subjects.params import MAX_BLOCK_VARIANTS, MAX_SWEEP_COMBINATIONS, BacktestParams, CarryIn, ParamValue
from subjects.results import Result


class BacktestBlockParams(BacktestParams, Ranks):
    grid: dict[str, list[ParamValue]] = Field(min_length=1)
    first: int = Field(ge=0, description="the block's first variant: its position in the grid's combinations")
    stop: int = Field(gt=0, description="one past the block's last variant")
    top: int = Field(default=0, ge=0, le=1000, description="the block's best variants named in its result")
    include_curves: bool = False

    @field_validator("carry_in")
    @classmethod
    def _starts_flat(cls, v: CarryIn | None) -> CarryIn | None:
        if v is not None:
            raise ValueError("a block's variants all start flat from capital; carry_in is for one backtest")
        return v

    @model_validator(mode="after")
    def _inside_the_grid(self) -> BacktestBlockParams:
        count = 1
        for values in self.grid.values():
            count *= len(values)
        if count > MAX_SWEEP_COMBINATIONS:
            raise ValueError(f"{count} combinations; at most {MAX_SWEEP_COMBINATIONS}")
        if not self.first < self.stop <= count:
            raise ValueError(f"variants {self.first}..{self.stop} are not inside the grid's {count} combinations")
        if self.stop - self.first > MAX_BLOCK_VARIANTS:
            raise ValueError(f"{self.stop - self.first} variants; a block holds at most {MAX_BLOCK_VARIANTS}")
        return self

    def variants(self) -> list[dict[str, ParamValue]]:
        return list(combinations_between(self.grid, self.first, self.stop))


class BlockSummary(Result):
    first: int
    stop: int
    variants: int
    completed: int
    failed: int
    result_bytes: int
    # The block's best ``top`` by its objective (only variants that meet it), best first, ties in
    # grid order: the sweep's best ``top`` are among its blocks' (how the sweep picks what to
    # backtest in full before reading every block's result).
    top: list[dict[str, Any]] = Field(default_factory=list)  # {"index", "parameters", "value"}
    warmup_bars: int = 0  # bars before the block's window its indicators warmed up on


BACKTEST_BLOCK = declare(OpType(
    name="backtest_block", params=BacktestBlockParams, result=BlockSummary, runs=on(names.CAP_BACKTEST_CPU),
    summary="a block of a sweep's variants on one worker: shared data and indicators, one columnar result"))
