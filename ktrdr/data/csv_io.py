"""Reading and writing OHLCV CSV files (the first ktrdr's ``{SYMBOL}_{timeframe}.csv`` layout)."""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from ktrdr.data.validation import OHLCV, BarValidationError, DatasetTooLarge, max_bars, size_text, validate_bars
from subjects import limits

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_TIME_COLUMNS = ("timestamp", "date", "datetime", "time", "index")


LAYOUT = "a header line, then one bar a line: timestamp,open,high,low,close,volume"
# Shipped with the package (package data): what the README's import example reads.
SAMPLE = "samples/EURUSD_1h.csv"


def sample_csv() -> bytes:
    """The sample file: EURUSD 1h bars for January 2024 (weekdays), in the layout ``read_csv`` reads."""
    return resources.files("ktrdr.data").joinpath(SAMPLE).read_bytes()


# Rows parsed at a time: their text is what an import holds besides the bars themselves.
CHUNK_ROWS = 100_000
# What is looked at before parsing: whether the file is text, and its header line.
_HEAD_BYTES = 8192


class _Counted(io.RawIOBase):
    """``raw`` after ``head`` (already read from it), refused past ``limit`` bytes in all: counted,
    since a pipe has no size to look at first."""

    def __init__(self, *, raw: io.BufferedIOBase, head: bytes, limit: int, refuse: Callable[[], Exception]) -> None:
        super().__init__()
        self._raw, self._head, self._limit, self._refuse = raw, head, limit, refuse
        self._count = len(head)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        if self._head:
            n = min(len(view), len(self._head))
            view[:n] = self._head[:n]
            self._head = self._head[n:]
            return n
        # One byte more than the limit allows is enough to know it is past it.
        n = self._raw.readinto(view[:max(1, min(len(view), self._limit - self._count + 1))])
        self._count += n or 0
        if self._count > self._limit:
            raise self._refuse()
        return n or 0


def _read_head(f: io.BufferedIOBase) -> bytes:
    head = b""
    while len(head) < _HEAD_BYTES:
        more = f.read(_HEAD_BYTES - len(head))
        if not more:
            break
        head += more
    return head


def read_csv(path: Path) -> pd.DataFrame:
    """Parse and validate an OHLCV CSV; every error names the file, and a bar's the line (header is line 1).

    Refused (:class:`DatasetTooLarge`) past :data:`subjects.limits.MAX_IMPORT_CSV_BYTES` of file or
    more bars than a dataset may hold, both counted while reading: the file is parsed
    :data:`CHUNK_ROWS` rows at a time, keeping only the columns of a bar.
    """
    limit = limits.MAX_IMPORT_CSV_BYTES

    def too_large() -> DatasetTooLarge:
        return DatasetTooLarge(f"{path}: larger than {size_text(limit)} (MAX_IMPORT_CSV_BYTES, the most a CSV "
                               "import reads); import it in parts: each import merges with what is stored")

    with path.open("rb") as f:
        info = os.fstat(f.fileno())
        if stat.S_ISREG(info.st_mode) and info.st_size > limit:
            raise too_large()
        head = _read_head(f)
        if not head.strip():
            raise ValueError(f"{path}: the file is empty; expected {LAYOUT}")
        if b"\0" in head:
            raise ValueError(f"{path}: not a text file (binary content); expected a CSV: {LAYOUT}")
        return _parse(_Counted(raw=f, head=head, limit=limit, refuse=too_large), head=head, path=path)


def _header(head: bytes, path: Path) -> list[str]:
    line, newline, _ = head.partition(b"\n")
    if not newline and len(head) == _HEAD_BYTES:
        raise ValueError(f"{path}: the header line is longer than {_HEAD_BYTES} bytes; expected {LAYOUT}")
    try:
        columns = pd.read_csv(io.BytesIO(line), nrows=0, skipinitialspace=True).columns
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{path}: not a readable CSV ({str(exc).strip() or type(exc).__name__}); expected "
                         f"{LAYOUT}") from None
    return [str(c).strip().lower() for c in columns]


def _parse(source: io.RawIOBase, *, head: bytes, path: Path) -> pd.DataFrame:
    columns = _header(head, path)
    missing = [c for c in OHLCV if c not in columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}; expected {LAYOUT}")
    time_col = next((c for c in _TIME_COLUMNS if c in columns), columns[0])
    # The first column of each name, as a frame indexed by name would give; the others are never kept.
    wanted = {name: columns.index(name) for name in (time_col, *OHLCV)}
    usecols = sorted(set(wanted.values()))
    names = {i: name for name, i in wanted.items()}
    bound = max_bars()
    times: list[pd.DatetimeIndex] = []
    values: dict[str, list[np.ndarray]] = {c: [] for c in OHLCV}
    rows = 0
    try:
        for raw in pd.read_csv(io.BufferedReader(source), dtype=str, keep_default_na=False, skipinitialspace=True,
                               usecols=usecols, chunksize=CHUNK_ROWS):
            raw.columns = [names[i] for i in usecols]
            if rows + len(raw) > bound:
                raise DatasetTooLarge(f"{path}: more than {bound:,} bars, the most a dataset holds "
                                      f"({size_text(limits.MAX_DATASET_BYTES)}, MAX_DATASET_BYTES); import it in "
                                      "parts, or fewer years of it")
            # Naive timestamps are taken as UTC; aware ones are converted to it.
            times.append(pd.DatetimeIndex(pd.to_datetime(raw[time_col], utc=True, errors="coerce", format="mixed")))
            for c in OHLCV:
                values[c].append(_numbers(raw, c, time_col=time_col, first_row=rows, path=path))
            rows += len(raw)
    except (UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise ValueError(f"{path}: not a readable CSV ({str(exc).strip() or type(exc).__name__}); expected "
                         f"{LAYOUT}") from None
    if not rows:
        raise ValueError(f"{path}: a header but no bars; expected {LAYOUT}")
    index = times[0].append(times[1:]) if len(times) > 1 else times[0]
    df = pd.DataFrame({c: np.concatenate(values[c]) for c in OHLCV}, index=index.rename("timestamp"))
    validate_bars(df, source=str(path), first_line=2)
    return df


def _numbers(raw: pd.DataFrame, column: str, *, time_col: str, first_row: int, path: Path) -> np.ndarray:
    text = raw[column].str.strip()
    numbers = pd.to_numeric(text, errors="coerce")
    # Text that is not a number is its own mistake, not a NaN in the data: say what was there.
    unparsed = np.flatnonzero(numbers.isna().to_numpy() & (text.str.lower() != "nan").to_numpy())
    if len(unparsed):
        at = int(unparsed[0])
        found = text.iloc[at]
        rule = f"{column} is missing" if not found else f"{column} {found!r} is not a number"
        row = first_row + at
        raise BarValidationError(source=str(path), rule=rule, row=row, timestamp=raw[time_col].iloc[at],
                                 line=row + 2)
    return numbers.to_numpy(dtype=np.float64)


def write_csv(df: pd.DataFrame, path: Path) -> None:
    out = df[list(OHLCV)].copy()
    out.index = out.index.strftime(TIME_FORMAT)
    out.index.name = "timestamp"
    out.to_csv(path)
