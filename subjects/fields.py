"""Field types that several payloads share."""

from __future__ import annotations

from typing import Final, Literal, get_args

# The bar timeframes ktrdr knows, everywhere: data store, strategies, IB downloads, training.
Timeframe = Literal["1m", "5m", "15m", "30m", "1h", "4h", "1d", "1w"]
TIMEFRAMES: Final[tuple[str, ...]] = get_args(Timeframe)
