"""Reading and writing OHLCV CSV files (the first ktrdr's ``{SYMBOL}_{timeframe}.csv`` layout)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from ktrdr.data.validation import OHLCV, validate_bars

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_TIME_COLUMNS = ("timestamp", "date", "datetime", "time", "index")


def read_csv(path: Path) -> pd.DataFrame:
    """Parse and validate an OHLCV CSV; errors name the file line (header is line 1)."""
    raw = pd.read_csv(path)
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    time_col = next((c for c in _TIME_COLUMNS if c in raw.columns), raw.columns[0])
    # Naive timestamps are taken as UTC; aware ones are converted to it.
    index = pd.DatetimeIndex(pd.to_datetime(raw[time_col], utc=True, errors="coerce", format="mixed"), name="timestamp")
    missing = [c for c in OHLCV if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; need a time column and {list(OHLCV)}")
    values = {c: pd.to_numeric(raw[c], errors="coerce").to_numpy(dtype=np.float64) for c in OHLCV}
    df = pd.DataFrame(values, index=index)
    validate_bars(df, source=str(path), first_line=2)
    return df


def write_csv(df: pd.DataFrame, path: Path) -> None:
    out = df[list(OHLCV)].copy()
    out.index = out.index.strftime(TIME_FORMAT)
    out.index.name = "timestamp"
    out.to_csv(path)
