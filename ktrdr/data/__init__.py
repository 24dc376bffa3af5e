"""Market data: validated OHLCV bars in a local store, synthetic bars, and distribution over JetStream."""

from ktrdr.data.csv_io import read_csv, write_csv
from ktrdr.data.gaps import Gap, find_gaps
from ktrdr.data.store import DatasetInfo, DataStore, bars_from_bytes, bars_to_bytes, empty_bars
from ktrdr.data.synth import synth
from ktrdr.data.timeframes import TIMEFRAMES, infer_timeframe, periods_per_year, timeframe_delta
from ktrdr.data.validation import OHLCV, BarValidationError, validate_bars

__all__ = [
    "OHLCV", "TIMEFRAMES", "BarValidationError", "DataStore", "DatasetInfo", "Gap", "bars_from_bytes",
    "bars_to_bytes", "empty_bars", "find_gaps", "infer_timeframe", "periods_per_year", "read_csv", "synth",
    "timeframe_delta", "validate_bars", "write_csv",
]
