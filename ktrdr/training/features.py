"""Strategy features: indicators -> fuzzy memberships -> one column per (timeframe, set, member).

Columns are named ``{timeframe}_{fuzzy_set}_{member}`` (e.g. ``1h_rsi_momentum_oversold``) and
ordered by ``nn_inputs``, then by the timeframes listed there, then by member order in the
fuzzy set -- the order is part of a trained model's contract, so it must be deterministic.

Every row is indexed by a base-timeframe bar and only uses information known when that bar
closes; higher timeframes are joined with :func:`ktrdr.training.alignment.align_to_base`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ktrdr.training.alignment import align_to_base, base_timeframe
from ktrdr.training.fuzzy import FuzzySet, parse_fuzzy_sets

IndicatorFn = Callable[[Mapping[str, Any], pd.DataFrame], pd.Series | pd.DataFrame]

OHLCV = ("open", "high", "low", "close", "volume")


def default_indicator_fn() -> IndicatorFn:
    # Imported lazily: the indicators package is another module's concern and may be absent
    # where a caller supplies its own function (tests, notebooks).
    from ktrdr.indicators import compute  # type: ignore[import-not-found,unused-ignore]

    return compute  # type: ignore[no-any-return,unused-ignore]


@dataclass(frozen=True)
class FeatureInput:
    fuzzy_set: str
    timeframes: tuple[str, ...]


def parse_indicators(config: Any) -> dict[str, dict[str, Any]]:
    """``indicators`` as ``{id: spec}``; a list of specs with ``name`` is accepted too."""
    if config is None:
        return {}
    if isinstance(config, Mapping):
        return {str(k): dict(v) for k, v in config.items()}
    out: dict[str, dict[str, Any]] = {}
    for spec in config:
        spec = dict(spec)
        out[str(spec.pop("name"))] = spec
    return out


def parse_nn_inputs(strategy: Mapping[str, Any], available: list[str]) -> list[FeatureInput]:
    """``nn_inputs``; without it, every fuzzy set on every available timeframe."""
    fuzzy = strategy.get("fuzzy_sets") or {}
    raw = strategy.get("nn_inputs")
    if not raw:
        return [FeatureInput(str(name), tuple(available)) for name in fuzzy]
    inputs: list[FeatureInput] = []
    for item in raw:
        name = str(item["fuzzy_set"])
        if name not in fuzzy:
            raise ValueError(f"nn_inputs names unknown fuzzy set {name!r}")
        tfs = item.get("timeframes") or available
        if isinstance(tfs, str):
            tfs = available if tfs == "all" else [tfs]
        inputs.append(FeatureInput(name, tuple(str(tf) for tf in tfs)))
    return inputs


def _select_column(result: pd.Series | pd.DataFrame, ref: str, column: str | None) -> pd.Series:
    if isinstance(result, pd.Series):
        if column:
            raise ValueError(f"indicator {ref!r}: single-output indicator has no column {column!r}")
        return result
    if column is None:
        if result.shape[1] == 1:
            return result.iloc[:, 0]
        raise ValueError(f"indicator {ref!r} has columns {list(result.columns)}; pick one as '{ref}.<col>'")
    lowered = {str(c).lower(): c for c in result.columns}
    want = column.lower()
    if want in lowered:
        return result[lowered[want]]
    # Indicator modules often prefix columns (e.g. "macd_histogram"); accept a unique suffix match.
    hits = [c for c in result.columns if str(c).lower().endswith("_" + want)]
    if len(hits) == 1:
        return result[hits[0]]
    raise ValueError(f"indicator {ref!r}: no column {column!r} among {list(result.columns)}")


class _IndicatorCache:
    """Computes each (timeframe, indicator) once, however many fuzzy sets read it."""

    def __init__(self, indicators: dict[str, dict[str, Any]], compute: IndicatorFn) -> None:
        self.indicators = indicators
        self.compute = compute
        self._cache: dict[tuple[str, str], pd.Series | pd.DataFrame] = {}

    def values(self, ref: str, timeframe: str, bars: pd.DataFrame) -> pd.Series:
        ident, _, column = ref.partition(".")
        if ident not in self.indicators:
            if ident in OHLCV and not column:
                return bars[ident].astype(float)
            raise ValueError(f"fuzzy set refers to unknown indicator {ident!r}")
        key = (timeframe, ident)
        if key not in self._cache:
            self._cache[key] = self.compute(self.indicators[ident], bars)
        series = _select_column(self._cache[key], ident, column or None)
        return series.reindex(bars.index).astype(float)


def feature_names(strategy: Mapping[str, Any], timeframes: list[str]) -> list[str]:
    sets = parse_fuzzy_sets(strategy.get("fuzzy_sets") or {})
    names: list[str] = []
    for item in parse_nn_inputs(strategy, timeframes):
        for tf in item.timeframes:
            names.extend(f"{tf}_{item.fuzzy_set}_{m}" for m in sets[item.fuzzy_set].members)
    return names


def build_features(
    strategy: Mapping[str, Any],
    bars_by_timeframe: Mapping[str, pd.DataFrame],
    *,
    compute: IndicatorFn | None = None,
) -> pd.DataFrame:
    """Membership-degree features indexed by the base (shortest used) timeframe's bars.

    Rows during indicator warm-up contain NaN; callers decide whether to drop them.
    """
    available = list(bars_by_timeframe)
    inputs = parse_nn_inputs(strategy, available)
    used = [tf for tf in available if any(tf in i.timeframes for i in inputs)]
    missing = {tf for i in inputs for tf in i.timeframes} - set(available)
    if missing:
        raise ValueError(f"strategy needs bars for timeframes {sorted(missing)}")
    if not used:
        raise ValueError("strategy has no nn_inputs / fuzzy_sets")
    base = base_timeframe(used)
    base_index = pd.DatetimeIndex(bars_by_timeframe[base].sort_index().index)

    sets: dict[str, FuzzySet] = parse_fuzzy_sets(strategy.get("fuzzy_sets") or {})
    cache = _IndicatorCache(parse_indicators(strategy.get("indicators")), compute or default_indicator_fn())
    columns: list[pd.DataFrame] = []
    for item in inputs:
        fset = sets[item.fuzzy_set]
        for tf in item.timeframes:
            bars = bars_by_timeframe[tf].sort_index()
            degrees = fset.fuzzify(cache.values(fset.indicator, tf, bars))
            degrees.columns = [f"{tf}_{fset.name}_{m}" for m in degrees.columns]
            columns.append(align_to_base(degrees, tf, base_index, base))
    return pd.concat(columns, axis=1)
