"""The local market-data store: one file per (symbol, timeframe).

Format: an uncompressed ``.npz`` holding int64 UTC nanoseconds and one float64 array per OHLCV
column. Loading is a few ``memcpy``s (1 M bars in milliseconds), needs no extra dependency, and
the same bytes are what :mod:`ktrdr.data.shared` puts in the Object Store.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, BinaryIO

import numpy as np
import pandas as pd

from ktrdr.data.csv_io import read_csv
from ktrdr.data.gaps import Gap, find_gaps
from ktrdr.data.timeframes import validate_timeframe
from ktrdr.data.validation import OHLCV, DatasetTooLarge, max_bars, size_text, validate_bars
from subjects import limits

log = logging.getLogger(__name__)

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
    """The bars of a dataset's ``.npz``, from anyone (a bucket's object, a local file).

    Refused with a ValueError naming ``source`` (:class:`DatasetTooLarge` past
    :data:`subjects.limits.MAX_DATASET_BYTES`) unless it holds exactly the six 1-D arrays
    :func:`bars_to_bytes` writes. Each array's size is checked against the limit from its header
    before it is allocated and again as it is inflated, so that a small compressed file never
    becomes a large allocation; no member is ever unpickled.
    """
    try:
        with data.open("rb") if isinstance(data, Path) else io.BytesIO(data) as f:
            arrays = _read_npz(f, source=source)
    except DatasetTooLarge:
        log.warning("refused dataset %s: past MAX_DATASET_BYTES", source)
        raise
    index = pd.DatetimeIndex(pd.to_datetime(arrays["timestamp"], utc=True), name="timestamp")
    df = pd.DataFrame({c: arrays[c] for c in OHLCV}, index=index)
    validate_bars(df, source=source)
    return df


# What bars_to_bytes writes: one member per array, each of one dtype.
_MEMBERS = {"timestamp.npy": np.dtype("<i8"), **{f"{c}.npy": np.dtype("<f8") for c in OHLCV}}
# numpy's own bound on an .npy header it parses; ours are under 128 bytes.
_MAX_NPY_HEADER = 10_000
# zipfile builds an object for every entry of the central directory before anything can be checked:
# ours is a few hundred bytes, and this keeps a forged one from filling memory with entries.
_MAX_ZIP_DIRECTORY = 64 * 1024
_END_RECORD = struct.Struct("<4s4H2LH")
_ZIP64_LOCATOR = 20
_READ_CHUNK = 1024 * 1024


def _read_npz(f: BinaryIO, *, source: str) -> dict[str, np.ndarray]:
    cap = limits.MAX_DATASET_BYTES
    past_cap = f"{source}: inflates past {size_text(cap)} (MAX_DATASET_BYTES, the limit of a dataset's arrays)"
    try:
        _check_directory(f, source=source)
        with zipfile.ZipFile(f) as z:
            infos = z.infolist()
            names = [i.filename for i in infos]
            if sorted(names) != sorted(_MEMBERS):
                raise ValueError(f"{source}: not a dataset: holds {sorted(names)[:8]}, expected {sorted(_MEMBERS)}")
            # The central directory's sizes can lie, so this only refuses early; reading checks again.
            if sum(i.file_size for i in infos) > cap + len(infos) * (_MAX_NPY_HEADER + 16):
                raise DatasetTooLarge(past_cap)
            arrays: dict[str, np.ndarray] = {}
            budget = cap
            for info in infos:
                if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or info.flag_bits & 0x1:
                    # bzip2 and lzma inflate a whole compressed block at once, past any bound we set.
                    raise ValueError(f"{source}: member {info.filename} is encrypted or compressed other than "
                                     "with deflate")
                with z.open(info) as member:
                    array = _read_member(member, name=info.filename, source=source, budget=budget,
                                         past_cap=past_cap)
                budget -= array.nbytes
                arrays[info.filename.removesuffix(".npy")] = array
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, struct.error) as exc:
        raise ValueError(f"{source}: not a readable dataset ({str(exc) or type(exc).__name__})") from None
    if len({len(a) for a in arrays.values()}) > 1:
        raise ValueError(f"{source}: not a dataset: its arrays differ in length")
    return arrays


def _check_directory(f: BinaryIO, *, source: str) -> None:
    """Refuse a central directory larger than ours could be, before zipfile reads it.

    Ours ends with the end record (no comment) and has no zip64 records, so zipfile reads the same
    record this does; a file that needs searching for it is no dataset.
    """
    end = f.seek(0, os.SEEK_END)
    f.seek(max(0, end - _ZIP64_LOCATOR - _END_RECORD.size))
    tail = f.read()
    f.seek(0)
    if len(tail) < _END_RECORD.size:
        raise ValueError(f"{source}: not a dataset ({len(tail)} bytes)")
    signature, _, _, _, entries, directory_size, _, comment = _END_RECORD.unpack(tail[-_END_RECORD.size:])
    if signature != b"PK\x05\x06" or comment:
        raise ValueError(f"{source}: not a dataset (no zip end record where a dataset has it)")
    zip64 = tail[:4] == b"PK\x06\x07" and len(tail) == _ZIP64_LOCATOR + _END_RECORD.size
    if zip64 or entries > len(_MEMBERS) or directory_size > _MAX_ZIP_DIRECTORY:
        raise ValueError(f"{source}: not a dataset: a zip directory of {entries} entries in {directory_size} bytes "
                         f"(a dataset has {len(_MEMBERS)})")


def _read_member(member: IO[bytes], *, name: str, source: str, budget: int, past_cap: str) -> np.ndarray:
    """One array, allocated only once its header says it fits ``budget``, and read in chunks so that
    inflating never runs ahead of the array (or past its end)."""
    try:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _, dtype = np.lib.format.read_array_header_1_0(member, max_header_size=_MAX_NPY_HEADER)
        elif version == (2, 0):
            shape, _, dtype = np.lib.format.read_array_header_2_0(member, max_header_size=_MAX_NPY_HEADER)
        else:
            raise ValueError(f"npy format {version[0]}.{version[1]}")
    except ValueError as exc:
        raise ValueError(f"{source}: member {name} is not an array ({exc})") from None
    expected = _MEMBERS[name]
    if dtype != expected or len(shape) != 1 or shape[0] < 0:
        raise ValueError(f"{source}: member {name} holds {dtype} of shape {shape}; expected a 1-D {expected} array")
    if shape[0] * dtype.itemsize > budget:
        raise DatasetTooLarge(past_cap)
    array = np.empty(shape[0], dtype=dtype)
    view = array.data.cast("B")
    done = 0
    while done < len(view):
        chunk = member.read(min(_READ_CHUNK, len(view) - done))
        if not chunk:
            raise ValueError(f"{source}: member {name} is cut short")
        view[done:done + len(chunk)] = chunk
        done += len(chunk)
    # More than its header said: refused unread (reading to the end is also what checks the CRC).
    if member.read(1):
        raise ValueError(f"{source}: member {name} holds more than its header says")
    return array


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
        # A dataset past the limit could be written but never read back, here or by any worker.
        if len(df) > max_bars():
            raise DatasetTooLarge(f"{symbol}/{timeframe}: {len(df):,} bars, more than the {max_bars():,} a dataset "
                                  f"may hold ({size_text(limits.MAX_DATASET_BYTES)}, MAX_DATASET_BYTES)")
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
