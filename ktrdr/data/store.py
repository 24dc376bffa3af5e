"""The local market-data store: one file per (symbol, timeframe).

Format: an uncompressed ``.npz`` holding int64 UTC nanoseconds and one float64 array per OHLCV
column. Loading is a few ``memcpy``s (1 M bars in milliseconds), needs no extra dependency, and
the same bytes are what :mod:`ktrdr.data.shared` puts in the Object Store.
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ktrdr.data.csv_io import read_csv
from ktrdr.data.gaps import Gap, find_gaps
from ktrdr.data.timeframes import validate_timeframe
from ktrdr.data.validation import OHLCV, validate_bars

_SYMBOL = re.compile(r"^[A-Za-z0-9_.-]{1,32}$")
class UnnamedDataset(ValueError):
    """A CSV whose name does not say its symbol and timeframe; the caller names what to pass
    (the CLI its ``--symbol``/``--timeframe``)."""

    def __init__(self, path: Path, *, how: str = "pass the symbol and the timeframe") -> None:
        super().__init__(f"{path}: cannot tell the symbol and timeframe from the name (it is not "
                         f"SYMBOL_timeframe.csv, e.g. EURUSD_1h.csv); {how}")
        self.path = path


_CSV_NAME = re.compile(r"^(?P<symbol>[A-Za-z0-9.-]+)_(?P<timeframe>\d+[mhdw])$")


def validate_symbol(symbol: str) -> str:
    if not _SYMBOL.match(symbol) or symbol.startswith("."):
        raise ValueError(f"invalid symbol {symbol!r}: use letters, digits, '.', '_' or '-'")
    return symbol


def empty_bars() -> pd.DataFrame:
    return pd.DataFrame({c: np.empty(0) for c in OHLCV}, index=pd.DatetimeIndex([], tz="UTC", name="timestamp"))


def bars_to_bytes(df: pd.DataFrame) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, timestamp=df.index.as_unit("ns").asi8, **{c: df[c].to_numpy(dtype=np.float64) for c in OHLCV})
    return buf.getvalue()


def bars_from_bytes(data: bytes | Path, *, source: str) -> pd.DataFrame:
    with np.load(data if isinstance(data, Path) else io.BytesIO(data)) as z:
        index = pd.DatetimeIndex(pd.to_datetime(z["timestamp"], utc=True), name="timestamp")
        df = pd.DataFrame({c: z[c] for c in OHLCV}, index=index)
    validate_bars(df, source=source)
    return df


@dataclass(frozen=True, kw_only=True)
class DatasetInfo:
    symbol: str
    timeframe: str
    start: pd.Timestamp | None
    end: pd.Timestamp | None
    bars: int
    gaps: list[Gap] = field(default_factory=list)

    @property
    def unexpected_gaps(self) -> list[Gap]:
        return [g for g in self.gaps if not g.weekend]

    def to_dict(self) -> dict[str, object]:
        return {"symbol": self.symbol, "timeframe": self.timeframe,
                "start": self.start.isoformat() if self.start is not None else None,
                "end": self.end.isoformat() if self.end is not None else None,
                "bars": self.bars, "gaps": [g.to_dict() for g in self.gaps],
                "unexpected_gaps": len(self.unexpected_gaps)}


class DataStore:
    def __init__(self, *, root: Path) -> None:
        self.root = Path(root)

    def path(self, symbol: str, timeframe: str) -> Path:
        return self.root / validate_symbol(symbol) / f"{validate_timeframe(timeframe)}.npz"

    def exists(self, symbol: str, timeframe: str) -> bool:
        return self.path(symbol, timeframe).is_file()

    def import_csv(self, path: Path, *, symbol: str | None = None, timeframe: str | None = None,
                   replace: bool = False) -> DatasetInfo:
        """Import a CSV; symbol and timeframe default to the ``{SYMBOL}_{timeframe}.csv`` file name.

        Bars are merged with what is stored unless ``replace`` is set.
        """
        path = Path(path)
        if symbol is None or timeframe is None:
            m = _CSV_NAME.match(path.stem)
            if not m:
                raise UnnamedDataset(path)
            symbol = symbol or m["symbol"]
            timeframe = timeframe or m["timeframe"]
        df = read_csv(path)
        if replace:
            self.save(symbol, timeframe, df)
        else:
            self.merge(symbol, timeframe, df)
        return self.info(symbol, timeframe)

    def save(self, symbol: str, timeframe: str, df: pd.DataFrame) -> Path:
        validate_bars(df, source=f"{symbol}/{timeframe}")
        return self.write_bytes(symbol, timeframe, bars_to_bytes(df))

    def write_bytes(self, symbol: str, timeframe: str, data: bytes) -> Path:
        target = self.path(symbol, timeframe)
        target.parent.mkdir(parents=True, exist_ok=True)
        # Write-then-rename so a reader never sees half a file.
        fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
        # A local write makes the file no longer the bucket's version (see ktrdr.data.shared).
        target.with_suffix(".digest").unlink(missing_ok=True)
        return target

    def load(self, symbol: str, timeframe: str, start: object = None, end: object = None) -> pd.DataFrame:
        """Bars with ``start <= timestamp <= end`` (either bound optional, naive bounds are UTC)."""
        path = self.path(symbol, timeframe)
        if not path.is_file():
            raise FileNotFoundError(f"no data for {symbol} {timeframe} in {self.root}")
        return between(bars_from_bytes(path, source=str(path)), start, end)

    def merge(self, symbol: str, timeframe: str, df: pd.DataFrame, *, prefer: str = "new") -> int:
        """Add bars. Where a timestamp is already stored, ``prefer="new"`` takes the new bar (a
        re-download corrects a bar the provider revised) and ``"stored"`` keeps the stored one.
        Returns the number of new timestamps."""
        if prefer not in ("new", "stored"):
            raise ValueError(f"prefer must be 'new' or 'stored', not {prefer!r}")
        validate_bars(df, source=f"new bars for {symbol}/{timeframe}")
        if not self.exists(symbol, timeframe):
            self.save(symbol, timeframe, df[list(OHLCV)])
            return len(df)
        old = self.load(symbol, timeframe)
        combined = pd.concat([old, df[list(OHLCV)]])
        combined = combined[~combined.index.duplicated(keep="last" if prefer == "new" else "first")]
        combined = combined.sort_index(kind="stable")
        self.save(symbol, timeframe, combined)
        return len(combined) - len(old)

    def list(self) -> list[tuple[str, str]]:
        if not self.root.is_dir():
            return []
        out = []
        for sym_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            out += [(sym_dir.name, f.stem) for f in sorted(sym_dir.glob("*.npz"))]
        return out

    def info(self, symbol: str, timeframe: str) -> DatasetInfo:
        df = self.load(symbol, timeframe)
        return DatasetInfo(symbol=symbol, timeframe=timeframe,
                           start=df.index[0] if len(df) else None, end=df.index[-1] if len(df) else None,
                           bars=len(df), gaps=find_gaps(df.index, timeframe))


def between(df: pd.DataFrame, start: object = None, end: object = None) -> pd.DataFrame:
    """The bars of ``df`` (sorted, UTC) with ``start <= timestamp <= end``; naive bounds are UTC."""
    if start is None and end is None:
        return df
    ts = df.index.as_unit("ns").asi8
    lo = 0 if start is None else int(np.searchsorted(ts, _utc(start).value, side="left"))
    hi = len(ts) if end is None else int(np.searchsorted(ts, _utc(end).value, side="right"))
    return df.iloc[lo:hi]


def _utc(value: object) -> pd.Timestamp:
    ts = pd.Timestamp(value)  # type: ignore[arg-type]
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")
