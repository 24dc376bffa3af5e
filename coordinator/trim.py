"""Keeping room in OPS: what the coordinator has applied is deleted when the stream fills up.

OPS refuses new messages when full (discard new): a credential that floods it (any host key may
publish progress and events under its own name, 2 GiB in about 9 s) can then delay reports, never
push out ones the coordinator has not read yet, as discard old did while the coordinator was down.
What makes room again is this loop: past ``high_water`` of the stream's bytes, it deletes the
progress the coordinator's consumer has acknowledged (applied to the op records already), then, if
that is not enough, the applied events too (the dashboard's event timeline of those ops goes with
them). A worker whose event is refused meanwhile keeps it and sends it again (``Worker._confirm``).
"""

from __future__ import annotations

import asyncio
import logging

from nats.js import JetStreamContext

from coordinator.metrics import Metrics
from ktrdr.runtime.tasks import cancel_and_wait, every
from subjects import names

log = logging.getLogger(__name__)

HIGH_WATER = 0.5
INTERVAL_S = 2.0


class OpsTrim:
    def __init__(self, *, js: JetStreamContext, metrics: Metrics, high_water: float = HIGH_WATER,
                 interval_s: float = INTERVAL_S) -> None:
        self.js = js
        self.metrics = metrics
        self.high_water = high_water
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="ops-trim")

    async def run(self) -> None:
        await every(self.interval_s, self.trim, what="checking how full OPS is")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait([task], what="OPS trim")

    async def __aenter__(self) -> OpsTrim:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def trim(self) -> int:
        """One round: the messages deleted (0 while the stream is below its high water)."""
        info = await self.js.stream_info(names.OPS_STREAM)
        limit = info.config.max_bytes or -1
        self.metrics.ops_stream_bytes.set(info.state.bytes)
        if limit <= 0 or info.state.bytes <= self.high_water * limit:
            return 0
        applied = (await self.js.consumer_info(names.OPS_STREAM, names.COORDINATOR_CONSUMER)).ack_floor.stream_seq
        before = info.state.messages
        # Purging "up to seq" keeps seq itself: everything the consumer has acknowledged goes.
        for subject in (names.OPS_PROGRESS_ALL, None):
            await self.js.purge_stream(names.OPS_STREAM, seq=applied + 1, subject=subject)
            info = await self.js.stream_info(names.OPS_STREAM)
            if info.state.bytes <= self.high_water * limit:
                break
        self.metrics.ops_stream_bytes.set(info.state.bytes)
        deleted = max(0, before - info.state.messages)
        self.metrics.ops_trimmed.inc(deleted)
        log.warning("OPS held more than %d%% of its %d bytes: deleted %d message(s) already applied; %d bytes "
                    "left%s", round(100 * self.high_water), limit, deleted, info.state.bytes,
                    "" if info.state.bytes <= self.high_water * limit
                    else " (the rest is not applied yet: the coordinator is reading it)")
        return deleted
