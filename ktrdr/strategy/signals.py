"""Vectorised signals of rule-based strategies and the position they ask for.

Signals are read at a bar's close; the engine acts on them at the next bar's open.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ktrdr.cancel import CancelToken
from ktrdr.data.validation import OHLCV
from ktrdr.indicators import compute
from ktrdr.strategy.conditions import Operand, Resolver, evaluate
from ktrdr.strategy.schema import RuleStrategy

Indicators = dict[str, pd.Series | pd.DataFrame]

# The position walk is a loop over bars that carry a signal; check cancellation this often.
_CANCEL_EVERY = 65_536


@dataclass(frozen=True, kw_only=True)
class Signals:
    entry_long: np.ndarray
    exit_long: np.ndarray
    entry_short: np.ndarray
    exit_short: np.ndarray


def spec_key(spec: Mapping[str, Any]) -> Hashable | None:
    """A hashable key of what ``compute(spec, bars)`` computes: two specs with equal keys compute the
    same thing. None when a value cannot be frozen (such a spec is computed, never shared).

    Every value carries its type: 5, 5.0 and True hash alike, but an indicator takes ``period=5``
    and refuses the other two, so they must not share a cached result.
    """
    try:
        key = tuple(sorted((k, _freeze(v)) for k, v in spec.items()))
        hash(key)
    except TypeError:
        return None
    return key


def _freeze(value: Any) -> Hashable:
    kind = type(value).__qualname__
    if isinstance(value, Mapping):
        return (kind, tuple(sorted((k, _freeze(v)) for k, v in value.items())))
    if isinstance(value, list | tuple):
        return (kind, tuple(_freeze(v) for v in value))
    return (kind, value)


class IndicatorCache:
    """Indicators of one bars frame, each distinct spec (type, parameters, source column) computed once.

    Bound to the frame it is created for, by identity: any other frame, even an equal copy, is
    refused, because an equal-looking frame is no proof of equal values and comparing them would
    cost as much as computing. The frame must not change while the cache is in use. Cached
    Series/DataFrames are shared by every strategy that asks for them: read them, never write.

    ``shared=True``: the values also live in this process's :class:`SharedIndicators`, under a
    digest of the frame's contents (:func:`dataset_key`: index, column names, dtypes and values),
    so the next frame with the same contents (a sweep's next block on this worker, loaded again)
    finds them computed. Different data is a different digest: nothing computed on other values is
    ever served.
    """

    def __init__(self, bars: pd.DataFrame, *, shared: bool = False) -> None:
        self._bars = bars
        self._values: dict[Hashable, pd.Series | pd.DataFrame] = {}
        self._dataset = dataset_key(bars) if shared else None
        self.computed = 0  # computations run (misses), for tests and benchmarks
        self.reused = 0  # lookups answered from the cache (this frame's or the shared one)

    @property
    def bars(self) -> pd.DataFrame:
        return self._bars

    @property
    def dataset(self) -> str | None:
        """The digest its values are shared under; None when not shared."""
        return self._dataset

    def __len__(self) -> int:
        return len(self._values)

    def check(self, bars: pd.DataFrame) -> None:
        if bars is not self._bars:
            raise ValueError("this IndicatorCache belongs to another bars frame: make one IndicatorCache(bars) "
                             "per frame")

    def get(self, spec: Mapping[str, Any]) -> pd.Series | pd.DataFrame:
        """``compute(spec, bars)``, from the cache when this spec was computed before."""
        key = spec_key(spec)
        if key is None:
            self.computed += 1
            return compute(spec, self._bars)
        value = self._values.get(key)
        if value is None and self._dataset is not None:
            value = SHARED.get((self._dataset, key))
            if value is not None:
                self._values[key] = value
                self.reused += 1
                return value
        if value is None:
            # A spec that raises is not cached: asking again raises again, as without a cache.
            value = compute(spec, self._bars)
            self._values[key] = value
            self.computed += 1
            if self._dataset is not None:
                SHARED.put((self._dataset, key), value)
        else:
            self.reused += 1
        return value


def dataset_key(bars: pd.DataFrame) -> str | None:
    """A digest of everything an indicator can read of ``bars``: its index, column names, dtypes and
    values (~1 ms a year of hourly bars). None when a column holds Python objects (not hashed)."""
    digest = hashlib.blake2b(digest_size=20)
    index = bars.index
    if isinstance(index, pd.DatetimeIndex):
        digest.update(f"{index.dtype}|{len(index)}".encode())
        digest.update(np.ascontiguousarray(index.asi8).tobytes())
    else:
        return None
    for name in bars.columns:
        values = bars[name].to_numpy()
        if values.dtype == object:
            return None
        digest.update(f"|{name!r}|{values.dtype.str}|".encode())
        digest.update(np.ascontiguousarray(values).tobytes())
    return digest.hexdigest()


def _nbytes(value: pd.Series | pd.DataFrame) -> int:
    used = value.memory_usage(index=False, deep=False)
    return int(used.sum()) if isinstance(used, pd.Series) else int(used)


class SharedIndicators:
    """Indicators kept across frames in this process, by (:func:`dataset_key`, spec key): the least
    recently used go first past ``max_bytes`` (their values; indexes are the frames' own)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._values: OrderedDict[tuple[str, Hashable], tuple[pd.Series | pd.DataFrame, int]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()  # a worker's handlers run in threads

    def __len__(self) -> int:
        return len(self._values)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, key: tuple[str, Hashable]) -> pd.Series | pd.DataFrame | None:
        with self._lock:
            found = self._values.get(key)
            if found is None:
                return None
            self._values.move_to_end(key)
            return found[0]

    def put(self, key: tuple[str, Hashable], value: pd.Series | pd.DataFrame) -> None:
        size = _nbytes(value)
        if size > self.max_bytes:
            return
        with self._lock:
            old = self._values.pop(key, None)
            if old is not None:
                self._bytes -= old[1]
            while self._values and self._bytes + size > self.max_bytes:
                _, (_, freed) = self._values.popitem(last=False)
                self._bytes -= freed
            self._values[key] = (value, size)
            self._bytes += size

    def clear(self) -> None:
        with self._lock:
            self._values.clear()
            self._bytes = 0


# A 10,000-variant SMA sweep on a year of hourly bars needs ~520 distinct averages: ~36 MB.
SHARED = SharedIndicators(max_bytes=128 << 20)


def compute_indicators(strategy: RuleStrategy, bars: pd.DataFrame, *,
                       cancel: CancelToken | None = None, cache: IndicatorCache | None = None) -> Indicators:
    """Every indicator of ``strategy`` by id; with ``cache`` (made for these very ``bars``), an indicator
    whose spec was computed before is reused, not recomputed."""
    if cache is not None:
        cache.check(bars)
    out: Indicators = {}
    for ident, spec in strategy.indicator_specs().items():
        if cancel is not None:
            cancel.raise_if_cancelled()
        out[ident] = compute(spec, bars) if cache is None else cache.get(spec)
    return out


def operand_resolver(bars: pd.DataFrame, indicator: Callable[[str, str], np.ndarray | None]) -> Resolver:
    """How a rule reads its operands: a number as itself; ``ident.column`` as ``indicator(ident,
    column)`` gives it (None: no such indicator); a bar column from ``bars``; each name worked out once."""
    cache: dict[str, np.ndarray] = {}

    def resolve(operand: Operand) -> np.ndarray | float:
        if not isinstance(operand, str):
            return float(operand)
        if operand not in cache:
            ident, _, column = operand.partition(".")
            values = indicator(ident, column)
            if values is not None:
                cache[operand] = values
            elif operand in OHLCV:
                cache[operand] = bars[operand].to_numpy(dtype=np.float64)
            else:
                raise ValueError(f"unknown operand {operand!r}")
        return cache[operand]

    return resolve


def _resolver(bars: pd.DataFrame, indicators: Indicators) -> Resolver:
    return operand_resolver(bars, lambda ident, column: operand_values(indicators[ident], ident, column)
                            if ident in indicators else None)


def operand_values(value: pd.Series | pd.DataFrame, ident: str, column: str) -> np.ndarray:
    """Indicator ``ident``'s values (its ``column``, for a multi-output one) as a rule reads them."""
    if isinstance(value, pd.DataFrame):
        if not column and value.shape[1] != 1:
            raise ValueError(f"indicator {ident!r} has columns {list(value.columns)}; write {ident}.<column>")
        value = value[column] if column else value.iloc[:, 0]
    return value.to_numpy(dtype=np.float64)


def generate_signals(strategy: RuleStrategy, bars: pd.DataFrame, *, indicators: Indicators | None = None,
                     cancel: CancelToken | None = None, cache: IndicatorCache | None = None) -> Signals:
    """``cache`` serves the indicators when ``indicators`` is not given (see :class:`IndicatorCache`)."""
    if indicators is None:
        indicators = compute_indicators(strategy, bars, cancel=cancel, cache=cache)
    resolve = _resolver(bars, indicators)
    n = len(bars)
    none = np.zeros(n, dtype=bool)

    def rule(name: str) -> np.ndarray:
        cond = getattr(strategy.rules, name)
        return none if cond is None else evaluate(cond, resolve, n)

    short = strategy.allow_short
    return Signals(entry_long=rule("entry_long"), exit_long=rule("exit_long"),
                   entry_short=rule("entry_short") if short else none,
                   exit_short=rule("exit_short") if short else none)


def target_positions(signals: Signals, *, cancel: CancelToken | None = None, state: int = 0) -> np.ndarray:
    """The position (+1 long, -1 short, 0 flat) the strategy wants after each bar's close.

    Walk, per bar with a signal: an entry moves to its side (reversing an opposite position);
    both entries on one bar conflict and are ignored; an exit flattens only its own side. The
    loop runs over signal bars only, not over all bars. ``state``: the position held before the
    first bar (a carried one), 0 for flat.
    """
    el, xl, es, xs = signals.entry_long, signals.exit_long, signals.entry_short, signals.exit_short
    n = len(el)
    events = np.flatnonzero(el | xl | es | xs)
    change_at: list[int] = []
    change_to: list[int] = []
    out = np.zeros(n, dtype=np.int8)
    if state:
        out[:] = state
    e_l, x_l, e_s, x_s = el[events].tolist(), xl[events].tolist(), es[events].tolist(), xs[events].tolist()
    for k, i in enumerate(events.tolist()):
        if cancel is not None and k % _CANCEL_EVERY == 0:
            cancel.raise_if_cancelled()
        if e_l[k] and not e_s[k]:
            new = 1
        elif e_s[k] and not e_l[k]:
            new = -1
        elif (state == 1 and x_l[k]) or (state == -1 and x_s[k]):
            new = 0
        else:
            continue
        if new != state:
            change_at.append(i)
            change_to.append(new)
            state = new
    if change_at:
        starts = np.asarray(change_at)
        lengths = np.diff(np.append(starts, n))
        out[starts[0]:] = np.repeat(np.asarray(change_to, dtype=np.int8), lengths)
    return out


@dataclass(frozen=True, kw_only=True)
class PositionChanges:
    """Many rows' wanted positions (one row per variant, all over the same ``bars``), as their changes:
    after bar ``bar[k]``'s close row ``row[k]`` wants ``to[k]`` (it wanted something else just before).
    Row-major: by row, then by bar. Before a row's first change it wants ``state``."""

    rows: int
    bars: int
    state: int
    row: np.ndarray  # int64
    bar: np.ndarray  # int64
    to: np.ndarray  # int8

    def dense(self) -> np.ndarray:
        """Row ``i`` is what :func:`target_positions` returns for row ``i``'s signals (rows x bars, int8)."""
        out = np.zeros((self.rows, self.bars), dtype=np.int8)
        if len(self.row):
            before = np.full(len(self.to), self.state, dtype=np.int8)
            same = np.flatnonzero(self.row[1:] == self.row[:-1]) + 1
            before[same] = self.to[same - 1]
            out[self.row, self.bar] = self.to - before  # a step at each change; they add up along the row
            np.cumsum(out, axis=1, dtype=np.int8, out=out)
        if self.state:
            out += np.int8(self.state)
        return out


def position_changes_rows(entry_long: np.ndarray | None, exit_long: np.ndarray | None,
                          entry_short: np.ndarray | None, exit_short: np.ndarray | None, *,
                          state: int = 0) -> PositionChanges:
    """:func:`target_positions` of many rows of signals at once (each a rows x bars boolean array, or
    None for a signal that never fires), as their changes.

    The walk's rule, row by row, in array operations over the bars that carry a signal: the position
    after a bar is the side of the last entry up to it (an entry on one side only; ``state`` before
    any), unless one of that side's exits came after that entry (or, with no entry yet, at all): then
    it is flat. An exit on an entry's bar, or of the side not held, changes nothing.
    """
    given = [s for s in (entry_long, exit_long, entry_short, exit_short) if s is not None]
    if not given:
        raise ValueError("no signals")
    rows, n = given[0].shape
    if any(s.shape != (rows, n) for s in given):
        raise ValueError("the signals differ in shape")
    fired = given[0].copy() if len(given) > 1 else given[0]
    for s in given[1:]:
        fired |= s
    flat = np.flatnonzero(fired)  # row-major: by row, then by bar
    row, bar = np.divmod(flat, n) if n else (flat, flat)
    none = np.zeros(len(flat), dtype=bool)

    def at(signal: np.ndarray | None) -> np.ndarray:
        return none if signal is None else signal.reshape(-1)[flat]

    el, xl, es, xs = at(entry_long), at(exit_long), at(entry_short), at(exit_short)
    long_in, short_in = el & ~es, es & ~el
    entry = long_in | short_in
    k = np.arange(len(flat))
    # Each row's first event: where the row starts in the event list.
    row_first = np.searchsorted(row, row, side="left")
    last_entry = np.maximum.accumulate(np.where(entry, k, -1)) if len(k) else k
    has_entry = last_entry >= row_first
    entry_side = long_in.astype(np.int8) - short_in.astype(np.int8)
    side = np.where(has_entry, entry_side[np.maximum(last_entry, 0)], np.int8(state)).astype(np.int8)
    hit = ~entry & (((side == 1) & xl) | ((side == -1) & xs))
    last_exit = np.maximum.accumulate(np.where(hit, k, -1)) if len(k) else k
    position = np.where(last_exit >= np.maximum(last_entry + 1, row_first), np.int8(0), side).astype(np.int8)
    # Keep the events where the position differs from the one before (``state`` for a row's first).
    previous = np.empty_like(position)
    previous[:1] = state
    previous[1:] = position[:-1]
    first = k == row_first
    previous[first] = state
    moved = position != previous
    return PositionChanges(rows=rows, bars=n, state=state, row=row[moved].astype(np.int64),
                           bar=bar[moved].astype(np.int64), to=position[moved])


def target_positions_rows(entry_long: np.ndarray | None, exit_long: np.ndarray | None,
                          entry_short: np.ndarray | None, exit_short: np.ndarray | None, *,
                          state: int = 0) -> np.ndarray:
    """:func:`target_positions` of each row of rows x bars signals (None: never fires), as rows x bars int8."""
    return position_changes_rows(entry_long, exit_long, entry_short, exit_short, state=state).dense()
