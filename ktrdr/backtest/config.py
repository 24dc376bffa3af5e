"""Backtest settings (defaults are the first ktrdr's)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

from ktrdr.data.timeframes import validate_timeframe

Sizing = Literal["fraction", "all_cash"]


@dataclass(frozen=True, kw_only=True)
class BacktestConfig:
    initial_capital: float = 100_000.0
    commission: float = 0.001  # fraction of traded value, charged on entry and on exit
    slippage: float = 0.0005  # buys fill at open * (1 + slippage), sells at open * (1 - slippage)
    # "fraction": spend ``fraction`` of equity per entry; "all_cash": all available cash. Both buy
    # whole shares: floor(budget / (fill price * (1 + commission))).
    sizing: Sizing = "fraction"
    fraction: float = 0.25
    close_at_end: bool = True  # False: a position open at the end stays open, marked to market
    timeframe: str | None = None  # for annualisation; inferred from the bars when None
    symbol: str = ""

    def __post_init__(self) -> None:
        if self.initial_capital <= 0:
            raise ValueError("initial_capital must be > 0")
        if not 0 <= self.commission < 1 or not 0 <= self.slippage < 1:
            raise ValueError("commission and slippage must be in [0, 1)")
        if self.sizing not in ("fraction", "all_cash"):
            raise ValueError(f"sizing must be 'fraction' or 'all_cash', got {self.sizing!r}")
        if not 0 < self.fraction <= 1:
            raise ValueError("fraction must be in (0, 1]")
        if self.timeframe is not None:
            validate_timeframe(self.timeframe)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BacktestConfig:
        return cls(**data)
