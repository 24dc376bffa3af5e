"""The worker registry: a live view of the ``workers`` bucket.

Leases are the only truth about liveness. The watch delivers every heartbeat; an expired lease
arrives as a PURGE marker (the bucket has ``limit_marker_ttl``) and a graceful stop as a DEL.

A lease lives under ``<host>.<worker_id>``, and only that host's key may write there (nats-server
enforces it: ``subjects.roles``), so the key says which host a worker belongs to. :meth:`host_of`
remembers it after the lease is gone, for the worker's late reports; a worker id already held by a
live lease of another host is refused, so no host can take another's worker id.

A worker registers before it writes a lease or fetches a job, and :meth:`admit` refuses it when
another live process holds its id: two processes under one id would overwrite each other's lease,
and each would look like the other restarting.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime

from nats.js.kv import KeyValue

from coordinator.metrics import Metrics
from ktrdr.runtime.retry import transient_js_error
from ktrdr.runtime.tasks import cancel_and_wait
from subjects import names
from subjects.models import BadPayload, WorkerInfo, WorkerLease, decode

log = logging.getLogger(__name__)

# The subject label of what the registry refuses among the leases.
LEASES = names.kv_all(names.WORKERS_BUCKET).removesuffix(".>")

# How often a registration waiting to see whether a held id is alive looks again.
ADMIT_POLL_S = 0.05

# (worker id, its last lease, why, and for a restart: when the new process started)
LostCallback = Callable[[str, WorkerLease | None, str, datetime | None], Awaitable[None]]
WorkerListener = Callable[[str, WorkerLease | None], None]


class WorkerRegistry:
    def __init__(self, *, bucket: KeyValue, metrics: Metrics, on_lost: LostCallback,
                 gpu_allowed: Callable[[str], bool] = lambda host: True) -> None:
        """``gpu_allowed(host)``: whether that host's workers may serve GPU training (``ktrdr fleet
        invite --gpu``); a lease claiming it from another host is taken without it."""
        self.bucket = bucket
        self.gpu_allowed = gpu_allowed
        self.metrics = metrics
        self.on_lost = on_lost
        self.workers: dict[str, WorkerLease] = {}
        self.ready = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lost_tasks: set[asyncio.Task[None]] = set()
        self._duplicates: dict[str, tuple[int, int]] = {}
        self._listeners: list[WorkerListener] = []
        self._hosts: dict[str, str] = {}  # worker id -> the host its lease key names (kept after it goes)
        self._gpu_refused: set[str] = set()
        self._written: dict[str, float] = {}  # worker id -> when its current process last wrote its lease (loop time)

    def host_of(self, worker_id: str) -> str | None:
        """The host whose key wrote the worker's lease, or None for a worker never seen."""
        return self._hosts.get(worker_id)

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
                    worker_id = self._apply(entry.key, entry.value, entry.operation)
                    if worker_id is not None:
                        seen.add(worker_id)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("workers watch failed (%s); reopening", exc)
                await asyncio.sleep(0.5)

    def _apply(self, lease_key: str, value: bytes | None, operation: str | None) -> str | None:
        """Take in one lease change; returns the worker id it is about (None: not a lease)."""
        try:
            host, key = names.split_lease_key(lease_key)
        except names.InvalidToken:
            self.metrics.rejected.labels(subject=LEASES, reason="key").inc()
            log.error("ignoring a lease under %r: not <host>.<worker id>", lease_key[:200])
            return None
        owner = self._hosts.get(key)
        if owner is not None and owner != host and key in self.workers:
            # Another host writing a lease for a live worker of this one: refused, whatever it says.
            self.metrics.rejected.labels(subject=LEASES, reason="other host").inc()
            log.error("host %s wrote a lease for worker %s, which is host %s's: ignored", host, key, owner)
            return None
        if operation in ("DEL", "PURGE") or not value:
            reason = "lease deleted (graceful stop)" if operation == "DEL" else "lease expired"
            if key in self.workers:
                self._lost(key, reason)
            return key
        try:
            lease = decode(WorkerLease, value)
        except BadPayload as exc:
            self.metrics.rejected.labels(subject=LEASES, reason="schema").inc()
            log.error("ignoring malformed lease under %r: %s", lease_key, exc)
            return None
        if lease.worker_id != key:
            self.metrics.rejected.labels(subject=LEASES, reason="key mismatch").inc()
            return None
        self._hosts[key] = host
        if names.CAP_TRAINING_GPU in lease.capabilities and not self.gpu_allowed(host):
            # It could not pull those jobs anyway (subjects.roles), but listed as a GPU worker it would
            # hold every training back for the GPU fallback timeout.
            if key not in self._gpu_refused:
                self._gpu_refused.add(key)
                self.metrics.rejected.labels(subject=LEASES, reason="gpu not granted").inc()
                log.error("worker %s of host %s claims GPU training, which the host was not invited for "
                          "(ktrdr fleet invite worker --host %s --gpu): taken as a CPU worker", key, host, host)
            lease = lease.model_copy(update={"capabilities": [c for c in lease.capabilities
                                                              if c != names.CAP_TRAINING_GPU], "gpu": False})
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
                self.metrics.rejected.labels(subject=LEASES, reason="duplicate worker id").inc()
                log.error("two live processes share worker id %s (pid %d on %s and pid %d on %s): give each "
                          "its own KTRDR_WORKER_ID or KTRDR_WORKER_INDEX", key, previous.pid, previous.host,
                          lease.pid, lease.host)
            return key
        self.workers[key] = lease
        self._written[key] = asyncio.get_running_loop().time()
        self.metrics.worker_rejected.labels(worker=key).set(lease.status.get("rejected_messages", 0))
        self._changed(key, lease)
        return key

    async def admit(self, info: WorkerInfo, *, alive_within_s: float) -> str | None:
        """Why the registration ``info`` is refused; None to welcome it.

        Refused: a worker id whose lease another process (pid, host and start time) keeps writing.
        A live worker writes its lease at least every heartbeat, so a lease not written for
        ``alive_within_s`` belongs to a process that has died (a worker restarted within its old
        lease's TTL, after kill -9): the newcomer is welcome and takes that lease over. A lease
        written more recently is watched until it is written again (refused) or that much time has
        passed since its last write (welcome).
        """
        loop = asyncio.get_running_loop()
        asked = loop.time()
        if not self.ready.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.ready.wait(), alive_within_s)
        while True:
            held = self.workers.get(info.worker_id)
            if held is None or (held.pid, held.host, held.started_at) == (info.pid, info.host, info.started_at):
                return None
            written = self._written.get(info.worker_id, asked - alive_within_s)
            if written > asked:
                self.metrics.rejected.labels(subject=LEASES, reason="duplicate worker id").inc()
                host = self._hosts.get(info.worker_id)
                log.error("refused the registration of worker %s (pid %d on %s): pid %d on %s holds that id",
                          info.worker_id, info.pid, info.host, held.pid, held.host)
                return (f"worker id {info.worker_id} is in use by another live process (pid {held.pid} on {held.host}"
                        + (f", fleet host {host}" if host else "")
                        + f", up since {held.started_at:%Y-%m-%d %H:%M:%S} UTC): give each worker its own "
                          "KTRDR_WORKER_ID or KTRDR_WORKER_INDEX, or set neither (workers of one host then take "
                          "free indexes)")
            if loop.time() >= written + alive_within_s:
                return None
            await asyncio.sleep(ADMIT_POLL_S)

    def _lost(self, worker_id: str, reason: str, *, previous: WorkerLease | None = None,
              started_before: datetime | None = None) -> None:
        lease = previous if started_before is not None else self.workers.pop(worker_id, None)
        if started_before is None:
            self._written.pop(worker_id, None)
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
