"""The worker registry: a live view of the ``workers`` bucket.

Leases are the only truth about liveness. The watch delivers every heartbeat; an expired lease
arrives as a PURGE marker (the bucket has ``limit_marker_ttl``) and a graceful stop as a DEL.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from nats.js.kv import KeyValue

from coordinator.metrics import Metrics
from ktrdr.runtime.retry import transient_js_error
from ktrdr.runtime.tasks import cancel_and_wait
from subjects import names
from subjects.models import BadPayload, WorkerLease, decode

log = logging.getLogger(__name__)

# (worker id, its last lease, why, and for a restart: when the new process started)
LostCallback = Callable[[str, WorkerLease | None, str, datetime | None], Awaitable[None]]
WorkerListener = Callable[[str, WorkerLease | None], None]


class WorkerRegistry:
    def __init__(self, *, bucket: KeyValue, metrics: Metrics, on_lost: LostCallback) -> None:
        self.bucket = bucket
        self.metrics = metrics
        self.on_lost = on_lost
        self.workers: dict[str, WorkerLease] = {}
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lost_tasks: set[asyncio.Task[None]] = set()
        self._duplicates: dict[str, tuple[int, int]] = {}
        self._listeners: list[WorkerListener] = []

    def alive(self, worker_id: str | None) -> bool:
        return worker_id is not None and worker_id in self.workers

    def with_capability(self, capability: str) -> list[WorkerLease]:
        return [w for w in self.workers.values() if capability in w.capabilities]

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="registry-watch")

    async def restart(self) -> None:
        """Re-open the watch (after a reconnect the old ordered consumer may be gone)."""
        await self.stop()
        self.start()

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait([self._task], what="workers watch")
            self._task = None

    async def _watch(self) -> None:
        while True:
            try:
                watcher = await self.bucket.watchall()
                seen: set[str] = set()
                initial = True
                async for entry in watcher:
                    if entry is None:
                        if initial:
                            # Workers we knew that have no lease any more died while we were away.
                            for gone in set(self.workers) - seen:
                                self._lost(gone, "lease missing")
                            initial = False
                            self.ready.set()
                        continue
                    seen.add(entry.key)
                    self._apply(entry.key, entry.value, entry.operation)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("workers watch failed (%s); reopening", exc)
                await asyncio.sleep(0.5)

    def _apply(self, key: str, value: bytes | None, operation: str | None) -> None:
        if operation in ("DEL", "PURGE") or not value:
            reason = "lease deleted (graceful stop)" if operation == "DEL" else "lease expired"
            if key in self.workers:
                self._lost(key, reason)
            return
        try:
            lease = decode(WorkerLease, value)
        except BadPayload as exc:
            self.metrics.rejected.labels(subject=f"$KV.{names.WORKERS_BUCKET}", reason="schema").inc()
            log.error("ignoring malformed lease under %r: %s", key, exc)
            return
        if lease.worker_id != key:
            self.metrics.rejected.labels(subject=f"$KV.{names.WORKERS_BUCKET}", reason="key mismatch").inc()
            return
        previous = self.workers.get(key)
        if previous is None:
            log.info("worker %s (%s) is up: %s", key, lease.worker_type, ", ".join(lease.capabilities))
        elif lease.started_at > previous.started_at:
            # Worker ids are stable, so a process restarted within its old lease's TTL takes the
            # lease over before it can expire: what the old process owned is lost all the same.
            self.workers[key] = lease
            self._lost(key, f"restarted (now pid {lease.pid})", previous=previous,
                       started_before=lease.started_at)
        elif lease.started_at < previous.started_at:
            # An older process writing after a newer one: two live processes share this id.
            if self._duplicates.get(key) != (previous.pid, lease.pid):
                self._duplicates[key] = (previous.pid, lease.pid)
                self.metrics.rejected.labels(subject=f"$KV.{names.WORKERS_BUCKET}", reason="duplicate worker id").inc()
                log.error("two live processes share worker id %s (pid %d on %s and pid %d on %s): give each "
                          "its own KTRDR_WORKER_ID or KTRDR_WORKER_INDEX", key, previous.pid, previous.host,
                          lease.pid, lease.host)
            return
        self.workers[key] = lease
        self.metrics.worker_rejected.labels(worker=key).set(lease.status.get("rejected_messages", 0))
        self._changed(key, lease)

    def _lost(self, worker_id: str, reason: str, *, previous: WorkerLease | None = None,
              started_before: datetime | None = None) -> None:
        lease = previous if started_before is not None else self.workers.pop(worker_id, None)
        if started_before is None:
            self._changed(worker_id, None)
        if reason == "lease expired" and lease is not None:
            self.metrics.lease_expiries.labels(type=lease.worker_type).inc()
        log.warning("worker %s is gone: %s", worker_id, reason)
        task = asyncio.create_task(self._handle_lost(worker_id, lease, reason, started_before))
        self._lost_tasks.add(task)
        task.add_done_callback(self._lost_tasks.discard)

    async def _handle_lost(self, worker_id: str, lease: WorkerLease | None, reason: str,
                           started_before: datetime | None) -> None:
        try:
            await self.on_lost(worker_id, lease, reason, started_before)
        except Exception as exc:
            # The reaper finds the same ops again on its next pass (ops whose owner holds no lease).
            if transient_js_error(exc) or (exc.__cause__ is not None and transient_js_error(exc.__cause__)):
                log.warning("handling the loss of worker %s failed, JetStream unavailable (%s); the reaper "
                            "will retry", worker_id, str(exc) or type(exc).__name__)
            else:
                log.exception("handling the loss of worker %s failed; the reaper will retry", worker_id)

    def subscribe(self, listener: WorkerListener) -> None:
        """``listener(worker_id, lease)`` after every lease change; ``lease`` None once the worker is gone."""
        self._listeners.append(listener)

    def _changed(self, worker_id: str, lease: WorkerLease | None) -> None:
        for listener in self._listeners:
            try:
                listener(worker_id, lease)
            except Exception:
                log.exception("worker listener failed")

    def collect(self) -> None:
        self.metrics.workers.clear()
        for w in self.workers.values():
            self.metrics.workers.labels(type=w.worker_type, state=w.state.value).inc()
