"""Live updates for dashboards: what changed in the ops records and the ``workers`` bucket, pushed
as server-sent events.

The coordinator already folds the OPS stream into its op records and watches the ``workers``
bucket; this listens to both (``Operations.subscribe``, ``WorkerRegistry.subscribe``) and fans the
changes out to every connected page, so a hundred open pages cost the coordinator one watch, not a
hundred pollers of the records.

Changes are coalesced once for all pages: an op that changed twenty times since the last batch is
sent once, as it is now; every ``flush_s`` the batch is encoded once and the same bytes go to every
page (``bench/live.py``: a change costs the same with 100 pages as with one). More than
``max_pending`` ops changed within one batch (a burst of thousands of submissions) is sent as
``resync``: pages reload their lists instead. A page that has not taken ``max_queued`` batches (a
stalled browser) loses them and gets ``resync`` too. With no page connected, a change costs one
truth test.

Most lease writes are heartbeats that change nothing but ``heartbeat_at``: those are sent as one
list of ids with the newest beat's time (``beats``), not as whole leases (``changed``). With 1,000
workers, whole leases were about 300 KiB/s per page (``bench/fleet.py``); the ids are a few KiB/s.

Pages are bounded (``max_subscribers``), and each role has its share: pages signed in with the
viewer token (or any role but the operator's) hold at most ``max_viewers`` (half) of the slots, so
whoever holds the viewer token can never take the operator's page away.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from ktrdr.runtime.tasks import cancel_and_wait
from subjects.limits import bounded_text
from subjects.models import Operation, WorkerLease

OPERATOR = "operator"
KEEPALIVE_S = 15.0  # a comment line: proxies close idle streams, and it tells a page it is connected
ERROR_CHARS = 300  # an op's error in a pushed summary; the op's page reads the whole record
STEP_CHARS = 80
# A progress context's figures a summary carries (the op's page reads the whole record).
CONTEXT_FIGURES = ("epoch", "total_epochs", "train_loss", "val_loss", "train_accuracy", "val_accuracy",
                   "running_train_loss")


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
            "step": bounded_text(progress.step, STEP_CHARS) if progress.step else None,
            "message": bounded_text(progress.message, ERROR_CHARS) if progress.message else None,
            "items_done": progress.items_done, "items_total": progress.items_total,
            "context": _figures(progress.context)},
        "error": bounded_text(op.error, ERROR_CHARS) if op.error else None,
    }


def _figures(context: dict[str, Any]) -> dict[str, Any]:
    """The few numbers of a progress context a row shows (a training's epoch and loss), nothing else."""
    return {k: v for k in CONTEXT_FIGURES if isinstance(v := context.get(k), int | float)
            and not isinstance(v, bool) and math.isfinite(v)}


def _event(name: str, data: Any) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Subscriber:
    """One connected page: the encoded batches not yet sent to it."""

    def __init__(self, *, max_queued: int, role: str = OPERATOR) -> None:
        self.role = role
        self.chunks: list[bytes] = []
        self.closed = False
        self.wake = asyncio.Event()
        self._max_queued = max_queued

    def push(self, chunks: list[bytes]) -> None:
        if len(self.chunks) >= self._max_queued:
            self.chunks = [RESYNC]
        self.chunks.extend(chunks)
        self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()

    def take(self) -> list[bytes]:
        out, self.chunks = self.chunks, []
        self.wake.clear()
        return out


RESYNC = _event("resync", {"reason": "more changes than a page is sent one by one"})


class LiveFeed:
    def __init__(self, *, flush_s: float = 0.25, max_pending: int = 500, max_queued: int = 40,
                 max_subscribers: int = 100, max_viewers: int | None = None) -> None:
        """``max_viewers``: the slots pages of any role but the operator's may hold (default half)."""
        self.flush_s = flush_s
        self.max_pending = max_pending
        self.max_queued = max_queued
        self.max_subscribers = max_subscribers
        self.max_viewers = max_subscribers // 2 if max_viewers is None else min(max_viewers, max_subscribers)
        self._subscribers: set[Subscriber] = set()
        self._viewers = 0
        self._ops: dict[str, Operation] = {}
        self._workers: dict[str, WorkerLease | None] = {}
        self._beats: dict[str, datetime] = {}  # workers whose lease changed in its heartbeat alone
        self._known: dict[str, WorkerLease] = {}  # each worker's lease as last handed to the pages
        self._overflow = False
        self._changed = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None
        self._stopped = False

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def op_changed(self, before: Operation, after: Operation) -> None:
        if not self._subscribers or self._overflow:
            return
        self._ops[after.op_id] = after
        if len(self._ops) > self.max_pending:
            self._ops.clear()
            self._overflow = True
        self._changed.set()

    def worker_changed(self, worker_id: str, lease: WorkerLease | None) -> None:
        if not self._subscribers:
            # A page that connects loads the whole list: what is known here would be stale.
            self._known.clear()
            return
        before = self._known.pop(worker_id, None)
        if lease is not None:
            self._known[worker_id] = lease
        if (lease is not None and before is not None and worker_id not in self._workers
                and lease.model_copy(update={"heartbeat_at": before.heartbeat_at}) == before):
            self._beats[worker_id] = lease.heartbeat_at
        else:
            self._beats.pop(worker_id, None)
            self._workers[worker_id] = lease
        self._changed.set()

    def full(self, role: str = OPERATOR) -> bool:
        if self._stopped or len(self._subscribers) >= self.max_subscribers:
            return True
        return role != OPERATOR and self._viewers >= self.max_viewers

    def open(self, role: str) -> Subscriber | None:
        """A slot for one page of ``role``, taken now; None when its share is full. Given back by
        :meth:`release` (which the stream's end calls too)."""
        if self.full(role):
            return None
        sub = Subscriber(max_queued=self.max_queued, role=role)
        self._subscribers.add(sub)
        if role != OPERATOR:
            self._viewers += 1
        return sub

    def release(self, sub: Subscriber) -> None:
        if sub in self._subscribers:
            self._subscribers.discard(sub)
            if sub.role != OPERATOR:
                self._viewers -= 1

    def _batch(self) -> list[bytes]:
        """What changed since the last batch, encoded once for every page."""
        out: list[bytes] = []
        if self._overflow:
            out.append(RESYNC)
            self._overflow = False
        if self._ops:
            out.append(_event("ops", [op_summary(op) for op in self._ops.values()]))
            self._ops = {}
        if self._workers or self._beats:
            out.append(_event("workers", {
                "changed": [lease.model_dump(mode="json") for lease in self._workers.values() if lease is not None],
                "gone": [wid for wid, lease in self._workers.items() if lease is None],
                # One time for all: the beats of a batch are at most flush_s apart.
                "beats": {"at": max(self._beats.values()).isoformat().replace("+00:00", "Z"),
                          "ids": list(self._beats)} if self._beats else None}))
            self._workers, self._beats = {}, {}
        self._changed.clear()
        return out

    async def _flush(self) -> None:
        while True:
            await self._changed.wait()
            # Whatever else changes meanwhile leaves in the same batch.
            await asyncio.sleep(self.flush_s)
            chunks = self._batch()
            for sub in self._subscribers:
                sub.push(chunks)

    async def stream(self, sub: Subscriber | None = None) -> AsyncIterator[bytes]:
        """The event stream of one page (``sub`` from :meth:`open`; without one, an operator's slot is
        taken now), until it goes away or the coordinator stops."""
        if sub is None:
            sub = self.open(OPERATOR)
            if sub is None:
                raise RuntimeError(f"no live slot left of {self.max_subscribers}")
        if self._flusher is None and not self._stopped:
            self._flusher = asyncio.create_task(self._flush(), name="dashboard-live-flush")
        try:
            # The page loads its lists after this arrives, so nothing changes unseen in between.
            yield _event("hello", {"flush_s": self.flush_s})
            while not sub.closed:
                try:
                    await asyncio.wait_for(sub.wake.wait(), timeout=KEEPALIVE_S)
                except TimeoutError:
                    yield b": keep-alive\n\n"
                    continue
                for chunk in sub.take():
                    yield chunk
        finally:
            self.release(sub)

    async def stop(self) -> None:
        self._stopped = True
        for sub in list(self._subscribers):
            sub.close()
        if self._flusher is not None:
            await cancel_and_wait([self._flusher], what="dashboard live flush")
            self._flusher = None
