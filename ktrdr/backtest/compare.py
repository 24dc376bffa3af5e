"""Backtests side by side: their metrics in one table and their equity curves on one scale.

What a comparison holds is computed from the stored results alone (``BacktestResult`` documents),
so the CLI (reading the ``results`` store) and the status API give the same numbers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ktrdr.backtest.result import BacktestResult

MAX_COMPARED = 10
# The metrics a comparison lists first (the rest follow in the order the first result has them).
LEADING = ("total_return_pct", "annualized_return_pct", "sharpe_ratio", "sortino_ratio", "max_drawdown_pct",
           "volatility_pct", "calmar_ratio", "trades", "win_rate", "profit_factor", "exposure",
           "buy_and_hold_return_pct")


Document = bytes | Mapping[str, Any]  # a stored backtest result, as stored or parsed


def _parsed(documents: Mapping[str, Document]) -> dict[str, Any]:
    return {op_id: json.loads(d) if isinstance(d, bytes) else d for op_id, d in documents.items()}


def compare(documents: Mapping[str, Document]) -> dict[str, Any]:
    """``documents``: each op id's stored backtest result. Returns ``runs`` (what each was: strategy,
    symbol, timeframe, parameters, first and last bar) and ``metrics`` (name -> value per op id, in
    the order given), every metric any of them has."""
    docs = _parsed(documents)
    runs = {op_id: {"strategy": doc.get("strategy"), "symbol": (doc.get("config") or {}).get("symbol"),
                    "timeframe": doc.get("timeframe"), "parameters": doc.get("parameters") or {},
                    "start": _time(doc, 0), "end": _time(doc, -1)} for op_id, doc in docs.items()}
    names = list(dict.fromkeys(name for doc in docs.values() for name in doc.get("metrics") or {}))
    ordered = [m for m in LEADING if m in names] + [m for m in names if m not in LEADING]
    table = {name: {op_id: (doc.get("metrics") or {}).get(name) for op_id, doc in docs.items()} for name in ordered}
    return {"runs": runs, "metrics": table}


def growth_curves(documents: Mapping[str, Document]) -> dict[str, tuple[list[int], list[float]]]:
    """Each backtest's equity as a percentage of its starting capital (curves of different capital
    compare), by bar time in ns. A result stored without its curve is left out."""
    out: dict[str, tuple[list[int], list[float]]] = {}
    for op_id, doc in _parsed(documents).items():
        result = BacktestResult.from_doc(doc)
        if len(result.equity) and len(result.index_ns) == len(result.equity):
            start = float(result.config.initial_capital) or float(result.equity[0])
            out[op_id] = (result.index_ns.tolist(), (100.0 * result.equity / start).tolist())
    return out


def _time(doc: Mapping[str, Any], at: int) -> str | None:
    import pandas as pd

    index = doc.get("index_ns") or []
    return pd.Timestamp(int(index[at]), tz="UTC").isoformat() if index else None
