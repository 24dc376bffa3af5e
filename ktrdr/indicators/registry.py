"""The indicator registry: ``compute({"type": "rsi", "period": 14}, bars)``.

An indicator is a function ``fn(bars, **params) -> Series | DataFrame`` whose parameters are
keyword-only with defaults; the registry reads them from the signature, so a spec with an
unknown parameter is refused before any computation. Later modules add their own with
:func:`register`.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any

import pandas as pd

IndicatorFunction = Callable[..., pd.Series | pd.DataFrame]

# Keys a spec may carry that are about the strategy, not the computation.
_META_KEYS = frozenset({"type", "name", "feature_id"})

_REGISTRY: dict[str, IndicatorFunction] = {}


def register(name: str, fn: IndicatorFunction, *, replace: bool = False) -> IndicatorFunction:
    key = name.lower()
    if key in _REGISTRY and not replace and _REGISTRY[key] is not fn:
        raise ValueError(f"indicator {name!r} is already registered")
    _REGISTRY[key] = fn
    return fn


def get(name: str) -> IndicatorFunction:
    try:
        return _REGISTRY[str(name).lower()]
    except KeyError:
        raise KeyError(f"unknown indicator type {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None


def names() -> list[str]:
    return sorted(_REGISTRY)


def parameters(name: str) -> dict[str, Any]:
    """The indicator's parameters and their defaults."""
    sig = inspect.signature(get(name))
    return {p.name: p.default for p in sig.parameters.values() if p.kind is inspect.Parameter.KEYWORD_ONLY}


def split_spec(spec: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """``(type, params)`` of a spec; raises ValueError naming an unknown type or parameter."""
    if "type" not in spec:
        raise ValueError(f"indicator spec {dict(spec)!r} has no 'type'")
    kind = str(spec["type"]).lower()
    try:
        known = parameters(kind)
    except KeyError as e:
        raise ValueError(e.args[0]) from None
    params = {k: v for k, v in spec.items() if k not in _META_KEYS}
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise ValueError(f"indicator {kind!r} has no parameter(s) {unknown}; it takes {sorted(known)}")
    for name, value in params.items():
        default = known[name]
        # Integer parameters are window lengths and counts throughout: positive integers only.
        if isinstance(default, int) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"indicator {kind!r}: {name} must be a positive integer, got {value!r}")
        elif isinstance(default, float) and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise ValueError(f"indicator {kind!r}: {name} must be a number, got {value!r}")
    return kind, params


def validate_spec(spec: Mapping[str, Any]) -> None:
    split_spec(spec)


def compute(spec: Mapping[str, Any], bars: pd.DataFrame) -> pd.Series | pd.DataFrame:
    kind, params = split_spec(spec)
    return get(kind)(bars, **params)
