"""One active IB host: a lock in the ``ib_active`` bucket, taken atomically and kept alive.

IB allows one API session per client id and paces per session, so only one host may talk to
the gateway. The bucket has a TTL and limit markers: a host that dies stops refreshing, its
key expires and leaves a marker. ``kv.create`` refuses while that marker lives, so a standby
takes over with a compare-and-set on the marker's revision instead, which is just as atomic:
of several standbys exactly one wins.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import datetime

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from ktrdr.runtime.topology import BIND_RETRY
from subjects import names
from subjects.data import ActiveLock
from subjects.models import BadPayload, decode, utcnow

log = logging.getLogger(__name__)

OnChange = Callable[[bool], Awaitable[None]]


async def lock_bucket(js: JetStreamContext) -> KeyValue:
    """The lock's bucket, made by the coordinator with the fleet's ``KTRDR_IB_LOCK_TTL_S`` (and
    limit markers, so an expired lock is seen); waits, saying so, while it does not exist."""
    pauses = BIND_RETRY.delays()
    while True:
        delay = next(pauses)
        try:
            return await js.key_value(names.IB_ACTIVE_BUCKET)
        except BucketNotFoundError:
            log.warning("the key-value bucket %r does not exist; waiting %.1f s for the coordinator to create it",
                        names.IB_ACTIVE_BUCKET, delay)
        await asyncio.sleep(delay)


async def read_lock(kv: KeyValue) -> tuple[int | None, ActiveLock | None] | None:
    """(revision, holder) of the lock; holder None for a delete or expiry marker; None if absent."""
    try:
        entry = await kv.get(names.IB_ACTIVE_KEY)
    except KeyNotFoundError as exc:  # a delete marker comes back as "not found" with its entry
        return (exc.entry.revision, None) if exc.entry is not None else None
    if not entry.value:
        return entry.revision, None
    try:
        return entry.revision, decode(ActiveLock, entry.value)
    except BadPayload:
        log.warning("unreadable value in %s/%s; treating it as free", names.IB_ACTIVE_BUCKET, names.IB_ACTIVE_KEY)
        return entry.revision, None


class ActiveElection:
    """Wait for the lock, hold it, and call ``on_change(True/False)`` when that changes."""

    def __init__(self, *, kv: KeyValue, worker_id: str, host: str, pid: int, ttl_s: float,
                 refresh_s: float, poll_s: float, on_change: OnChange) -> None:
        self.kv = kv
        self.worker_id = worker_id
        self.host = host
        self.pid = pid
        self.ttl_s = ttl_s
        self.refresh_s = refresh_s
        self.poll_s = poll_s
        self.on_change = on_change
        self.active = False
        self.active_since: datetime | None = None
        self.holder: ActiveLock | None = None  # the last holder seen (ourselves when active)
        self._revision: int | None = 0
        self._acquired_at = utcnow()
        self._last_refresh = 0.0

    def _value(self) -> bytes:
        return ActiveLock(worker_id=self.worker_id, host=self.host, pid=self.pid,
                          acquired_at=self._acquired_at).encode()

    async def run(self) -> None:
        while True:
            try:
                if self.active:
                    await self._refresh()
                else:
                    await self._try_acquire()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("active-instance lock: %s", exc)
                # Without NATS we cannot prove we still hold the lock; past its TTL a standby may
                # hold it, so stop acting as the active host.
                if self.active and time.monotonic() - self._last_refresh > self.ttl_s:
                    await self._set(False, "lock not refreshed within its TTL")
            await asyncio.sleep(self.refresh_s if self.active else self.poll_s)

    async def _try_acquire(self) -> None:
        self._acquired_at = utcnow()
        try:
            revision: int | None = await self.kv.create(names.IB_ACTIVE_KEY, self._value())
        except KeyWrongLastSequenceError:
            current = await read_lock(self.kv)
            if current is None:
                return  # gone between the two calls: try again next poll
            revision, holder = current
            self.holder = holder
            # Our own earlier incarnation (same stable worker id, restarted) may take over at once.
            if holder is not None and holder.worker_id != self.worker_id:
                return
            try:
                revision = await self.kv.update(names.IB_ACTIVE_KEY, self._value(), last=revision)
            except KeyWrongLastSequenceError:
                return  # another standby won the compare-and-set
        self._revision = revision
        self._last_refresh = time.monotonic()
        self.holder = decode(ActiveLock, self._value())
        await self._set(True, "acquired the active-instance lock")

    async def _refresh(self) -> None:
        try:
            self._revision = await self.kv.update(names.IB_ACTIVE_KEY, self._value(), last=self._revision)
        except KeyWrongLastSequenceError:
            current = await read_lock(self.kv)
            self.holder = current[1] if current else None
            await self._set(False, "the active-instance lock was taken over")
            return
        self._last_refresh = time.monotonic()

    async def _set(self, active: bool, why: str) -> None:
        if active == self.active:
            return
        self.active = active
        self.active_since = utcnow() if active else None
        log.info("%s is now %s: %s", self.worker_id, "ACTIVE" if active else "standby", why)
        await self.on_change(active)

    async def release(self) -> None:
        """Give the lock up (graceful stop) so a standby takes over without waiting for the TTL."""
        if not self.active:
            return
        self.active = False
        with contextlib.suppress(Exception):
            # ``last=``: never delete a lock that someone else already holds.
            await self.kv.delete(names.IB_ACTIVE_KEY, last=self._revision)
