from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ktrdr.training.fuzzy import MembershipFunction, gaussian, parse_fuzzy_sets, trapezoidal, triangular


def test_triangular_degrees_and_nan() -> None:
    x = np.array([-5.0, 0.0, 12.5, 25.0, 32.5, 40.0, 50.0, np.nan])
    got = triangular(x, 0, 25, 40)
    np.testing.assert_allclose(got[:7], [0, 0, 0.5, 1, 0.5, 0, 0])
    assert np.isnan(got[7])


def test_left_shoulder_triangle_is_one_at_the_edge() -> None:
    np.testing.assert_allclose(triangular([0.0, 10.0, 20.0, -1.0], 0, 0, 20), [1, 0.5, 0, 0])


def test_trapezoidal_plateau_and_shoulders() -> None:
    np.testing.assert_allclose(trapezoidal([0, 1, 2, 3, 4, 5, 6], 1, 2, 4, 5), [0, 0, 1, 1, 1, 0, 0])
    np.testing.assert_allclose(trapezoidal([10.0, 100.0, 101.0], 60, 80, 100, 100), [0, 1, 0])
    assert np.isnan(trapezoidal([np.nan], 0, 0, 1, 1)[0])  # degenerate edges must not hide NaN


def test_gaussian_and_range() -> None:
    x = np.linspace(-10, 10, 101)
    g = gaussian(x, 0.0, 2.0)
    assert g.max() == pytest.approx(1.0)
    assert gaussian([2.0], 0.0, 2.0)[0] == pytest.approx(np.exp(-0.5))
    for f in (g, triangular(x, -3, 0, 3), trapezoidal(x, -4, -1, 1, 4)):
        assert ((f >= 0) & (f <= 1)).all()


def test_vectorised_over_series() -> None:
    s = pd.Series([0.0, 0.5, 1.0], index=pd.date_range("2024", periods=3, tz="UTC"))
    assert triangular(s, 0, 1, 2).tolist() == [0.0, 0.5, 1.0]


def test_config_parsing_shapes() -> None:
    sets = parse_fuzzy_sets(
        {
            "rsi_momentum": {
                "indicator": "rsi_14",
                "oversold": [0, 25, 40],
                "neutral": [30, 45, 55, 70],
                "overbought": {"type": "gaussian", "mean": 80, "sigma": 10},
            },
        }
    )
    fs = sets["rsi_momentum"]
    assert fs.indicator == "rsi_14"
    assert list(fs.members) == ["oversold", "neutral", "overbought"]
    assert [m.kind for m in fs.members.values()] == ["triangular", "trapezoidal", "gaussian"]
    frame = fs.fuzzify(pd.Series([25.0, 50.0, np.nan]))
    assert list(frame.columns) == ["oversold", "neutral", "overbought"]
    assert frame.loc[0, "oversold"] == 1.0 and frame.loc[1, "neutral"] == 1.0
    assert frame.iloc[2].isna().all()


@pytest.mark.parametrize("bad", [[1, 2], [3, 2, 1], {"type": "gaussian", "mean": 0, "sigma": 0}, "x"])
def test_invalid_membership_config_is_rejected(bad: object) -> None:
    with pytest.raises(ValueError):
        MembershipFunction.from_config(bad)
