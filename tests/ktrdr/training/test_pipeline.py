from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from ktrdr.strategy import StrategyError
from ktrdr.strategy.schema import Training
from ktrdr.training import ModelBundle, build_features, decide, load_bundle, predict, target_positions, train_strategy
from ktrdr.training.device import PROFILES
from ktrdr.training.trainer import TrainerConfig
from tests.ktrdr.training.synthetic import compute, make_bars, resample, strategy


def _bars(pattern: str, n: int = 6000, seed: int = 1) -> dict[str, pd.DataFrame]:
    bars = make_bars(n, seed=seed, pattern=pattern)
    return {"1h": bars, "4h": resample(bars, "4h")}


@pytest.fixture(scope="module")
def planted() -> tuple[Any, dict[str, pd.DataFrame]]:
    bars = _bars("mean_reversion")
    return train_strategy(strategy(timeframes=["1h", "4h"]), bars, compute=compute, device="cpu"), bars


def test_planted_pattern_beats_majority_baseline(planted: tuple[Any, Any]) -> None:
    result, _ = planted
    ev = result.evaluation
    assert ev["samples"] > 500
    assert ev["accuracy"] > ev["majority_baseline_accuracy"] + 0.05
    assert ev["accuracy"] > ev["train_majority_baseline_accuracy"] + 0.05
    assert np.array(ev["confusion_matrix"]).sum() == ev["samples"]
    assert set(ev["per_class"]) == {"BUY", "SELL", "HOLD"}
    assert result.metrics["test_edge"] == pytest.approx(ev["edge"])


@pytest.mark.parametrize("seed", [2, 3])
def test_no_pattern_reports_no_edge(seed: int) -> None:
    # Multi-timeframe inputs on a pure random walk: any look-ahead in alignment, labels or
    # scaling would show up here as an "edge".
    result = train_strategy(strategy(timeframes=["1h", "4h"]), _bars("none", seed=seed), compute=compute, device="cpu")
    assert result.evaluation["edge"] < 0.03


def test_bundle_round_trip_gives_same_predictions(planted: tuple[Any, Any]) -> None:
    result, bars = planted
    bundle = load_bundle(result.bundle)
    assert bundle.feature_names == result.feature_names
    assert bundle.strategy["name"] == "synthetic" and "fuzzy_sets" in bundle.strategy
    assert bundle.evaluation["accuracy"] == result.evaluation["accuracy"]
    assert {"torch", "numpy", "pandas", "python"} <= set(bundle.versions)
    features = build_features(bundle.strategy, bars, compute=compute)
    probs = predict(bundle, features)
    again = predict(ModelBundle.from_bytes(bundle.to_bytes()), features[features.columns[::-1]])
    pd.testing.assert_frame_equal(probs, again)
    valid = probs.dropna()
    assert probs.iloc[:15].isna().all().all()  # indicator warm-up rows
    np.testing.assert_allclose(valid.sum(axis=1), 1.0, rtol=1e-6)
    signals = decide(probs, 0.5)
    assert set(signals.unique()) <= {"BUY", "SELL", "HOLD"}


def test_signals_to_positions() -> None:
    idx = pd.date_range("2024", periods=5, freq="1h", tz="UTC")
    probs = pd.DataFrame(
        [[0.7, 0.2, 0.1], [0.4, 0.3, 0.3], [0.1, 0.8, 0.1], [np.nan] * 3, [0.6, 0.1, 0.3]],
        index=idx,
        columns=["BUY", "SELL", "HOLD"],
    )
    signals = decide(probs, confidence_threshold=0.5)
    assert signals.tolist() == ["BUY", "HOLD", "SELL", "HOLD", "BUY"]
    assert target_positions(signals).tolist() == [1, 1, 0, 0, 1]
    assert target_positions(signals, allow_short=True).tolist() == [1, 1, -1, -1, 1]


def test_pipeline_checkpoint_resume_matches() -> None:
    bars = _bars("mean_reversion", n=2500)
    cfg = strategy(epochs=4, checkpoint_every=2, early_stopping={"enabled": False})
    saved: dict[int, bytes] = {}
    full = train_strategy(
        cfg,
        bars,
        compute=compute,
        device="cpu",
        seed=7,
        checkpoint=lambda b, e: saved.__setitem__(e, b),
        request={"strategy": "synthetic"},
    )
    resumed = train_strategy(cfg, bars, compute=compute, device="cpu", seed=7, resume_from=saved[2])
    assert resumed.metrics["resumed_from_epoch"] == 2
    losses = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")
    assert [[h[k] for k in losses] for h in resumed.history] == [[h[k] for k in losses] for h in full.history]
    assert resumed.evaluation["confusion_matrix"] == full.evaluation["confusion_matrix"]


def test_progress_is_monotonic_and_ends_at_100() -> None:
    seen: list[float] = []
    train_strategy(
        strategy(epochs=3),
        _bars("none", n=1500),
        compute=compute,
        device="cpu",
        progress=lambda **kw: seen.append(kw["percentage"]) if kw.get("percentage") is not None else None,
    )
    assert seen[0] == 0.0 and seen[-1] == 100.0
    assert seen == sorted(seen)


def test_the_schema_is_the_one_source_of_training_defaults() -> None:
    assert TrainerConfig() == TrainerConfig.from_training(Training())
    assert Training().batch_size == 32


def test_a_strategy_without_a_batch_size_trains_with_the_schemas_default_whatever_the_device_profile() -> None:
    unset = strategy(epochs=1)
    del unset["training"]["batch_size"]
    bars = _bars("none", n=1500)
    on_cpu = train_strategy(unset, bars, compute=compute, device="cpu")
    # The CUDA profile changes how a step runs there, never the batch size.
    cuda_tuned = train_strategy(unset, bars, compute=compute, device="cpu", device_profile=PROFILES["cuda"])
    assert on_cpu.metrics["batch_size"] == cuda_tuned.metrics["batch_size"] == Training().batch_size


def test_a_batch_size_the_strategy_sets_always_wins() -> None:
    pinned = train_strategy(strategy(epochs=1, batch_size=48), _bars("none", n=1500), compute=compute, device="cpu",
                            device_profile=PROFILES["cuda"])
    assert pinned.metrics["batch_size"] == 48


@pytest.mark.parametrize(("training", "field"), [
    ({"batchsize": 64}, "training.batchsize"),
    ({"split": {"train": 0.7, "val": 0.15, "test": 0.15}}, "training.split.val"),
    ({"labels": {"source": "zigzag", "treshold": 0.01}}, "training.labels.treshold"),
])
def test_a_training_key_the_schema_refuses_is_refused_by_the_pipeline_naming_it(
        training: dict[str, Any], field: str) -> None:
    with pytest.raises(StrategyError) as refused:
        train_strategy(strategy(epochs=1, **training), _bars("none", n=500), compute=compute, device="cpu")
    assert field in refused.value.fields


def test_a_rule_based_strategy_is_refused_by_the_pipeline() -> None:
    with pytest.raises(ValueError, match="rule-based"):
        train_strategy("sma_crossover", _bars("none", n=500), device="cpu")
