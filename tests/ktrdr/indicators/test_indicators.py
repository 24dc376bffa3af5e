"""Indicator values against plain-loop textbook definitions."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from ktrdr.data import synth
from ktrdr.indicators import compute, names, register, validate_spec

BARS = synth("T", "1h", "2021-01-01", 400, seed=11)
C = BARS["close"].tolist()
H = BARS["high"].tolist()
L = BARS["low"].tolist()
NAN = float("nan")


def close_enough(got: pd.Series | np.ndarray, want: list[float]) -> None:
    np.testing.assert_allclose(np.asarray(got, dtype=float), np.asarray(want, dtype=float), rtol=1e-9,
                               atol=1e-9, equal_nan=True)


def ref_sma(x: list[float], p: int) -> list[float]:
    return [NAN if i < p - 1 else sum(x[i - p + 1:i + 1]) / p for i in range(len(x))]


def ref_smooth(x: list[float], p: int, alpha: float) -> list[float]:
    """Seed = mean of the first p valid values, then s += alpha (x - s)."""
    out = [NAN] * len(x)
    first = next(i for i, v in enumerate(x) if not math.isnan(v))
    s = sum(x[first:first + p]) / p
    out[first + p - 1] = s
    for i in range(first + p, len(x)):
        s = s + alpha * (x[i] - s)
        out[i] = s
    return out


def ref_ema(x: list[float], p: int) -> list[float]:
    return ref_smooth(x, p, 2 / (p + 1))


def test_sma_ema() -> None:
    close_enough(compute({"type": "sma", "period": 10}, BARS), ref_sma(C, 10))
    close_enough(compute({"type": "ema", "period": 12}, BARS), ref_ema(C, 12))
    close_enough(compute({"type": "SMA", "period": 3, "source": "high"}, BARS), ref_sma(H, 3))


def test_rsi_wilder() -> None:
    p = 14
    gains = [NAN] + [max(C[i] - C[i - 1], 0) for i in range(1, len(C))]
    losses = [NAN] + [max(C[i - 1] - C[i], 0) for i in range(1, len(C))]
    ag, al = ref_smooth(gains, p, 1 / p), ref_smooth(losses, p, 1 / p)
    want = [NAN if math.isnan(g) else (100 if lo == 0 else 100 - 100 / (1 + g / lo))
            for g, lo in zip(ag, al, strict=True)]
    got = compute({"type": "rsi", "period": p}, BARS)
    close_enough(got, want)
    assert got.iloc[:p].isna().all() and not math.isnan(got.iloc[p])


def test_rsi_extremes() -> None:
    idx = pd.date_range("2021-01-01", periods=30, freq="h", tz="UTC")
    up = pd.DataFrame({"close": np.arange(30.0)}, index=idx)
    assert compute({"type": "rsi", "period": 5}, up).iloc[-1] == 100
    flat = pd.DataFrame({"close": np.ones(30)}, index=idx)
    assert compute({"type": "rsi", "period": 5}, flat).iloc[-1] == 50


def test_macd() -> None:
    line = [a - b for a, b in zip(ref_ema(C, 12), ref_ema(C, 26), strict=True)]
    signal = ref_ema(line, 9)
    got = compute({"type": "macd"}, BARS)
    close_enough(got["macd"], line)
    close_enough(got["signal"], signal)
    close_enough(got["histogram"], [a - b for a, b in zip(line, signal, strict=True)])


def test_bollinger() -> None:
    p, k = 20, 2.0
    mid = ref_sma(C, p)
    sd = [NAN if i < p - 1 else math.sqrt(sum((v - mid[i]) ** 2 for v in C[i - p + 1:i + 1]) / p)
          for i in range(len(C))]
    got = compute({"type": "bollinger", "period": p, "std": k}, BARS)
    close_enough(got["middle"], mid)
    close_enough(got["upper"], [m + k * s for m, s in zip(mid, sd, strict=True)])
    close_enough(got["lower"], [m - k * s for m, s in zip(mid, sd, strict=True)])


def test_atr_wilder() -> None:
    tr = [H[0] - L[0]] + [max(H[i] - L[i], abs(H[i] - C[i - 1]), abs(L[i] - C[i - 1])) for i in range(1, len(C))]
    close_enough(compute({"type": "atr", "period": 14}, BARS), ref_smooth(tr, 14, 1 / 14))


def test_stochastic() -> None:
    kp, dp = 14, 3
    lo = [min(L[i - kp + 1:i + 1]) if i >= kp - 1 else NAN for i in range(len(C))]
    hi = [max(H[i - kp + 1:i + 1]) if i >= kp - 1 else NAN for i in range(len(C))]
    k = [NAN if i < kp - 1 else 100 * (C[i] - lo[i]) / (hi[i] - lo[i]) for i in range(len(C))]
    d = [NAN if i < kp + dp - 2 else sum(k[i - dp + 1:i + 1]) / dp for i in range(len(C))]
    got = compute({"type": "stochastic", "k_period": kp, "d_period": dp}, BARS)
    close_enough(got["k"], k)
    close_enough(got["d"], d)


def test_roc() -> None:
    close_enough(compute({"type": "roc", "period": 10}, BARS),
                 [NAN if i < 10 else 100 * (C[i] / C[i - 10] - 1) for i in range(len(C))])


def test_registry_rejects_unknown_and_accepts_new() -> None:
    with pytest.raises(ValueError, match="unknown indicator type 'nope'"):
        validate_spec({"type": "nope"})
    with pytest.raises(ValueError, match=r"no parameter\(s\) \['length'\]"):
        validate_spec({"type": "sma", "length": 3})
    with pytest.raises(ValueError, match="positive integer"):
        compute({"type": "sma", "period": 0}, BARS)

    def typical(df: pd.DataFrame, *, scale: float = 1.0) -> pd.Series:
        return scale * (df["high"] + df["low"] + df["close"]) / 3

    register("typical_price_test", typical)
    assert "typical_price_test" in names()
    got = compute({"type": "typical_price_test", "scale": 2.0}, BARS)
    assert got.iloc[0] == pytest.approx(2 * (H[0] + L[0] + C[0]) / 3)


def test_sma_is_vectorised_and_stable_on_a_million_bars() -> None:
    x = 1e4 + np.cumsum(np.random.default_rng(0).standard_normal(1_000_000))
    df = pd.DataFrame({"close": x})
    got = compute({"type": "sma", "period": 20}, df).to_numpy()
    np.testing.assert_allclose(got[-5:], [x[i - 19:i + 1].mean() for i in range(len(x) - 5, len(x))], rtol=1e-12)
