"""JetStream's state as the coordinator sees it: readiness for ``/health``, and the one way the API
and the NATS service say that JetStream cannot take a write now.

Readiness writes and reads one small key of the ``ops`` bucket, the bucket every submission writes:
a socket that is connected says nothing about a stream that has no leader (during a quorum loss the
connection stayed up for 14 s while every submission failed). One replicated write of a few dozen
bytes, at most once per ``ttl_s`` and only while someone asks, is noise next to the ~6 writes of each
operation; a read-only check (``account_info``, a key read that any replica answers) would say ready
while writes fail. The key holds a dot, so no op id (one token) can ever name it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from dataclasses import dataclass

from nats.aio.client import Client
from nats.js.kv import KeyValue

# A key of the ``ops`` bucket that is not an operation (op ids are one token, without dots).
HEALTH_KEY = "health.coordinator"
# What Retry-After says past the write budget: an election usually settles within a few seconds.
RETRY_AFTER_S = 2


def unavailable_message(exc: BaseException) -> str:
    """The error a client gets once a write has waited out the budget: the same over HTTP and NATS."""
    return (f"the platform's JetStream is unavailable (electing a leader, or a stream being recreated): "
            f"{str(exc) or type(exc).__name__}; try again in {RETRY_AFTER_S} s")


@dataclass(frozen=True, kw_only=True)
class JetStreamState:
    ok: bool
    reason: str = ""

    @property
    def text(self) -> str:
        return "ok" if self.ok else f"unavailable: {self.reason}"


class JetStreamProbe:
    """Can the coordinator write and read its ``ops`` bucket now? Cached for ``ttl_s``, and one probe
    at a time however many ask, so a load balancer polling hard costs JetStream at most one write
    and one read per ``ttl_s``."""

    def __init__(self, *, nc: Client, bucket: KeyValue, ttl_s: float = 1.0, timeout_s: float = 2.0) -> None:
        self.nc = nc
        self.bucket = bucket
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._last: JetStreamState | None = None
        self._checked_at = 0.0
        self._probing: asyncio.Task[JetStreamState] | None = None
        self._stamp = json.dumps({"host": socket.gethostname(), "pid": os.getpid()})

    async def state(self) -> JetStreamState:
        # Free to know, so never cached: a dropped connection shows at once.
        if not self.nc.is_connected:
            return JetStreamState(ok=False, reason="not connected to NATS")
        if self._last is not None and time.monotonic() - self._checked_at < self.ttl_s:
            return self._last
        if self._probing is None:
            self._probing = asyncio.create_task(self._probe(), name="jetstream-probe")
        # Shielded: a client that hangs up must not cancel the probe the others wait for.
        return await asyncio.shield(self._probing)

    async def _probe(self) -> JetStreamState:
        try:
            try:
                stamp = f'{{"at": {time.time():.3f}, "by": {self._stamp}}}'.encode()
                async with asyncio.timeout(self.timeout_s):
                    revision = await self.bucket.put(HEALTH_KEY, stamp)
                    await self.bucket.get(HEALTH_KEY, revision=revision)
                state = JetStreamState(ok=True)
            except TimeoutError:
                state = JetStreamState(ok=False, reason=f"the ops bucket did not answer in {self.timeout_s:g} s")
            except Exception as exc:
                state = JetStreamState(ok=False, reason=f"the ops bucket cannot be written now: "
                                                        f"{str(exc) or type(exc).__name__}")
            self._last, self._checked_at = state, time.monotonic()
            return state
        finally:
            self._probing = None
