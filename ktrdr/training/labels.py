"""Training labels: BUY=0, SELL=1, HOLD=2, computed from the base timeframe's closes.

Labels look *forward* from the close of bar ``t`` (bars ``t+1 .. t+lookahead``) while features
look backward (up to the close of bar ``t``), so nothing a label knows is visible to the
features of the same row. Rows whose label would need bars beyond the data are NaN and must
be dropped, never filled.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from ktrdr.strategy.schema import Labels

BUY, SELL, HOLD = 0, 1, 2
CLASS_NAMES = ("BUY", "SELL", "HOLD")


def zigzag_labels(close: pd.Series, threshold: float, lookahead: int) -> pd.Series:
    """Label each bar by the larger excursion within the next ``lookahead`` closes.

    BUY when the highest future close gains at least ``threshold`` (relative) and that gain
    exceeds the deepest drop; SELL when the deepest drop reaches ``threshold`` and exceeds
    the gain; HOLD otherwise (including ties). The last ``lookahead`` bars are NaN.
    """
    if lookahead < 1 or threshold <= 0:
        raise ValueError("zigzag needs lookahead >= 1 and threshold > 0")
    c = close.to_numpy(dtype=np.float64)
    out = np.full(len(c), np.nan)
    n = len(c) - lookahead
    if n > 0:
        future = sliding_window_view(c[1:], lookahead)[:n]
        gain = future.max(axis=1) / c[:n] - 1.0
        loss = 1.0 - future.min(axis=1) / c[:n]
        lab = np.full(n, HOLD, dtype=np.float64)
        lab[(gain >= threshold) & (gain > loss)] = BUY
        lab[(loss >= threshold) & (loss > gain)] = SELL
        # A NaN close anywhere in the window makes the label unknowable.
        lab[np.isnan(gain) | np.isnan(loss)] = np.nan
        out[:n] = lab
    return pd.Series(out, index=close.index, name="label")


def forward_return_labels(close: pd.Series, threshold: float, horizon: int) -> pd.Series:
    """BUY if ``close[t+horizon]/close[t]-1 >= threshold``, SELL if ``<= -threshold``, else HOLD."""
    if horizon < 1 or threshold < 0:
        raise ValueError("forward return needs horizon >= 1 and threshold >= 0")
    c = close.to_numpy(dtype=np.float64)
    out = np.full(len(c), np.nan)
    if len(c) > horizon:
        ret = c[horizon:] / c[:-horizon] - 1.0
        lab = np.full(len(ret), HOLD, dtype=np.float64)
        lab[ret >= threshold] = BUY
        lab[ret <= -threshold] = SELL
        lab[np.isnan(ret)] = np.nan
        out[:-horizon] = lab
    return pd.Series(out, index=close.index, name="label")


@dataclass(frozen=True)
class LabelConfig:
    source: str = "zigzag"  # "zigzag" | "forward_return"
    threshold: float = 0.05
    lookahead: int = 20  # zigzag window, or forward-return horizon

    @classmethod
    def from_labels(cls, labels: Labels) -> LabelConfig:
        """The validated strategy's ``training.labels`` (the first ktrdr's names are read there)."""
        return cls(labels.source, labels.threshold, labels.lookahead)

    def compute(self, close: pd.Series) -> pd.Series:
        if self.source == "zigzag":
            return zigzag_labels(close, self.threshold, self.lookahead)
        return forward_return_labels(close, self.threshold, self.lookahead)
