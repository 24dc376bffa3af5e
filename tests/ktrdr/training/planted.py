"""A neuro-fuzzy strategy on the real indicators and synthetic bars with a planted, learnable
mean-reversion pattern (``synth(mean_reversion=0.3)``): shared by the training integration tests."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from nats.js import JetStreamContext

from ktrdr.data import DataStore, synth
from ktrdr.data.shared import publish_dataset
from ktrdr.models import save_model
from ktrdr.models.registry import register_model

SYMBOL = "PLANT"
TIMEFRAME = "1h"

STRATEGY_YAML = """\
name: planted
version: "3.0"
indicators:
  rsi_14: {type: rsi, period: 14}
  roc_5: {type: roc, period: 5}
fuzzy_sets:
  rsi_zone:
    indicator: rsi_14
    low: [0, 0, 35, 50]
    mid: [35, 50, 65]
    high: [50, 65, 100, 100]
  roc_zone:
    indicator: roc_5
    down: {type: gaussian, mean: -1.0, sigma: 0.6}
    flat: {type: gaussian, mean: 0, sigma: 0.4}
    up: {type: gaussian, mean: 1.0, sigma: 0.6}
nn_inputs:
  - {fuzzy_set: rsi_zone, timeframes: [1h]}
  - {fuzzy_set: roc_zone, timeframes: [1h]}
model:
  type: mlp
  architecture: {hidden_layers: [16], dropout: 0.0}
decisions: {confidence_threshold: 0.5}
training:
  epochs: 10
  batch_size: 64
  learning_rate: 0.005
  labels: {source: forward_return, threshold: 0.002, lookahead: 4}
  early_stopping: {enabled: false}
training_data: {symbols: [PLANT], timeframes: [1h]}
"""


def strategy_yaml(**training: Any) -> str:
    """The strategy's YAML with ``training`` keys overridden (epochs, batch_size, ...); a key given
    None is left out, so the schema's default applies."""
    doc = yaml.safe_load(STRATEGY_YAML)
    doc["training"].update(training)
    doc["training"] = {k: v for k, v in doc["training"].items() if v is not None}
    return yaml.safe_dump(doc, sort_keys=False)


def planted_bars(bars: int = 3000, seed: int = 7) -> pd.DataFrame:
    return synth(SYMBOL, TIMEFRAME, bars=bars, seed=seed, mean_reversion=0.3)


async def publish_planted_bars(js: JetStreamContext, root: Path, bars: int = 3000) -> pd.DataFrame:
    """Put planted bars in the ``data`` bucket, as `ktrdr data` would, and return them."""
    df = planted_bars(bars)
    store = DataStore(root=root)
    store.save(SYMBOL, TIMEFRAME, df)
    await publish_dataset(js, store, SYMBOL, TIMEFRAME)
    return df


async def store_planted_model(js: JetStreamContext, bars: pd.DataFrame) -> str:
    """Train the strategy's model for one epoch on ``bars`` and store it as the training handler
    does (its metadata records the first and last bar), registered as the coordinator does when
    that training completes (``js`` holds the coordinator's credential); returns ``name@version``."""
    from ktrdr.training import train_strategy  # torch: only for the tests that train

    result = await asyncio.to_thread(train_strategy, strategy_yaml(epochs=1), {TIMEFRAME: bars}, device="cpu")
    metadata = {"strategy": "planted", "symbol": SYMBOL, "timeframes": [TIMEFRAME],
                "start": str(bars.index[0]), "end": str(bars.index[-1])}
    version = await save_model(js, "planted", result.bundle, metadata)
    await register_model(js, "planted", version)
    return f"planted@{version}"
