"""Live updates for dashboards: what changed in the ops records and the ``workers`` bucket, pushed
as server-sent events.

The coordinator already folds the OPS stream into its op records and watches the ``workers``
bucket; this listens to both (``Operations.subscribe``, ``WorkerRegistry.subscribe``) and fans the
changes out to every connected page, so a hundred open pages cost the coordinator one watch, not a
hundred pollers of the records.

Each page gets its changes coalesced: an op that changed twenty times since the last batch is sent
once, as it is now, and batches leave at most every ``flush_s``. A page that falls behind by more
than ``max_pending`` ops (a burst of thousands of submissions) is told to reload its lists
(``resync``) instead of being sent each of them. With no page connected, a change costs one
truth test.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from subjects.limits import bounded_text
from subjects.models import Operation, WorkerLease

log = logging.getLogger(__name__)

KEEPALIVE_S = 15.0  # a comment line: proxies close idle streams, and it tells a page it is connected
ERROR_CHARS = 300  # an op's error in a pushed summary; the op's page reads the whole record


def op_summary(op: Operation) -> dict[str, Any]:
    """What a list row shows of an op: small and bounded, whatever the record holds."""
    progress = op.progress
    return {
        "op_id": op.op_id, "type": op.type, "status": op.status.value, "parent_id": op.parent_id,
        "worker_id": op.worker_id, "attempt": op.attempt, "route": op.route,
        "created_at": op.created_at.isoformat(),
        "started_at": op.started_at.isoformat() if op.started_at else None,
        "completed_at": op.completed_at.isoformat() if op.completed_at else None,
        "progress": None if progress is None else {
            "percentage": progress.percentage,
            "message": bounded_text(progress.message, ERROR_CHARS) if progress.message else None,
            "items_done": progress.items_done, "items_total": progress.items_total},
        "error": bounded_text(op.error, ERROR_CHARS) if op.error else None,
    }


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Subscriber:
    """One connected page: the changes not yet sent to it."""

    def __init__(self, *, max_pending: int) -> None:
        self.ops: dict[str, Operation] = {}
        self.workers: dict[str, WorkerLease | None] = {}
        self.overflow = False
        self.closed = False
        self.wake = asyncio.Event()
        self._max_pending = max_pending

    def op(self, op: Operation) -> None:
        if self.overflow:
            return
        self.ops[op.op_id] = op
        if len(self.ops) > self._max_pending:
            self.ops.clear()
            self.overflow = True
        self.wake.set()

    def worker(self, worker_id: str, lease: WorkerLease | None) -> None:
        self.workers[worker_id] = lease
        self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    def take(self) -> list[bytes]:
        out: list[bytes] = []
        if self.overflow:
            out.append(_event("resync", {"reason": "more changes than a page is sent one by one"}))
            self.overflow = False
        if self.ops:
            out.append(_event("ops", [op_summary(op) for op in self.ops.values()]))
            self.ops = {}
        if self.workers:
            out.append(_event("workers", {
                "changed": [lease.model_dump(mode="json") for lease in self.workers.values() if lease is not None],
                "gone": [wid for wid, lease in self.workers.items() if lease is None]}))
            self.workers = {}
        self.wake.clear()
        return out


class LiveFeed:
    def __init__(self, *, flush_s: float = 0.25, max_pending: int = 500, max_subscribers: int = 100) -> None:
        self.flush_s = flush_s
        self.max_pending = max_pending
        self.max_subscribers = max_subscribers
        self._subscribers: set[Subscriber] = set()
        self._stopped = False

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def op_changed(self, before: Operation, after: Operation) -> None:
        if not self._subscribers:
            return
        for sub in self._subscribers:
            sub.op(after)

    def worker_changed(self, worker_id: str, lease: WorkerLease | None) -> None:
        for sub in self._subscribers:
            sub.worker(worker_id, lease)

    def full(self) -> bool:
        return self._stopped or len(self._subscribers) >= self.max_subscribers

    async def stream(self) -> AsyncIterator[bytes]:
        """The event stream of one page, until it goes away or the coordinator stops."""
        sub = Subscriber(max_pending=self.max_pending)
        self._subscribers.add(sub)
        try:
            # The page loads its lists after this arrives, so nothing changes unseen in between.
            yield _event("hello", {"flush_s": self.flush_s})
            while not sub.closed:
                try:
                    await asyncio.wait_for(sub.wake.wait(), timeout=KEEPALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                if sub.closed:
                    break
                # Whatever else changes meanwhile leaves in the same batch.
                await asyncio.sleep(self.flush_s)
                for chunk in sub.take():
                    yield chunk
        finally:
            self._subscribers.discard(sub)

    async def stop(self) -> None:
        self._stopped = True
        for sub in list(self._subscribers):
            sub.close()
