"""Bar validation shared by CSV import and store loads.

Every check is vectorised; only the first offending row is reported, by timestamp and by the
line it came from, so that a user can open the file at that line.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from subjects import limits

OHLCV = ("open", "high", "low", "close", "volume")
# A stored bar: int64 nanoseconds and a float64 per column.
BAR_BYTES = 8 * (1 + len(OHLCV))


class DatasetTooLarge(ValueError):
    """A dataset, or the file it is read from, past a limit of :mod:`subjects.limits`; the message names it."""


def max_bars() -> int:
    """The most bars a dataset may hold: what :data:`subjects.limits.MAX_DATASET_BYTES` has room for.
    Read at each call, so that the limit is the module's current one."""
    return limits.MAX_DATASET_BYTES // BAR_BYTES


def size_text(n: int) -> str:
    """A limit as a person reads it: ``256 MiB``, ``64 KiB``, else bytes."""
    for unit, size in (("GiB", limits.GIB), ("MiB", limits.MIB), ("KiB", limits.KIB)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n:,} bytes"


class BarValidationError(ValueError):
    """A bar breaks a rule. ``row`` is 0-based among the bars; ``line`` is the source line (or None)."""

    def __init__(self, *, source: str, rule: str, row: int, timestamp: object, line: int | None) -> None:
        where = f"line {line}, " if line is not None else ""
        super().__init__(f"{source}: {where}row {row}, timestamp {timestamp}: {rule}")
        self.source = source
        self.rule = rule
        self.row = row
        self.timestamp = timestamp
        self.line = line


def validate_bars(df: pd.DataFrame, *, source: str = "<bars>", first_line: int | None = None) -> None:
    """Raise :class:`BarValidationError` at the first bar that breaks a rule.

    ``first_line`` is the source line of row 0 (2 for a CSV with a header); lines of later rows
    are counted from it, which holds because import keeps the file's row order.
    """
    missing = [c for c in OHLCV if c not in df.columns]
    if missing:
        raise ValueError(f"{source}: missing columns {missing}; need {list(OHLCV)}")
    if not isinstance(df.index, pd.DatetimeIndex):
        raise ValueError(f"{source}: index must be a DatetimeIndex")

    def fail(mask: np.ndarray, rule: str) -> None:
        bad = np.flatnonzero(mask)
        if len(bad):
            row = int(bad[0])
            line = first_line + row if first_line is not None else None
            raise BarValidationError(source=source, rule=rule, row=row, timestamp=df.index[row], line=line)

    ts = df.index.as_unit("ns").asi8
    fail(np.asarray(df.index.isna()), "timestamp missing or unparseable")
    step = np.diff(ts)
    # Report the later row of an offending pair: it is the one out of place.
    fail(np.concatenate(([False], step == 0)), "duplicate timestamp (timestamps must be unique)")
    fail(np.concatenate(([False], step < 0)), "timestamp earlier than the previous row (must be sorted ascending)")
    cols = {c: df[c].to_numpy(dtype=np.float64) for c in OHLCV}
    for c in OHLCV:
        fail(~np.isfinite(cols[c]), f"{c} is NaN or infinite")
    o, h, lo, c, v = (cols[k] for k in OHLCV)
    fail(h < np.maximum(o, c), "high < max(open, close)")
    fail(lo > np.minimum(o, c), "low > min(open, close)")
    fail(v < 0, "volume < 0")
