from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from ktrdr.strategy.schema import Labels
from ktrdr.training.labels import BUY, HOLD, SELL, LabelConfig, forward_return_labels, zigzag_labels
from ktrdr.training.split import chronological_split


def _series(values: list[float]) -> pd.Series:
    return pd.Series(values, index=pd.date_range("2024-01-01", periods=len(values), freq="1h", tz="UTC"))


def test_zigzag_on_hand_made_series() -> None:
    close = _series([100, 101, 106, 104, 99, 93, 95, 96, 96.5, 97])
    labels = zigzag_labels(close, threshold=0.05, lookahead=3)
    # t0: next 3 = 101,106,104 -> +6% up, no 5% drop -> BUY
    # t1: 106,104,99 -> +4.95% up (< 5%), -1.98% -> HOLD
    # t2: 104,99,93 -> drop 12.3% -> SELL
    # t3: 99,93,95 -> drop 10.6% -> SELL
    # t4: 93,95,96 -> drop 6.1% vs gain 3.0% -> SELL
    # t5: 95,96,96.5 -> +3.8% -> HOLD
    # t6: 96,96.5,97 -> +2.1% -> HOLD ; t7..t9: not enough future -> NaN
    expected = [BUY, HOLD, SELL, SELL, SELL, HOLD, HOLD]
    assert labels.iloc[:7].astype(int).tolist() == expected
    assert labels.iloc[7:].isna().all()


def test_zigzag_larger_excursion_wins() -> None:
    close = _series([100, 106, 88, 100])
    assert zigzag_labels(close, 0.05, 2).iloc[0] == SELL  # +6% but -12% within the window


def test_forward_return_labels() -> None:
    close = _series([100, 102, 100, 99, 99.5])
    labels = forward_return_labels(close, threshold=0.01, horizon=2)
    assert labels.iloc[:3].astype(int).tolist() == [HOLD, SELL, HOLD]
    assert labels.iloc[3:].isna().all()


def test_label_config_reads_the_first_ktrdrs_keys_through_the_schema() -> None:
    labels = Labels.model_validate({"source": "zigzag", "zigzag_threshold": 0.03, "label_lookahead": 12})
    cfg = LabelConfig.from_labels(labels)
    assert (cfg.source, cfg.threshold, cfg.lookahead) == ("zigzag", 0.03, 12)


def test_labels_only_look_forward() -> None:
    rng = np.random.default_rng(0)
    close = _series(list(100 * np.exp(np.cumsum(rng.normal(0, 0.01, 300)))))
    full = zigzag_labels(close, 0.02, 10)
    # Changing the past must not change a later label.
    changed = close.copy()
    changed.iloc[:100] *= 1.5
    later = zigzag_labels(changed, 0.02, 10)
    pd.testing.assert_series_equal(full.iloc[100:], later.iloc[100:])


def test_split_boundaries() -> None:
    s = chronological_split(1000)
    assert (s.train, s.val, s.test) == (slice(0, 700), slice(700, 850), slice(850, 1000))
    g = chronological_split(1000, 0.8, 0.1, 0.1, gap=5)
    assert (g.train, g.val, g.test) == (slice(0, 800), slice(805, 900), slice(905, 1000))
    assert g.sizes() == (800, 95, 95)
    none = chronological_split(10, 1.0, 0.0, 0.0)
    assert none.sizes() == (10, 0, 0)
    with pytest.raises(ValueError):
        chronological_split(0)
