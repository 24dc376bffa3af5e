"""``data_load``: a symbol's bars from Interactive Brokers into the shared ``data`` store."""

from __future__ import annotations

from ktrdr.optypes.defn import OpType, declare, on
from subjects import names
from subjects.data import DataLoadParams
from subjects.results import DataLoadResult

DATA_LOAD = declare(OpType(
    name="data_load", params=DataLoadParams, result=DataLoadResult, runs=on(names.CAP_DATA_IB),
    summary="download bars from IB (tail, backfill or full) and publish them to the data store",
    cli="ktrdr data fetch"))
