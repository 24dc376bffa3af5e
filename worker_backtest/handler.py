"""The ``backtesting`` handler: dataset from the ``data`` bucket, ``run_backtest``, result to ``results``.

Datasets come through the worker's local :class:`DataStore` (``settings.data_dir``), refreshed from
the Object Store by digest, so a worker on another machine needs nothing on its disk beforehand.
The full result goes to the ``results`` bucket under the op id; the op record gets the metrics.

A neuro-fuzzy strategy trades its model's decisions: the version named (``--model name@3``) or the
latest. The result and the record (``info.model``) name the version used, and when the backtest's
bars overlap the bars the model was trained on, the record gets an ``in-sample`` warning: such a
return says how well the model fits data it has seen, not how it trades.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ktrdr.backtest import BacktestConfig, run_backtest
from ktrdr.backtest.block import run_block
from ktrdr.data import DataStore
from ktrdr.data.store import between
from ktrdr.optypes.backtest_block import BacktestBlockParams, BlockSummary
from ktrdr.runtime.context import JobContext
from ktrdr.runtime.services import DatasetMissing
from ktrdr.strategy import NeuroFuzzyStrategy, RuleStrategy, Strategy, load_strategy, with_parameters
from subjects.names import DATA_OBJECTS
from subjects.params import BacktestParams
from subjects.results import BacktestSummary

log = logging.getLogger(__name__)

# Datasets kept in memory across jobs, by digest (the least recently used goes first).
FRAMES_KEPT = 8
BLOCK_PROGRESS_S = 0.1

# Called with every progress update once it is handed over for publishing (tests slow backtests with it).
ProgressHook = Callable[[JobContext, dict[str, Any]], None]


class MissingData(LookupError):
    pass


@dataclass(frozen=True, kw_only=True)
class ModelUse:
    """The model version a backtest traded, and how its bars relate to the model's training bars."""

    ref: str  # name@version
    trained_on: tuple[pd.Timestamp, pd.Timestamp] | None  # first and last training bar; None: not recorded
    in_sample_bars: int | None  # backtest bars inside that range; None: unknown

    def warning(self, bars: int) -> str | None:
        if self.trained_on is None:
            return (f"model {self.ref} does not record the bars it was trained on: this backtest may be "
                    "in-sample")
        if not self.in_sample_bars:
            return None
        start, end = (_day(t) for t in self.trained_on)
        return (f"in-sample: the backtest range overlaps the model's training data ({start}..{end}): "
                f"{self.in_sample_bars:,} of {bars:,} bars")

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.ref, "model_trained_on": None if self.trained_on is None else {
            "start": self.trained_on[0].isoformat(), "end": self.trained_on[1].isoformat()},
            "in_sample_bars": self.in_sample_bars}


class BacktestHandler:
    def __init__(self, data_dir: Path, *, on_progress: ProgressHook | None = None) -> None:
        self.store = DataStore(root=data_dir)
        self.on_progress = on_progress
        self._frames: OrderedDict[tuple[str, str, str], pd.DataFrame] = OrderedDict()
        self._frames_lock = threading.Lock()  # handlers run in threads, a slot each

    def __call__(self, ctx: JobContext, p: BacktestParams) -> BacktestSummary:
        strategy = _strategy(p)
        ctx.progress(percentage=0.0, step="data", message=f"loading {p.symbol} {p.timeframe}")
        bars, warm = self._bars(ctx, p, p.timeframe, warmup=p.warmup_bars)
        ctx.raise_if_cancelled()
        wanted, model = None, None
        if isinstance(strategy, NeuroFuzzyStrategy):
            wanted, model = self._model_positions(ctx, p, strategy, bars, warm)
            ctx.info(**model.to_dict())
            warning = model.warning(len(bars) - warm)
            if warning is not None:
                ctx.warn(warning)

        def progress(**update: Any) -> None:
            # The engine passes every field, unset ones as None: send only what it set.
            update = {k: v for k, v in update.items() if v is not None}
            ctx.progress(**update)
            if self.on_progress is not None:
                self.on_progress(ctx, update)

        config = BacktestConfig(initial_capital=p.capital, commission=p.commission, slippage=p.slippage,
                                sizing=p.sizing, fraction=p.fraction, close_at_end=p.close_at_end,
                                timeframe=p.timeframe, symbol=p.symbol)
        result = run_backtest(bars, strategy, config, cancel=ctx.token, progress=progress, wanted=wanted,
                              trade_from=warm, carry_in=p.carry_in)
        # The engine's last cancellation check can precede its last chunk: do not store a cancelled run.
        ctx.raise_if_cancelled()
        data = result.to_json_bytes(include_curves=p.include_curves)
        size = ctx.call(ctx.results.put(data, description=f"backtest {result.strategy} {p.symbol} {p.timeframe}"))
        return BacktestSummary(strategy=result.strategy, symbol=p.symbol, timeframe=p.timeframe,
                               start=bars.index[warm].isoformat(), end=bars.index[-1].isoformat(),
                               **({} if model is None else model.to_dict()),
                               parameters=result.parameters, metrics=result.metrics,
                               result_bytes=size, curves=p.include_curves, warmup_bars=warm,
                               carry_out=None if p.close_at_end else result.carry_out())

    def run_block(self, ctx: JobContext, p: BacktestBlockParams) -> BlockSummary:
        """A block of a sweep's variants: one data load, shared indicators, one columnar result."""
        base = load_strategy(p.strategy)
        if not isinstance(base, RuleStrategy):
            raise ValueError(f"{base.name} is neuro-fuzzy: its decisions come from its model, a sweep varies "
                             "a rule-based strategy's parameters")
        variants = p.variants()
        total = len(variants)
        self._report(ctx, percentage=0.0, step="data", items_done=0, items_total=total,
                     message=f"loading {p.symbol} {p.timeframe}")
        bars, warm = self._bars(ctx, p, p.timeframe, warmup=p.warmup_bars)
        ctx.raise_if_cancelled()
        last = 0.0

        def progress(done: int, of: int) -> None:
            # Each update is a model and a message: a few a second is all anyone sees.
            nonlocal last
            now = time.monotonic()
            if done == 0 or done == of or now - last >= BLOCK_PROGRESS_S:
                last = now
                self._report(ctx, percentage=100.0 * done / of, step="variants", items_done=done, items_total=of,
                             message=f"{done} of {of} variants")

        progress(0, total)

        config = BacktestConfig(initial_capital=p.capital, commission=p.commission, slippage=p.slippage,
                                sizing=p.sizing, fraction=p.fraction, close_at_end=p.close_at_end,
                                timeframe=p.timeframe, symbol=p.symbol)
        block = run_block(bars, base, variants, config, base=p.parameters, cancel=ctx.token, progress=progress,
                          trade_from=warm)
        ctx.raise_if_cancelled()
        data = block.to_json_bytes()
        size = ctx.call(ctx.results.put(data, description=f"sweep block {p.first}..{p.stop} {p.symbol} {p.timeframe}"))
        # Ranked on the block's columns: a dict per variant cost more than the block's JSON.
        ranked = [i for i in range(total) if i not in block.errors]
        order, why = p.objective.order(block.metrics, ranked, parameters=lambda i: {**p.parameters, **variants[i]})
        value = block.metrics.get(p.metric)
        top = [{"index": p.first + i, "parameters": variants[i], "value": value[i] if value is not None else None}
               for i in order[: min(p.top, len(order) - len(why))]]
        return BlockSummary(first=p.first, stop=p.stop, variants=total, completed=total - len(block.errors),
                            failed=len(block.errors), result_bytes=size, top=top, warmup_bars=warm)

    def _report(self, ctx: JobContext, **update: Any) -> None:
        ctx.progress(**update)
        if self.on_progress is not None:
            self.on_progress(ctx, update)

    def _bars(self, ctx: JobContext, p: BacktestParams, timeframe: str, *, warmup: int = 0,
              start: pd.Timestamp | None = None) -> tuple[pd.DataFrame, int]:
        """The window's bars, after up to ``warmup`` bars before it (as many as the data has), and how
        many of those there are. ``start``: from there instead of ``p.start``."""
        source = self._sync(ctx, p.symbol, timeframe)
        try:
            frame = self._frame(p.symbol, timeframe, source.get("digest"))
            bars = between(frame, start if start is not None else p.start, p.end)
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
        if warmup <= 0:
            return bars, 0
        before = frame[frame.index < bars.index[0]].iloc[-warmup:]
        return pd.concat([before, bars]), len(before)

    def _frame(self, symbol: str, timeframe: str, digest: str | None) -> pd.DataFrame:
        """The whole dataset, kept in memory by digest across jobs: a sweep's blocks and a
        walk-forward's backtests read the same bars again and again. Data only local (no digest) is
        read from disk each time, as it may change under us."""
        if digest is None:
            return self.store.load(symbol, timeframe)
        key = (symbol, timeframe, digest)
        with self._frames_lock:
            frame = self._frames.get(key)
            if frame is not None:
                self._frames.move_to_end(key)
                return frame
        frame = self.store.load(symbol, timeframe)
        with self._frames_lock:
            self._frames[key] = frame
            while len(self._frames) > FRAMES_KEPT:
                self._frames.popitem(last=False)
        return frame

    def _sync(self, ctx: JobContext, symbol: str, timeframe: str) -> dict[str, Any]:
        """Make the bucket's version local (a no-op when the digest is cached); say where it came from."""
        try:
            got = ctx.call(ctx.datasets.fetch(self.store, symbol, timeframe))
        except DatasetMissing:
            # Data imported while NATS was down exists only on this machine: use it, say so.
            return {"source": "local"}
        return {"source": "bucket", "object": got.name, "digest": got.digest, "cached": got.cached}

    def _model_positions(self, ctx: JobContext, p: BacktestParams, strategy: NeuroFuzzyStrategy,
                         bars: pd.DataFrame, warm: int) -> tuple[np.ndarray, ModelUse]:
        """A neuro-fuzzy strategy trades its trained model's decisions (+1/0/-1 per base bar)."""
        # Deferred: the training stack (torch) is loaded only by workers that run such strategies.
        from ktrdr.models.registry import parse_model_ref
        from ktrdr.training.inference import model_positions

        name, version = parse_model_ref(p.model or strategy.name)
        ctx.progress(step="model", message=f"loading model {name}@{version or 'latest'}")
        # The version is resolved once: "latest" read again to load could be a newer one.
        found = ctx.call(ctx.models.show(name, version))
        bundle = ctx.call(ctx.models.load(found.name, found.version))
        by_timeframe = {p.timeframe: bars}
        for tf in strategy.training_data.timeframes:
            if tf not in by_timeframe:
                # From the first warm-up bar: the other timeframes' features warm up alongside.
                by_timeframe[tf] = self._bars(ctx, p, tf, start=bars.index[0])[0]
        trained_on = _training_range(found.metadata)
        inside = None
        if trained_on is not None:
            index = pd.DatetimeIndex(bars.index[warm:])
            inside = int(((index >= trained_on[0]) & (index <= trained_on[1])).sum())
        # A carried position: the model's decisions walk on from it, from the bar before the window.
        carried = None if p.carry_in is None else (
            max(warm - 1, 0), 0 if p.carry_in.position is None else p.carry_in.position.side)
        return (model_positions(bundle, by_timeframe, carried=carried),
                ModelUse(ref=found.ref, trained_on=trained_on, in_sample_bars=inside))


def _strategy(p: BacktestParams) -> Strategy:
    # The loader admission uses: a packaged name, a file name in this host's strategies directory or
    # YAML text, never a path. A StrategyError names the strategy and every bad field: the op's error.
    strategy = load_strategy(p.strategy)
    return with_parameters(strategy, p.parameters) if p.parameters else strategy


def _training_range(metadata: dict[str, Any]) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """The first and last bar a model was trained on (validation and test parts included), from its
    registry metadata; None when it has none (a model stored by hand)."""
    try:
        start, end = (_utc(pd.Timestamp(metadata[k])) for k in ("start", "end"))
    except (KeyError, TypeError, ValueError):
        return None
    return None if pd.isna(start) or pd.isna(end) else (start, end)


def _utc(ts: pd.Timestamp) -> pd.Timestamp:
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def _day(ts: pd.Timestamp) -> str:
    return ts.strftime("%Y-%m-%d") if ts == ts.normalize() else ts.strftime("%Y-%m-%d %H:%M")


def _when(value: object, default: str) -> str:
    return default if value is None else pd.Timestamp(value).isoformat()  # type: ignore[arg-type]
