"""Retention: ended operations older than the retention period leave the ``ops`` bucket.

``archive`` (the default) moves each record to the ``OPS_ARCHIVE`` stream (one subject per op id,
kept ``archive_days``), where the coordinator still reads it by id and the index still lists it by
date (``include_archived``); its results stay until the archive lets the record go. ``delete``
removes the record with its results. Checkpoints of ended ops are deleted either way; models stay
until deleted by name. Runs every ``prune_interval_s`` with ``retention_days`` (0: off), and on
demand (``ktrdr ops prune --older-than 7d [--dry-run]``, ``POST /api/v1/operations/prune``,
``ktrdr.ops.prune``).

Each run also purges the chunks of replaced or deleted objects (``ktrdr.runtime.objects``): only
the coordinator may purge, so a worker or client that replaces an object leaves its old chunks for
this sweep, which takes a chunk subject only when two runs in a row found it unreferenced.

Every step can be repeated, so a coordinator that dies halfway loses nothing and the next prune
finishes the job: the archive copy is written first (deduplicated by its ``Nats-Msg-Id``), then the
key is purged, then the index is told. A purge the index missed is settled when it catches up
(``coordinator.mirror.catch_up`` asks the archive).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Literal

from nats.js import JetStreamContext
from nats.js.api import Header
from nats.js.errors import NotFoundError

from coordinator.operations import Operations
from ktrdr.results import delete_results, legacy_results
from ktrdr.runtime.artifacts import purge_op_artifacts
from subjects import names
from subjects.models import Operation

log = logging.getLogger(__name__)

Action = Literal["archive", "delete"]
# Ops moved per batch: the index is asked again for the next batch, so a prune of a million ops
# holds neither a million ids nor the event loop for long.
BATCH = 500
# Archive and purge writes in flight at once.
IN_FLIGHT = 64
@dataclass
class PruneReport:
    action: Action
    older_than_s: float
    dry_run: bool
    matched: int = 0
    moved: int = 0  # archived or deleted
    skipped: int = 0  # children of a parent still running: pruned with it
    expired: int = 0  # archived records past archive_days whose results were deleted
    sample: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"action": self.action, "older_than_s": self.older_than_s, "dry_run": self.dry_run,
                "matched": self.matched, "moved": self.moved, "skipped": self.skipped, "expired": self.expired,
                "sample": self.sample}


async def archived_record(js: JetStreamContext, op_id: str) -> bytes | None:
    try:
        msg = await js.get_last_msg(names.OPS_ARCHIVE_STREAM, names.ops_archive(op_id), direct=True)
    except NotFoundError:
        return None
    return msg.data or None


class Retention:
    def __init__(self, *, ops: Operations, js: JetStreamContext, retention_days: float, action: Action,
                 archive_days: float, interval_s: float) -> None:
        self.ops = ops
        self.js = js
        self.retention_days = retention_days
        self.action: Action = action
        self.archive_days = archive_days
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()  # one prune at a time, scheduled or asked for

    async def start(self) -> None:
        if self.retention_days > 0 and self._task is None:
            self._task = asyncio.create_task(self.run(), name="retention")

    async def run(self) -> None:
        while True:
            try:
                report = await self.prune(older_than=timedelta(days=self.retention_days))
                if report.moved or report.expired:
                    log.info("retention: %s %d operation(s) ended over %g days ago%s", report.action, report.moved,
                             self.retention_days, f"; {report.expired} archived past {self.archive_days:g} days "
                             "lost their results" if report.expired else "")
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retention failed; trying again in %g s", self.interval_s)
            await asyncio.sleep(self.interval_s)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def prune(self, *, older_than: timedelta, action: Action | None = None, dry_run: bool = False,
                    limit: int | None = None) -> PruneReport:
        """Archive (or delete) ended ops that completed more than ``older_than`` ago."""
        action = action or self.action
        report = PruneReport(action=action, older_than_s=older_than.total_seconds(), dry_run=dry_run)
        async with self._lock:
            self.ops.flush_index()
            cutoff = datetime.now(UTC) - older_than
            offset = 0  # past the ones this prune leaves in place (a dry run: all it has counted)
            while limit is None or report.matched < limit:
                want = BATCH if limit is None else min(BATCH, limit - report.matched)
                batch = self.ops.index.expired(cutoff, limit=want, offset=offset)
                if not batch:
                    break
                movable = [op for i in batch if (op := self.ops.get(i)) is not None and self._parent_ended(op)]
                left = len(batch) - len(movable)
                report.skipped += left
                report.matched += len(movable)
                report.sample += [op.op_id for op in movable[: max(0, 20 - len(report.sample))]]
                if dry_run:
                    offset += len(batch)
                    continue
                if movable:
                    await self._move(movable, action)
                    report.moved += len(movable)
                offset += left
            if not dry_run and action == "archive" and self.archive_days > 0:
                report.expired = await self._expire(datetime.now(UTC) - timedelta(days=self.archive_days))
        return report

    def _parent_ended(self, op: Operation) -> bool:
        # A parent still running re-reads its children (a restart rebuilds it from them).
        if op.parent_id is None:
            return True
        parent = self.ops.get(op.parent_id)
        return parent is None or parent.status.terminal

    async def _move(self, ops: list[Operation], action: Action) -> None:
        limit = asyncio.Semaphore(IN_FLIGHT)
        legacy = await legacy_results(self.js) if action != "archive" else None

        async def one(op: Operation) -> None:
            async with limit:
                if action == "archive":
                    await self.js.publish(names.ops_archive(op.op_id), op.encode(), stream=names.OPS_ARCHIVE_STREAM,
                                          headers={Header.MSG_ID: f"archive:{op.op_id}:{op.completed_at}"})
                else:
                    await delete_results(self.js, op.op_id, legacy=legacy)
                await purge_op_artifacts(self.js, names.CHECKPOINTS_ARTIFACTS, op.op_id)
                await self.ops.bucket.purge(op.op_id)

        await asyncio.gather(*(one(op) for op in ops))
        self.ops.forget([op.op_id for op in ops], archived=action == "archive")

    async def _expire(self, before: datetime) -> int:
        """Archived records the archive stream has let go (past archive_days): their results too."""
        count = 0
        while ids := self.ops.index.archived_before(before, limit=BATCH):
            legacy = await legacy_results(self.js)
            await asyncio.gather(*(delete_results(self.js, i, legacy=legacy) for i in ids))
            self.ops.index.delete(ids)
            count += len(ids)
        return count
