"""Fuzzy membership functions and fuzzy-set configuration (strategy v3.0).

A fuzzy set names one indicator and several members; each member is a membership
function mapping indicator values to degrees in [0, 1]. Config shapes accepted per member:

* ``[a, b, c]`` -- triangular
* ``[a, b, c, d]`` -- trapezoidal
* ``{type: gaussian, mean: m, sigma: s}`` (or ``{type: triangular|trapezoidal, parameters: [...]}``)

NaN inputs (indicator warm-up) stay NaN so that callers can drop them explicitly rather
than train on a fabricated 0 membership.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import pandas as pd

ArrayLike: TypeAlias = np.ndarray | pd.Series | list[float] | float


def _as_float_array(x: ArrayLike) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def trapezoidal(x: ArrayLike, a: float, b: float, c: float, d: float) -> np.ndarray:
    """Trapezoid rising on [a, b], 1 on [b, c], falling on [c, d], 0 outside [a, d].

    ``a == b`` (or ``c == d``) gives a vertical edge: a shoulder at the range boundary, which
    is how strategies write "everything at or below 0" style members.
    """
    if not a <= b <= c <= d:
        raise ValueError(f"trapezoid parameters must satisfy a <= b <= c <= d, got {[a, b, c, d]}")
    v = _as_float_array(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        rise = (v - a) / (b - a) if b > a else np.where(v >= a, 1.0, 0.0)
        fall = (d - v) / (d - c) if d > c else np.where(v <= d, 1.0, 0.0)
    degree = np.clip(np.minimum(rise, fall), 0.0, 1.0)
    return np.where(np.isnan(v), np.nan, degree)


def triangular(x: ArrayLike, a: float, b: float, c: float) -> np.ndarray:
    """Triangle with feet at ``a`` and ``c`` and peak 1 at ``b``."""
    if not a <= b <= c:
        raise ValueError(f"triangle parameters must satisfy a <= b <= c, got {[a, b, c]}")
    return trapezoidal(x, a, b, b, c)


def gaussian(x: ArrayLike, mean: float, sigma: float) -> np.ndarray:
    if sigma <= 0:
        raise ValueError(f"gaussian sigma must be > 0, got {sigma}")
    v = _as_float_array(x)
    return np.exp(-0.5 * ((v - mean) / sigma) ** 2)


@dataclass(frozen=True)
class MembershipFunction:
    kind: str  # "triangular" | "trapezoidal" | "gaussian"
    params: tuple[float, ...]

    def __call__(self, x: ArrayLike) -> np.ndarray:
        if self.kind == "triangular":
            return triangular(x, *self.params)
        if self.kind == "trapezoidal":
            return trapezoidal(x, *self.params)
        if self.kind == "gaussian":
            return gaussian(x, *self.params)
        raise ValueError(f"unknown membership function {self.kind!r}")

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.kind, "parameters": list(self.params)}

    @classmethod
    def from_config(cls, spec: Any) -> MembershipFunction:
        if isinstance(spec, list | tuple):
            params = tuple(float(p) for p in spec)
            kinds = {3: "triangular", 4: "trapezoidal"}
            if len(params) not in kinds:
                raise ValueError(f"membership list needs 3 or 4 numbers, got {list(spec)}")
            mf = cls(kinds[len(params)], params)
        elif isinstance(spec, Mapping):
            kind = str(spec.get("type", "")).lower()
            if kind == "gaussian":
                if "parameters" in spec:
                    mean, sigma = spec["parameters"]
                else:
                    mean, sigma = spec["mean"], spec["sigma"]
                mf = cls("gaussian", (float(mean), float(sigma)))
            elif kind in ("triangular", "trapezoidal"):
                mf = cls.from_config(list(spec["parameters"]))
                if mf.kind != kind:
                    raise ValueError(f"{kind} membership has {len(mf.params)} parameters")
            else:
                raise ValueError(f"unknown membership type {spec.get('type')!r}")
        else:
            raise ValueError(f"cannot read membership function from {spec!r}")
        mf(np.array([mf.params[0]]))  # validates parameter order eagerly, at config time
        return mf


@dataclass(frozen=True)
class FuzzySet:
    name: str
    indicator: str  # indicator id, optionally "id.column" for multi-output indicators
    members: dict[str, MembershipFunction] = field(default_factory=dict)

    def fuzzify(self, values: pd.Series) -> pd.DataFrame:
        """Membership degrees per member, columns named by member, same index as ``values``."""
        data = {member: mf(values.to_numpy(dtype=np.float64)) for member, mf in self.members.items()}
        return pd.DataFrame(data, index=values.index)

    def to_dict(self) -> dict[str, Any]:
        return {"indicator": self.indicator, **{m: mf.to_dict() for m, mf in self.members.items()}}


_SET_KEYS = {"indicator", "type", "description"}


def parse_fuzzy_sets(config: Mapping[str, Any]) -> dict[str, FuzzySet]:
    """Parse the strategy's ``fuzzy_sets`` mapping, keeping the config's member order."""
    sets: dict[str, FuzzySet] = {}
    for name, spec in config.items():
        if not isinstance(spec, Mapping) or "indicator" not in spec:
            raise ValueError(f"fuzzy set {name!r} needs an 'indicator'")
        members = {
            str(member): MembershipFunction.from_config(mf) for member, mf in spec.items() if member not in _SET_KEYS
        }
        if not members:
            raise ValueError(f"fuzzy set {name!r} has no members")
        sets[str(name)] = FuzzySet(str(name), str(spec["indicator"]), members)
    return sets
