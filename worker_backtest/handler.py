"""The ``backtesting`` handler: dataset from the ``data`` bucket, ``run_backtest``, result to ``results``.

Datasets come through the worker's local :class:`DataStore` (``settings.data_dir``), refreshed from
the Object Store by digest, so a worker on another machine needs nothing on its disk beforehand.
The full result goes to the ``results`` bucket under the op id; the op record gets the metrics.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError

from ktrdr.backtest import BacktestConfig, run_backtest
from ktrdr.data import DataStore
from ktrdr.data.shared import fetch_dataset
from ktrdr.results import put_result
from ktrdr.runtime.context import JobContext
from ktrdr.strategy import NeuroFuzzyStrategy, Strategy, load_strategy, with_parameters
from subjects.names import DATA_OBJECTS
from subjects.params import BacktestParams

log = logging.getLogger(__name__)

# Called with every progress update once it is handed over for publishing (tests slow backtests with it).
ProgressHook = Callable[[JobContext, dict[str, Any]], None]


class MissingData(LookupError):
    pass


class BacktestHandler:
    def __init__(self, data_dir: Path, *, on_progress: ProgressHook | None = None) -> None:
        self.store = DataStore(root=data_dir)
        self.on_progress = on_progress

    def __call__(self, ctx: JobContext) -> dict[str, Any]:
        p = BacktestParams.model_validate(ctx.params)
        strategy = _strategy(p)
        ctx.progress(percentage=0.0, step="data", message=f"loading {p.symbol} {p.timeframe}")
        bars = self._bars(ctx, p, p.timeframe)
        ctx.raise_if_cancelled()
        wanted = self._model_positions(ctx, p, strategy, bars) if isinstance(strategy, NeuroFuzzyStrategy) else None

        def progress(**update: Any) -> None:
            # The engine passes every field, unset ones as None: send only what it set.
            update = {k: v for k, v in update.items() if v is not None}
            ctx.progress(**update)
            if self.on_progress is not None:
                self.on_progress(ctx, update)

        config = BacktestConfig(initial_capital=p.capital, commission=p.commission, slippage=p.slippage,
                                sizing=p.sizing, fraction=p.fraction, close_at_end=p.close_at_end,
                                timeframe=p.timeframe, symbol=p.symbol)
        result = run_backtest(bars, strategy, config, cancel=ctx.token, progress=progress, wanted=wanted)
        # The engine's last cancellation check can precede its last chunk: do not store a cancelled run.
        ctx.raise_if_cancelled()
        data = result.to_json_bytes(include_curves=p.include_curves)
        size = ctx.run_async(put_result(ctx.js, ctx.op_id, data,
                                        description=f"backtest {result.strategy} {p.symbol} {p.timeframe}"))
        return {"strategy": result.strategy, "symbol": p.symbol, "timeframe": p.timeframe,
                "start": bars.index[0].isoformat(), "end": bars.index[-1].isoformat(),
                "parameters": result.parameters, "metrics": result.metrics,
                "result_bytes": size, "curves": p.include_curves}

    def _bars(self, ctx: JobContext, p: BacktestParams, timeframe: str) -> pd.DataFrame:
        source = self._sync(ctx, p.symbol, timeframe)
        try:
            bars = self.store.load(p.symbol, timeframe, p.start, p.end)
        except FileNotFoundError:
            raise MissingData(f"no data for {p.symbol} {timeframe}: not in the {DATA_OBJECTS!r} bucket nor in "
                              f"{self.store.root}; import it (`ktrdr data import`) or make some "
                              "(`ktrdr data synth`)") from None
        if len(bars) == 0:
            info = self.store.info(p.symbol, timeframe)
            raise MissingData(f"no {p.symbol} {timeframe} bars between {_when(p.start, 'the first bar')} and "
                              f"{_when(p.end, 'the last bar')}: the data covers {_when(info.start, '-')} "
                              f"to {_when(info.end, '-')}")
        ctx.info(**{f"dataset_{timeframe}": {**source, "bars": len(bars)}})
        return bars

    def _sync(self, ctx: JobContext, symbol: str, timeframe: str) -> dict[str, Any]:
        """Make the bucket's version local (a no-op when the digest is cached); say where it came from."""
        try:
            got = ctx.run_async(fetch_dataset(ctx.js, self.store, symbol, timeframe))
        except (BucketNotFoundError, ObjectNotFoundError, NotFoundError):
            # Data imported while NATS was down exists only on this machine: use it, say so.
            return {"source": "local"}
        return {"source": "bucket", "object": got.name, "digest": got.digest, "cached": got.cached}

    def _model_positions(self, ctx: JobContext, p: BacktestParams, strategy: NeuroFuzzyStrategy,
                         bars: pd.DataFrame) -> np.ndarray:
        """A neuro-fuzzy strategy trades its trained model's decisions (+1/0/-1 per base bar)."""
        # Deferred: the training stack (torch) is loaded only by workers that run such strategies.
        from ktrdr.models.registry import load_model
        from ktrdr.training.inference import model_positions

        name, _, version = (p.model or strategy.name).partition("@")
        ctx.progress(step="model", message=f"loading model {name}@{version or 'latest'}")
        bundle = ctx.run_async(load_model(ctx.js, name, version or None))
        by_timeframe = {p.timeframe: bars}
        for tf in strategy.training_data.timeframes:
            if tf not in by_timeframe:
                by_timeframe[tf] = self._bars(ctx, p, tf)
        return model_positions(bundle, by_timeframe)


def _strategy(p: BacktestParams) -> Strategy:
    # The loader admission uses: a packaged name, a file name in this host's strategies directory or
    # YAML text, never a path. A StrategyError names the strategy and every bad field: the op's error.
    strategy = load_strategy(p.strategy)
    return with_parameters(strategy, p.parameters) if p.parameters else strategy


def _when(value: object, default: str) -> str:
    return default if value is None else pd.Timestamp(value).isoformat()  # type: ignore[arg-type]
