"""Turning class probabilities into trading decisions and target positions."""

from __future__ import annotations

import numpy as np
import pandas as pd

LONG, FLAT, SHORT = 1, 0, -1


def decide(probabilities: pd.DataFrame, confidence_threshold: float = 0.5) -> pd.Series:
    """ "BUY"/"SELL"/"HOLD" per row: the most probable class if its probability reaches the
    threshold, otherwise HOLD (an unsure model should not trade). NaN rows give HOLD."""
    probs = probabilities[["BUY", "SELL", "HOLD"]].to_numpy(dtype=np.float64)
    filled = np.nan_to_num(probs, nan=-1.0)
    best = filled.argmax(axis=1)
    confident = filled.max(axis=1) >= confidence_threshold
    names = np.array(["BUY", "SELL", "HOLD"])
    out = np.where(confident, names[best], "HOLD")
    return pd.Series(out, index=probabilities.index, name="signal")


def target_positions(signals: pd.Series, allow_short: bool = False, initial: int = FLAT) -> pd.Series:
    """Desired position after each bar: BUY -> long, SELL -> short (or flat when shorting is
    not allowed), HOLD -> keep the previous position."""
    mapping = {"BUY": float(LONG), "SELL": float(SHORT if allow_short else FLAT)}
    pos = signals.map(mapping).astype("float64")
    pos = pos.ffill().fillna(float(initial))
    return pos.astype(np.int64).rename("position")
