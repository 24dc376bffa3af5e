"""Reading and writing OHLCV CSV files (the first ktrdr's ``{SYMBOL}_{timeframe}.csv`` layout)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from ktrdr.data.validation import OHLCV, BarValidationError, validate_bars

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_TIME_COLUMNS = ("timestamp", "date", "datetime", "time", "index")


LAYOUT = "a header line, then one bar a line: timestamp,open,high,low,close,volume"
# Shipped with the package (package data): what the README's import example reads.
SAMPLE = "samples/EURUSD_1h.csv"


def sample_csv() -> bytes:
    """The sample file: EURUSD 1h bars for January 2024 (weekdays), in the layout ``read_csv`` reads."""
    return resources.files("ktrdr.data").joinpath(SAMPLE).read_bytes()


def read_csv(path: Path) -> pd.DataFrame:
    """Parse and validate an OHLCV CSV; every error names the file, and a bar's the line (header is line 1)."""
    with path.open("rb") as f:
        head = f.read(8192)
    if not head.strip():
        raise ValueError(f"{path}: the file is empty; expected {LAYOUT}")
    if b"\0" in head:
        raise ValueError(f"{path}: not a text file (binary content); expected a CSV: {LAYOUT}")
    try:
        raw = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{path}: not a readable CSV ({str(exc).strip() or type(exc).__name__}); expected "
                         f"{LAYOUT}") from None
    raw.columns = [str(c).strip().lower() for c in raw.columns]
    missing = [c for c in OHLCV if c not in raw.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected {LAYOUT}")
    if raw.empty:
        raise ValueError(f"{path}: a header but no bars; expected {LAYOUT}")
    time_col = next((c for c in _TIME_COLUMNS if c in raw.columns), raw.columns[0])
    # Naive timestamps are taken as UTC; aware ones are converted to it.
    index = pd.DatetimeIndex(pd.to_datetime(raw[time_col], utc=True, errors="coerce", format="mixed"), name="timestamp")
    values = {}
    for c in OHLCV:
        text = raw[c].str.strip()
        numbers = pd.to_numeric(text, errors="coerce")
        # Text that is not a number is its own mistake, not a NaN in the data: say what was there.
        unparsed = np.flatnonzero(numbers.isna().to_numpy() & (text.str.lower() != "nan").to_numpy())
        if len(unparsed):
            row = int(unparsed[0])
            found = text.iloc[row]
            rule = f"{c} is missing" if not found else f"{c} {found!r} is not a number"
            raise BarValidationError(source=str(path), rule=rule, row=row,
                                     timestamp=raw[time_col].iloc[row], line=row + 2)
        values[c] = numbers.to_numpy(dtype=np.float64)
    df = pd.DataFrame(values, index=index)
    validate_bars(df, source=str(path), first_line=2)
    return df


def write_csv(df: pd.DataFrame, path: Path) -> None:
    out = df[list(OHLCV)].copy()
    out.index = out.index.strftime(TIME_FORMAT)
    out.index.name = "timestamp"
    out.to_csv(path)
