"""Argument checks shared by the indicator functions."""

from __future__ import annotations

import numpy as np
import pandas as pd


def source_values(df: pd.DataFrame, source: str) -> np.ndarray:
    if source not in df.columns:
        raise ValueError(f"source column {source!r} not in bars (columns: {list(df.columns)})")
    return df[source].to_numpy(dtype=np.float64)


def check_period(name: str, value: int) -> None:
    if isinstance(value, bool) or int(value) != value or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
