"""The ``data_load`` handler: IB history → local DataStore → the shared ``data`` bucket.

Each completed segment is merged into the store at once (a cancel, a failure or a crash keeps
every segment already fetched), the dataset is republished to the bucket now and then while the
download runs and always at its end, and segments IB had no data for are recorded in the op
record. A dropped gateway is waited out (the host's :class:`Gateway` reconnects, with the host's
one reconnect policy) and the download resumes with the segment that was in flight.

Hosts take over from each other, so before it writes, a host merges in what the bucket holds
(a publish replaces the object: bars another host published must not vanish). Each publish
during a download is followed by a checkpoint of the plan (``checkpoints`` store, under the op
id); the retry of an attempt whose host died resumes after the segments already in the bucket.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import pandas as pd

from host_ib.gateway import Gateway
from host_ib.settings import IbSettings
from ktrdr.data.shared import PublishResult
from ktrdr.data.store import DataStore
from ktrdr.ib.downloader import Downloader, DownloadState, StoredRange, plan_download
from ktrdr.ib.errors import ConnectionLost, IbError, NoData, NoSecurityDefinition, RequestTimedOut
from ktrdr.ib.pacing import Pacer
from ktrdr.runtime.context import JobContext
from subjects.data import DataLoadParams
from subjects.results import DataLoadResult

log = logging.getLogger(__name__)


@dataclass
class _Run:
    """What one op stored and published (reported in the result and the op record)."""

    state: DownloadState
    new_bars: int = 0
    dirty: bool = False  # stored bars not yet in the bucket
    last_publish: float = 0.0
    published: PublishResult | None = None


class DataLoader:
    def __init__(self, *, gateway: Gateway, pacer: Pacer, store: DataStore, settings: IbSettings) -> None:
        self.gateway = gateway
        self.pacer = pacer
        self.store = store
        self.settings = settings
        # Reconnecting is the Gateway's: a download waits for it (the reconnect policy's budget).
        self.downloader = Downloader(source=gateway.client, pacer=pacer, reconnect=gateway.ensure_connected,
                                     pacing_backoff=settings.pacing_backoff(),
                                     drop_retry=settings.segment_reconnects(),
                                     segment_stall_s=settings.ib_segment_stall_s)
        # Two ops on the same dataset must not interleave their read-merge-write of one file.
        self._locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)

    async def run(self, ctx: JobContext, p: DataLoadParams) -> DataLoadResult:
        ctx.progress(percentage=0.0, step="connect", message=f"waiting for IB at {self.gateway.address}")
        await self.gateway.ensure_connected(ctx.token)
        earliest = await self._earliest(ctx, p.symbol)
        async with self._locks[(p.symbol, p.timeframe)]:
            adopted = await ctx.datasets.adopt(self.store, p.symbol, p.timeframe)
        if adopted:
            ctx.info(adopted_bars=adopted)
        stored = await asyncio.to_thread(self._stored_range, p.symbol, p.timeframe)
        state = plan_download(symbol=p.symbol, timeframe=p.timeframe, mode=p.mode, start=p.start, end=p.end,
                              stored=stored, earliest=earliest)
        resumed = await self._resume(ctx, state)
        if resumed:
            ctx.info(resumed_segments=resumed)
        run = _Run(state=state, last_publish=time.monotonic())
        drops_before = self.gateway.drops
        try:
            try:
                await self.downloader.run(state, on_segment=lambda frame: self._store(ctx, p, frame, run),
                                          progress=ctx.progress, cancel=ctx.token, collect=False)
            except BaseException as exc:
                # A cancelled or failed op keeps its segments: they still reach the bucket (best
                # effort, so the original error is what the op reports).
                if run.dirty:
                    await self._publish(ctx, p, run, final=False)
                if isinstance(exc, Exception):
                    # The last progress message must not still say "waiting for pacing".
                    done, total = len(state.completed), len(state.segments)
                    ctx.progress(percentage=100.0 * done / total if total else 0.0, step="failed",
                                 steps_done=done, steps_total=total,
                                 message=f"failed after {done} of {total} segments (kept): {exc}"[:500])
                raise
            finally:
                ctx.info(**_facts(state, reconnects=self.gateway.drops - drops_before))
            if run.dirty:
                await self._publish(ctx, p, run, final=True)
        finally:
            # Only a dead host leaves its checkpoint behind: every outcome here is final.
            try:
                await ctx.checkpoints.delete()
            except Exception as exc:
                ctx.log.warning("download checkpoint not deleted: %s", exc)
        return DataLoadResult(
            symbol=p.symbol, timeframe=p.timeframe, mode=p.mode,
            segments=len(state.segments), no_data_segments=len(state.gaps),
            bars_fetched=state.bars, new_bars=run.new_bars, requests=state.requests,
            **(await asyncio.to_thread(self._summary, p.symbol, p.timeframe)),
            object=run.published.name if run.published else None,
            digest=run.published.digest if run.published else None,
        )

    async def _earliest(self, ctx: JobContext, symbol: str) -> Any:
        """IB's head timestamp (keeps a backfill from asking for years before a listing).

        An unknown symbol ends the op here with IB's reason; any other failure only costs the
        optimisation, so the download goes on without it.
        """
        # A gateway that drops the connection on every request must not hold the op here either.
        drops = self.settings.segment_reconnects().delays()
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
                if next(drops, None) is None:
                    raise
                await self.gateway.ensure_connected(ctx.token)
            except (NoData, RequestTimedOut, IbError) as exc:
                log.info("no head timestamp for %s (%s); downloading the whole range", symbol, exc)
                ctx.info(earliest_available=None, head_timestamp_problem=str(exc)[:300])
                return None

    async def _resume(self, ctx: JobContext, state: DownloadState) -> int:
        """Skip the segments a lost earlier attempt of this op already got into the bucket."""
        try:
            data = await ctx.checkpoints.get()
            if data is None:
                return 0
            earlier = DownloadState.from_dict(json.loads(data))
        except Exception as exc:  # a checkpoint only saves requests: without it, start over
            ctx.log.warning("download checkpoint unusable (%s); downloading it all", exc)
            return 0
        resumed = state.resume_from(earlier)
        ctx.log.info("resuming after %d segment(s) already stored", resumed)
        return resumed

    async def _checkpoint(self, ctx: JobContext, run: _Run) -> None:
        try:
            await ctx.checkpoints.put(json.dumps(run.state.to_dict()).encode())
        except Exception as exc:  # costs a retry some requests, never the download
            ctx.log.warning("download checkpoint not saved: %s", exc)

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
                run.published = await ctx.datasets.publish(self.store, p.symbol, p.timeframe)
        except Exception as exc:
            if final:
                raise
            # A missed intermediate publish is repaired by the next one.
            log.warning("publishing %s %s failed: %s", p.symbol, p.timeframe, exc)
            return
        run.dirty = False
        run.last_publish = time.monotonic()
        if not final:
            # Only what is in the bucket counts as done for a retry on another host.
            await self._checkpoint(ctx, run)


def _facts(state: DownloadState, *, reconnects: int) -> dict[str, Any]:
    return {
        "segments_total": len(state.segments),
        "segments_completed": len(state.completed),
        "no_data_gaps": [g.to_dict() for g in state.gaps],
        "bars_fetched": state.bars,
        "requests": state.requests,
        "reconnects": reconnects,
    }
