"""``data_load``: a symbol's bars from Interactive Brokers into the shared ``data`` store."""

from __future__ import annotations

from typing import Any

from ktrdr.optypes.defn import OpType, declare, on
from subjects import names
from subjects.data import DataLoadParams
from subjects.results import DataLoadResult


def headline(result: dict[str, Any]) -> str:
    """``AAPL 1h: 1,234 new bars (5,000 stored, 2024-01-02 .. 2024-06-28) in 12 requests``."""
    span = f", {result['first'][:10]} .. {result['last'][:10]}" if result.get("first") and result.get("last") else ""
    return (f"{result['symbol']} {result['timeframe']}: {result['new_bars']:,} new bars ({result['stored_bars']:,} "
            f"stored{span}) in {result['requests']:,} requests")


DATA_LOAD = declare(OpType(
    name="data_load", params=DataLoadParams, result=DataLoadResult, runs=on(names.CAP_DATA_IB),
    summary="download bars from IB (tail, backfill or full) and publish them to the data store",
    cli="ktrdr data fetch", headline=headline))
