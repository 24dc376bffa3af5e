"""The ``data_load`` handler: IB history → local DataStore → the shared ``data`` bucket.

Each completed segment is merged into the store at once (a cancel, a failure or a crash keeps
every segment already fetched), the dataset is republished to the bucket now and then while the
download runs and always at its end, and segments IB had no data for are recorded in the op
record. A dropped gateway is waited out (the host's :class:`Gateway` reconnects with back-off)
and the download resumes with the segment that was in flight.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pandas as pd

from host_ib.gateway import Gateway
from ktrdr.data.shared import PublishResult, publish_dataset
from ktrdr.data.store import DataStore
from ktrdr.ib.downloader import Downloader, DownloadState, RetryPolicy, StoredRange, plan_download
from ktrdr.ib.errors import ConnectionLost, IbError, NoData, NoSecurityDefinition, RequestTimedOut
from ktrdr.ib.pacing import Pacer
from ktrdr.runtime.context import JobContext
from ktrdr.runtime.settings import WorkerSettings
from subjects.data import DataLoadParams

log = logging.getLogger(__name__)

# A download waits for a dropped gateway in slices this long, checking for cancel in between.
_RECONNECT_SLICE_S = 1.0


def retry_policy(settings: WorkerSettings) -> RetryPolicy:
    """The downloader's etiquette from the host's settings; reconnecting is the Gateway's job."""
    return RetryPolicy(
        pacing_backoff_s=settings.ib_pacing_backoff_s,
        pacing_backoff_max_s=max(600.0, settings.ib_pacing_backoff_s),
        reconnect_delays_s=(0.0,),
        max_reconnect_attempts=max(1, math.ceil(settings.ib_reconnect_give_up_s / _RECONNECT_SLICE_S)),
    )


@dataclass
class _Run:
    """What one op stored and published (reported in the result and the op record)."""

    new_bars: int = 0
    dirty: bool = False  # stored bars not yet in the bucket
    last_publish: float = 0.0
    published: PublishResult | None = None


class DataLoader:
    def __init__(self, *, gateway: Gateway, pacer: Pacer, store: DataStore, settings: WorkerSettings) -> None:
        self.gateway = gateway
        self.pacer = pacer
        self.store = store
        self.settings = settings
        self.downloader = Downloader(source=gateway.client, pacer=pacer, reconnect=self._reconnect,
                                     retry=retry_policy(settings))
        # Two ops on the same dataset must not interleave their read-merge-write of one file.
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)

    async def _reconnect(self) -> None:
        await self.gateway.wait_connected(_RECONNECT_SLICE_S)

    async def run(self, ctx: JobContext) -> dict[str, Any]:
        p = DataLoadParams.model_validate(ctx.params)
        s = self.settings
        ctx.progress(percentage=0.0, step="connect", message=f"waiting for IB at {self.gateway.address}")
        await self.gateway.ensure_connected(ctx.token, give_up_s=s.ib_reconnect_give_up_s)
        earliest = await self._earliest(ctx, p.symbol)
        stored = await asyncio.to_thread(self._stored_range, p.symbol, p.timeframe)
        state = plan_download(symbol=p.symbol, timeframe=p.timeframe, mode=p.mode, start=p.start, end=p.end,
                              stored=stored, earliest=earliest)
        run = _Run(last_publish=time.monotonic())
        drops_before = self.gateway.drops
        try:
            await self.downloader.run(state, on_segment=lambda frame: self._store(ctx, p, frame, run),
                                      progress=ctx.progress, cancel=ctx.token, collect=False)
        except BaseException:
            # A cancelled or failed op keeps its segments: they still reach the bucket (best
            # effort, so the original error is what the op reports).
            if run.dirty:
                await self._publish(ctx, p, run, final=False)
            raise
        finally:
            ctx.info(**_facts(state, reconnects=self.gateway.drops - drops_before))
        if run.dirty:
            await self._publish(ctx, p, run, final=True)
        return {
            "symbol": p.symbol, "timeframe": p.timeframe, "mode": p.mode,
            "segments": len(state.segments), "no_data_segments": len(state.gaps),
            "bars_fetched": state.bars, "new_bars": run.new_bars, "requests": state.requests,
            **(await asyncio.to_thread(self._summary, p.symbol, p.timeframe)),
            "object": run.published.name if run.published else None,
            "digest": run.published.digest if run.published else None,
        }

    async def _earliest(self, ctx: JobContext, symbol: str) -> Any:
        """IB's head timestamp (keeps a backfill from asking for years before a listing).

        An unknown symbol ends the op here with IB's reason; any other failure only costs the
        optimisation, so the download goes on without it.
        """
        while True:
            try:
                info = await self.gateway.client.contract_details(symbol)
                ctx.info(contract={"symbol": info.symbol, "con_id": info.con_id, "sec_type": info.sec_type,
                                   "exchange": info.exchange, "currency": info.currency})
                earliest = await self.gateway.client.earliest_timestamp(symbol)
                ctx.info(earliest_available=earliest.isoformat())
                return earliest
            except NoSecurityDefinition as exc:
                raise NoSecurityDefinition(f"unknown symbol {symbol}: {exc.message}", code=exc.code) from None
            except ConnectionLost:
                await self.gateway.ensure_connected(ctx.token, give_up_s=self.settings.ib_reconnect_give_up_s)
            except (NoData, RequestTimedOut, IbError) as exc:
                log.info("no head timestamp for %s (%s); downloading the whole range", symbol, exc)
                return None

    def _stored_range(self, symbol: str, timeframe: str) -> StoredRange | None:
        if not self.store.exists(symbol, timeframe):
            return None
        index = self.store.load(symbol, timeframe).index
        if index.empty:
            return None
        return StoredRange(first=index[0].to_pydatetime(), last=index[-1].to_pydatetime())

    def _summary(self, symbol: str, timeframe: str) -> dict[str, Any]:
        if not self.store.exists(symbol, timeframe):
            return {"stored_bars": 0, "first": None, "last": None}
        index = self.store.load(symbol, timeframe).index
        return {"stored_bars": len(index), "first": index[0].isoformat() if len(index) else None,
                "last": index[-1].isoformat() if len(index) else None}

    async def _store(self, ctx: JobContext, p: DataLoadParams, frame: pd.DataFrame, run: _Run) -> None:
        if frame.empty:
            return
        # IB reports volume -1 where it has none (MIDPOINT bars of forex); the store wants >= 0.
        frame = frame.assign(volume=frame["volume"].clip(lower=0.0))
        async with self._locks[(p.symbol, p.timeframe)]:
            run.new_bars += await asyncio.to_thread(self.store.merge, p.symbol, p.timeframe, frame)
        run.dirty = True
        if time.monotonic() - run.last_publish >= self.settings.ib_publish_interval_s:
            await self._publish(ctx, p, run, final=False)

    async def _publish(self, ctx: JobContext, p: DataLoadParams, run: _Run, *, final: bool) -> None:
        try:
            async with self._locks[(p.symbol, p.timeframe)]:
                run.published = await publish_dataset(ctx.js, self.store, p.symbol, p.timeframe)
        except Exception as exc:
            if final:
                raise
            # A missed intermediate publish is repaired by the next one.
            log.warning("publishing %s %s failed: %s", p.symbol, p.timeframe, exc)
            return
        run.dirty = False
        run.last_publish = time.monotonic()


def _facts(state: DownloadState, *, reconnects: int) -> dict[str, Any]:
    return {
        "segments_total": len(state.segments),
        "segments_completed": len(state.completed),
        "no_data_gaps": [g.to_dict() for g in state.gaps],
        "bars_fetched": state.bars,
        "requests": state.requests,
        "reconnects": reconnects,
    }
