"""Helpers for tests of backtests and sweeps: synthetic data in the ``data`` bucket, backtest workers."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from nats.aio.client import Client

from ktrdr.data import DataStore, synth
from ktrdr.data.shared import publish_dataset
from ktrdr.runtime.worker import Worker
from subjects import names
from tests.conftest import MakeWorker
from worker_backtest.handler import BacktestHandler, ProgressHook

SYMBOL, TIMEFRAME = "SYNTH", "1h"
# 2,000 hourly bars from 2020-01-01 00:00 UTC: through 2020-03-24 07:00.
BARS = 2000


async def publish_synth(nc: Client, root: Path, *, symbol: str = SYMBOL, bars: int = BARS, seed: int = 7,
                        start: str = "2020-01-01") -> DataStore:
    """Store synthetic bars in a publisher's own store and publish them to the ``data`` bucket."""
    store = DataStore(root=root)
    store.save(symbol, TIMEFRAME, synth(symbol, TIMEFRAME, start, bars, seed))
    await publish_dataset(nc.jetstream(), store, symbol, TIMEFRAME)
    return store


async def backtest_worker(make_worker: MakeWorker, worker_id: str, data_dir: Path, *,
                          on_progress: ProgressHook | None = None, **settings: Any) -> Worker:
    handler = BacktestHandler(data_dir, on_progress=on_progress)
    return await make_worker(worker_id, capabilities=[names.CAP_BACKTEST_CPU], worker_type="backtest",
                             handlers={"backtesting": handler, "backtest_block": handler.run_block}, **settings)


def backtest_params(**overrides: Any) -> dict[str, Any]:
    return {"strategy": "sma_crossover", "symbol": SYMBOL, "timeframe": TIMEFRAME, **overrides}
