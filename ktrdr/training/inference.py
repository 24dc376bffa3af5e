"""Positions from a trained model: what a backtest of a neuro-fuzzy strategy trades on.

Features are computed for every bar at once, exactly as in training (same indicators, fuzzy
sets, timeframe alignment), so a bar's decision only uses what was known at its close.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

from ktrdr.training.bundle import ModelBundle, predict
from ktrdr.training.features import IndicatorFn, build_features
from ktrdr.training.signals import decide, target_positions

DEFAULT_CONFIDENCE = 0.5


def decision_settings(strategy: Mapping[str, Any]) -> tuple[float, bool]:
    """The confidence threshold (default 0.5) and whether SELL means short (default: flat)."""
    decisions = strategy.get("decisions") or {}
    threshold = float(decisions.get("confidence_threshold", DEFAULT_CONFIDENCE))
    allow_short = bool(decisions.get("allow_short", strategy.get("allow_short", False)))
    return threshold, allow_short


def model_positions(bundle_bytes: bytes | ModelBundle, bars_by_timeframe: Mapping[str, pd.DataFrame], *,
                    compute: IndicatorFn | None = None, carried: tuple[int, int] | None = None) -> np.ndarray:
    """+1/0/-1 after each bar of the bundle's base timeframe (``bars_by_timeframe[base]``, in its order).

    Warm-up bars (incomplete features) hold no position; a HOLD keeps the previous position.
    ``carried``: (bar, side), a position held before that base bar (carried in from another
    backtest): the decisions walk from it, from that bar on; the bars before it are flat.
    """
    bundle = bundle_bytes if isinstance(bundle_bytes, ModelBundle) else ModelBundle.from_bytes(bytes(bundle_bytes))
    base = bundle.base_timeframe
    if base not in bars_by_timeframe:
        raise KeyError(f"the model decides on {base} bars; got {sorted(bars_by_timeframe)}")
    missing = sorted(set(bundle.timeframes) - set(bars_by_timeframe))
    if missing:
        raise KeyError(f"the model needs bars of {missing} too")
    strategy = bundle.strategy
    # Exactly the timeframes it was trained on: nn_inputs "all" must expand as it did then.
    used = {tf: bars_by_timeframe[tf] for tf in bundle.timeframes or [base]}
    features = build_features(strategy, used, compute=compute)
    threshold, allow_short = decision_settings(strategy)
    decisions = decide(predict(bundle, features), threshold)
    index = pd.DatetimeIndex(bars_by_timeframe[base].index)
    if carried is None:
        positions = target_positions(decisions, allow_short=allow_short)
        aligned = positions.reindex(index).ffill().fillna(0)
        return aligned.to_numpy(dtype=np.int8)
    at, side = carried
    side = side if allow_short else max(side, 0)
    walked = target_positions(decisions[decisions.index >= index[at]], allow_short=allow_short, initial=side)
    out = np.zeros(len(index), dtype=np.int8)
    out[at:] = walked.reindex(index[at:]).ffill().fillna(side).to_numpy(dtype=np.int8)
    return out
