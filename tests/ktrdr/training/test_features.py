from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from ktrdr.training.alignment import align_to_base, timeframe_duration
from ktrdr.training.features import build_features, feature_names
from tests.ktrdr.training.synthetic import compute, make_bars, resample

STRATEGY: dict[str, Any] = {
    "indicators": {"rsi_14": {"type": "rsi", "period": 14}, "macd_12_26_9": {"type": "macd"}},
    "fuzzy_sets": {
        "rsi_momentum": {
            "indicator": "rsi_14",
            "oversold": [0, 25, 40],
            "neutral": [30, 50, 70],
            "overbought": [60, 75, 100],
        },
        "macd_hist": {
            "indicator": "macd_12_26_9.histogram",
            "negative": [-10, -10, -0.01, 0],
            "positive": [0, 0.01, 10, 10],
        },
    },
    "nn_inputs": [
        {"fuzzy_set": "rsi_momentum", "timeframes": ["1h", "4h"]},
        {"fuzzy_set": "macd_hist", "timeframes": ["1h"]},
    ],
}


def test_feature_names_follow_nn_inputs_order() -> None:
    expected = [
        "1h_rsi_momentum_oversold",
        "1h_rsi_momentum_neutral",
        "1h_rsi_momentum_overbought",
        "4h_rsi_momentum_oversold",
        "4h_rsi_momentum_neutral",
        "4h_rsi_momentum_overbought",
        "1h_macd_hist_negative",
        "1h_macd_hist_positive",
    ]
    assert feature_names(STRATEGY, ["1h", "4h"]) == expected
    bars = make_bars(400, seed=3)
    feats = build_features(STRATEGY, {"1h": bars, "4h": resample(bars, "4h")}, compute=compute)
    assert list(feats.columns) == expected
    assert feats.index.equals(bars.index)
    valid = feats.dropna()
    assert len(valid) > 300 and ((valid >= 0) & (valid <= 1)).all().all()


def test_multi_output_column_must_be_selected() -> None:
    bad = {
        **STRATEGY,
        "fuzzy_sets": {"m": {"indicator": "macd_12_26_9", "a": [0, 1, 2]}},
        "nn_inputs": [{"fuzzy_set": "m", "timeframes": ["1h"]}],
    }
    with pytest.raises(ValueError, match="histogram"):
        build_features(bad, {"1h": make_bars(100)}, compute=compute)


def test_alignment_uses_higher_bar_only_after_it_closed() -> None:
    # 5m base and 1h higher: the 1h bar stamped 10:00 closes at 11:00 and is first visible to
    # the 5m bar stamped 10:55 (which closes at 11:00).
    base_index = pd.date_range("2024-01-01 09:00", "2024-01-01 11:55", freq="5min", tz="UTC")
    hourly = pd.DataFrame(
        {"v": [9.0, 10.0, 11.0]}, index=pd.date_range("2024-01-01 09:00", periods=3, freq="1h", tz="UTC")
    )
    aligned = align_to_base(hourly, "1h", base_index, "5m")["v"]
    ts = lambda s: pd.Timestamp(f"2024-01-01 {s}", tz="UTC")  # noqa: E731
    assert np.isnan(aligned[ts("09:00")]) and np.isnan(aligned[ts("09:50")])
    assert aligned[ts("09:55")] == 9.0  # 09:00 bar closed at 10:00 = this bar's close
    assert aligned[ts("10:50")] == 9.0
    assert aligned[ts("10:55")] == 10.0
    assert aligned[ts("11:50")] == 10.0 and aligned[ts("11:55")] == 11.0


def test_alignment_rule_holds_everywhere() -> None:
    bars = make_bars(500, seed=5)
    four = resample(bars, "4h")
    four_close = four["close"].rename("c").to_frame()
    aligned = align_to_base(four_close, "4h", bars.index, "1h")["c"]
    for base_ts, value in aligned.dropna().items():
        used = four.index[four["close"].to_numpy() == value][0]
        assert used + timeframe_duration("4h") <= base_ts + timeframe_duration("1h")
        # and it is the latest bar allowed
        later = used + timeframe_duration("4h")
        assert not (later in four.index and later + timeframe_duration("4h") <= base_ts + timeframe_duration("1h"))


def test_future_higher_bars_do_not_change_past_features() -> None:
    bars = make_bars(600, seed=7)
    full = build_features(STRATEGY, {"1h": bars, "4h": resample(bars, "4h")}, compute=compute)
    cut = bars.iloc[:402]  # ends inside a 4h bar
    partial = build_features(STRATEGY, {"1h": cut, "4h": resample(cut, "4h")}, compute=compute)
    # The last 4h bar of `cut` may be incomplete in `partial`, but it must never be visible
    # before it closes, so every row of `partial` equals the same row of `full`.
    pd.testing.assert_frame_equal(partial, full.iloc[:402])


def test_default_indicator_module_is_used_when_present() -> None:
    pytest.importorskip("ktrdr.indicators")
    bars = make_bars(400, seed=2)
    feats = build_features(STRATEGY, {"1h": bars, "4h": resample(bars, "4h")})  # no compute: real registry
    assert list(feats.columns) == feature_names(STRATEGY, ["1h", "4h"])
    assert len(feats.dropna()) > 300
