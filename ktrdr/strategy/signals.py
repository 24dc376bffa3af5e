"""Vectorised signals of rule-based strategies and the position they ask for.

Signals are read at a bar's close; the engine acts on them at the next bar's open.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ktrdr.cancel import CancelToken
from ktrdr.data.validation import OHLCV
from ktrdr.indicators import compute
from ktrdr.strategy.conditions import Operand, evaluate
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
    """

    def __init__(self, bars: pd.DataFrame) -> None:
        self._bars = bars
        self._values: dict[Hashable, pd.Series | pd.DataFrame] = {}
        self.computed = 0  # computations run (misses), for tests and benchmarks
        self.reused = 0  # lookups answered from the cache

    @property
    def bars(self) -> pd.DataFrame:
        return self._bars

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
        if value is None:
            # A spec that raises is not cached: asking again raises again, as without a cache.
            value = compute(spec, self._bars)
            self._values[key] = value
            self.computed += 1
        else:
            self.reused += 1
        return value


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


def _resolver(bars: pd.DataFrame, indicators: Indicators):  # noqa: ANN202 - a closure
    cache: dict[str, np.ndarray] = {}

    def resolve(operand: Operand) -> np.ndarray | float:
        if not isinstance(operand, str):
            return float(operand)
        if operand not in cache:
            ident, _, column = operand.partition(".")
            if ident in indicators:
                value = indicators[ident]
                if isinstance(value, pd.DataFrame):
                    if not column and value.shape[1] != 1:
                        raise ValueError(f"indicator {ident!r} has columns {list(value.columns)}; "
                                         f"write {ident}.<column>")
                    value = value[column] if column else value.iloc[:, 0]
                cache[operand] = value.to_numpy(dtype=np.float64)
            elif operand in OHLCV:
                cache[operand] = bars[operand].to_numpy(dtype=np.float64)
            else:
                raise ValueError(f"unknown operand {operand!r}")
        return cache[operand]

    return resolve


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
