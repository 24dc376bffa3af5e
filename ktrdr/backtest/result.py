"""A backtest's result and its JSON form (for the ``results`` Object Store)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ktrdr.backtest.config import BacktestConfig
from ktrdr.backtest.simulator import TRADE_COLUMNS

FORMAT = "ktrdr.backtest.result/1"


@dataclass(kw_only=True)
class BacktestResult:
    strategy: str
    config: BacktestConfig
    timeframe: str | None
    metrics: dict[str, Any]
    index_ns: np.ndarray  # UTC nanoseconds of every bar
    equity: np.ndarray
    benchmark: np.ndarray  # buy-and-hold equity: initial capital * close / first close
    trades: dict[str, np.ndarray]
    open_position: dict[str, Any] | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    # The state it went on from (``subjects.params.CarryIn``, JSON), None when it started flat from capital.
    carry_in: dict[str, Any] | None = None

    @property
    def index(self) -> pd.DatetimeIndex:
        return pd.DatetimeIndex(pd.to_datetime(self.index_ns, utc=True), name="timestamp")

    @property
    def equity_curve(self) -> pd.Series:
        return pd.Series(self.equity, index=self.index, name="equity")

    @property
    def drawdown_pct(self) -> pd.Series:
        peak = np.maximum.accumulate(self.equity)
        return pd.Series(100.0 * (self.equity - peak) / peak, index=self.index, name="drawdown_pct")

    def trades_frame(self) -> pd.DataFrame:
        """One row per closed trade; times are the fill bars' timestamps (last bar for a close at the end).
        A carried-in trade (``entry_bar`` < 0: filled before the first bar) has its carried entry time."""
        t = pd.DataFrame({k: self.trades[k] for k in TRADE_COLUMNS})
        last = len(self.index_ns) - 1
        entry_bar = t["entry_bar"].to_numpy()
        entry_ns = self.index_ns[np.maximum(entry_bar, 0)]
        if (entry_bar < 0).any():
            entry_ns = np.where(entry_bar < 0, self._carried_entry_ns(), entry_ns)
        t.insert(0, "entry_time", pd.to_datetime(entry_ns, utc=True))
        t.insert(1, "exit_time", pd.to_datetime(self.index_ns[np.minimum(t["exit_bar"].to_numpy(), last)], utc=True))
        t["side"] = np.where(t["side"] > 0, "long", "short")
        return t

    def _carried_entry_ns(self) -> int:
        position = (self.carry_in or {}).get("position")
        if not position:
            raise ValueError("a trade entered before the first bar, but no position was carried in")
        return int(pd.Timestamp(position["entry_time"]).as_unit("ns").value)

    def carry_out(self) -> dict[str, Any]:
        """What a backtest going on from this one's end is given (``BacktestParams``): ``capital``, the
        equity it ended with, and ``carry_in``, its cash and open position (none: flat, all cash)."""
        equity = float(self.equity[-1])
        pos = self.open_position
        if pos is None:
            return {"capital": equity, "carry_in": {}}
        entry_bar, n = int(pos["entry_bar"]), len(self.equity)
        entry_ns = int(self.index_ns[entry_bar]) if entry_bar >= 0 else self._carried_entry_ns()
        return {"capital": equity, "carry_in": {"cash": float(pos["cash"]), "position": {
            "side": int(pos["side"]), "size": int(pos["size"]), "entry_price": float(pos["entry_price"]),
            "commission": float(pos["commission"]), "bars_held": n - entry_bar,
            "entry_time": pd.Timestamp(entry_ns, tz="UTC").isoformat()}}}

    def to_json_bytes(self, *, include_curves: bool = True) -> bytes:
        doc: dict[str, Any] = {
            "format": FORMAT, "strategy": self.strategy, "config": self.config.to_dict(),
            "timeframe": self.timeframe, "parameters": self.parameters,
            "metrics": _clean(self.metrics), "open_position": _clean(self.open_position),
            "trades": {k: v.tolist() for k, v in self.trades.items()},
        }
        if self.carry_in is not None:
            doc["carry_in"] = self.carry_in
        if include_curves:
            doc["index_ns"] = self.index_ns.tolist()
            doc["equity"] = self.equity.tolist()
            doc["benchmark"] = self.benchmark.tolist()
        return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()

    @classmethod
    def from_json_bytes(cls, data: bytes) -> BacktestResult:
        return cls.from_doc(json.loads(data))

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> BacktestResult:
        """A result from its stored document, already parsed."""
        if doc.get("format") != FORMAT:
            raise ValueError(f"not a backtest result (format {doc.get('format')!r})")
        trades = {k: np.asarray(doc["trades"][k], dtype=np.int64 if k in _INT_COLUMNS else np.float64)
                  for k in TRADE_COLUMNS}
        return cls(strategy=doc["strategy"], config=BacktestConfig.from_dict(doc["config"]),
                   timeframe=doc["timeframe"], metrics=doc["metrics"], parameters=doc.get("parameters", {}),
                   index_ns=np.asarray(doc.get("index_ns", []), dtype=np.int64),
                   equity=np.asarray(doc.get("equity", []), dtype=np.float64),
                   benchmark=np.asarray(doc.get("benchmark", []), dtype=np.float64),
                   trades=trades, open_position=doc["open_position"], carry_in=doc.get("carry_in"))


_INT_COLUMNS = frozenset({"entry_bar", "exit_bar", "side", "size", "bars_held"})


_PLAIN = frozenset({int, str, bool, type(None)})


def _clean(value: Any) -> Any:
    # JSON has no NaN or infinity; an undefined ratio is null.
    if isinstance(value, dict):
        # Plain values (most of a metrics dict) pass without a call: a sweep cleans every variant's.
        return {k: v if type(v) in _PLAIN or (type(v) is float and math.isfinite(v)) else _clean(v)
                for k, v in value.items()}
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
