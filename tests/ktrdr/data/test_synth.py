from __future__ import annotations

import numpy as np
import pandas as pd

from ktrdr.data import synth, validate_bars


def _corr_past_next(df: pd.DataFrame, lookback: int = 14) -> float:
    r = np.diff(np.log(df["close"].to_numpy()))
    past = np.convolve(r, np.ones(lookback), "valid")[:-1]
    return float(np.corrcoef(past, r[lookback:])[0, 1])


def test_deterministic_valid_and_spaced() -> None:
    a = synth("S", "5m", "2022-03-01", 2000, seed=7)
    b = synth("S", "5m", "2022-03-01", 2000, seed=7)
    pd.testing.assert_frame_equal(a, b)
    assert not a.equals(synth("S", "5m", "2022-03-01", 2000, seed=8))
    validate_bars(a)
    assert (np.diff(a.index.asi8) == 300 * 10**9).all() and str(a.index.tz) == "UTC"
    assert (a["open"].to_numpy()[1:] == a["close"].to_numpy()[:-1]).all()


def test_regimes_switch_volatility() -> None:
    df = synth("S", "1h", "2022-01-01", 50_000, seed=1, regime_bars=1000)
    r = np.diff(np.log(df["close"].to_numpy()))
    vol = pd.Series(r).rolling(500).std().dropna()
    assert vol.max() / vol.min() > 2.0


def test_no_pattern_without_option_and_pattern_with_it() -> None:
    plain = synth("S", "1h", "2022-01-01", 200_000, seed=3)
    assert abs(_corr_past_next(plain)) < 0.01
    r = np.diff(np.log(plain["close"].to_numpy()))
    assert abs(np.corrcoef(r[:-1], r[1:])[0, 1]) < 0.01
    planted = synth("S", "1h", "2022-01-01", 200_000, seed=3, mean_reversion=0.3)
    assert _corr_past_next(planted) < -0.15
    validate_bars(planted)


def test_planted_pattern_beats_majority_baseline_with_rsi_rule() -> None:
    """A one-feature rule on RSI predicts the sign of the next 5-bar return better than the majority class."""
    from ktrdr.indicators import compute

    for k, should_win in ((0.3, True), (0.0, False)):
        df = synth("S", "1h", "2022-01-01", 100_000, seed=5, mean_reversion=k)
        rsi = compute({"type": "rsi", "period": 14}, df).to_numpy()
        c = df["close"].to_numpy()
        up = (c[5:] > c[:-5])[14:]
        pred = (rsi[:-5] < 50)[14:]
        accuracy = float((pred == up).mean())
        baseline = max(up.mean(), 1 - up.mean())
        assert bool(accuracy > baseline + 0.05) is should_win, (k, accuracy, baseline)
