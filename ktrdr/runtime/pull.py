"""Pull requests kept outstanding for exactly a worker's free slots.

``fetch(1)`` sends a request and then waits on it for every job, so the next job can't be
asked for before the last one is done: a round trip, a timer and a wake-up per job. The puller
keeps requests outstanding on the server that add up to the free slots (never more: a worker
takes no job it has no slot for), and asks again in the same write as the finished job's
outcome. Deliveries go to a callback, not to a queue that a fetch must poll.

Bookkeeping: the server fills waiting requests in the order they came, and a request that
expires with slots unfilled is answered by a ``408`` status. Every request here has the same
lifetime, so a ``408`` always ends the oldest one. A request whose ``408`` never came (the
connection dropped, the consumer was deleted) is forgotten locally once its lifetime is well
past; the owner calls :meth:`JobPuller.want` again on every heartbeat to renew it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import Header, StatusCode

from subjects import names

log = logging.getLogger(__name__)

# How long past its lifetime a request still counts, waiting for its 408.
EXPIRY_GRACE_S = 1.0
MAX_BACKOFF_S = 5.0
DRAIN_TIMEOUT_S = 5.0
# How long a no_wait request may take to be answered (it is answered at once; this bounds a lost answer).
PROBE_TIMEOUT_S = 2.0


@dataclass
class _Request:
    deadline: float
    remaining: int


@dataclass
class _Probe:
    want: int
    done: asyncio.Future[None]
    jobs: list[Msg] = field(default_factory=list)


class JobPuller:
    """Keeps pull requests on one capability's durable consumer covering ``want(free)`` slots."""

    def __init__(
        self,
        *,
        nc: Client,
        capability: str,
        on_job: Callable[[Msg], Awaitable[None]],
        expires_s: float,
    ) -> None:
        self.nc = nc
        self.capability = capability
        self._subject = names.jobs_pull_subject(capability)
        self._on_job = on_job
        self._expires_ns = int(expires_s * 1e9)
        self._lifetime_s = expires_s + EXPIRY_GRACE_S
        self._requests: deque[_Request] = deque()
        self._wanted = 0
        self._inbox = ""
        self._sub: Subscription | None = None
        self._backoff_until = 0.0
        self._backoff_s = 0.0
        self._probe: _Probe | None = None

    async def start(self) -> None:
        self._inbox = self.nc.new_inbox()
        self._sub = await self.nc.subscribe(self._inbox, cb=self._on_msg)

    async def stop(self) -> None:
        """Stop asking, and end the inbox without stranding a job.

        Requests still open on the server would deliver into a closed inbox, and a job delivered
        there waits out its AckWait (30 s) before anyone else gets it. A drain unsubscribes, then
        makes a round trip: what the server sent before it took the unsubscribe arrives first and
        goes to ``on_job`` (whose owner, stopping, hands it back at once); nothing comes after, and
        the server drops requests whose inbox has no interest. So a stop does not wait out the
        requests' lifetime, which can be long (fewer renewals for an idle fleet). In a cluster a
        delivery already on its way between two servers when the interest goes can still be
        dropped there: that job is delayed by its AckWait, never lost.
        """
        self._wanted = 0
        sub, self._sub = self._sub, None
        if sub is None:
            return
        with contextlib.suppress(Exception):
            if self.nc.is_connected:
                # nats-py leaves Subscription.drain unannotated.
                await asyncio.wait_for(sub.drain(), DRAIN_TIMEOUT_S)  # type: ignore[no-untyped-call]
            else:
                await sub.unsubscribe()
        self._requests.clear()

    @property
    def outstanding(self) -> int:
        """Slots that requests on the server may still fill."""
        now = time.monotonic()
        while self._requests and (self._requests[0].deadline < now or self._requests[0].remaining <= 0):
            self._requests.popleft()
        return sum(r.remaining for r in self._requests)

    async def want(self, free: int) -> None:
        """Ask for more jobs until ``free`` slots are covered; ``0`` lets requests run out."""
        self._wanted = max(0, free)
        if self._sub is None or not self.nc.is_connected or time.monotonic() < self._backoff_until:
            return
        deficit = self._wanted - self.outstanding
        if deficit <= 0:
            return
        self._requests.append(_Request(deadline=time.monotonic() + self._lifetime_s, remaining=deficit))
        await self.nc.publish(self._subject, b'{"batch":%d,"expires":%d}' % (deficit, self._expires_ns),
                              reply=self._inbox)

    async def probe(self, batch: int, *, timeout: float = PROBE_TIMEOUT_S) -> list[Msg]:
        """Up to ``batch`` jobs queued now, taken with a ``no_wait`` request that the server answers
        at once (the jobs, then a 404 when fewer are queued); they go to the caller, not ``on_job``.
        Only while no request of this puller is outstanding: a delivery could not be told apart."""
        if self._sub is None or not self.nc.is_connected or batch <= 0 or self.outstanding:
            return []
        self._probe = _Probe(want=batch, done=asyncio.get_running_loop().create_future())
        try:
            await self.nc.publish(self._subject, b'{"batch":%d,"no_wait":true}' % batch, reply=self._inbox)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._probe.done), timeout)
            return self._probe.jobs
        finally:
            self._probe = None

    async def reset(self) -> None:
        """After a reconnect: requests held by the old connection's server may be gone."""
        self._requests.clear()
        await self.want(self._wanted)

    async def _on_msg(self, msg: Msg) -> None:
        status = JetStreamContext.is_status_msg(msg)
        probe = self._probe
        if probe is not None and not probe.done.done():
            # The no_wait request is the only one out (probe): this answers it.
            if status is None:
                probe.jobs.append(msg)
                if len(probe.jobs) >= probe.want:
                    probe.done.set_result(None)
                return
            if status in (StatusCode.NO_MESSAGES, StatusCode.REQUEST_TIMEOUT):
                probe.done.set_result(None)
                return
        if status is None:
            for request in self._requests:
                if request.remaining > 0:
                    request.remaining -= 1
                    break
            await self._on_job(msg)
            return
        if status == StatusCode.CONTROL_MESSAGE:  # idle heartbeat: we ask for none, but it is harmless
            return
        if status == StatusCode.REQUEST_TIMEOUT:
            if self._requests:
                self._requests.popleft()
            self._backoff_s = 0.0
        else:
            # 409 (leadership change, consumer deleted, too many waiting requests...) or 503 (no
            # such consumer): every request may be gone. Ask again, backing off while it lasts.
            description = msg.headers.get(Header.DESCRIPTION, "") if msg.headers else ""
            self._backoff_s = min(MAX_BACKOFF_S, max(0.25, 2 * self._backoff_s))
            log.warning("pull request on %s ended: %s %s; asking again in %.2f s", self.capability, status,
                        description, self._backoff_s)
            self._requests.clear()
            self._backoff_until = time.monotonic() + self._backoff_s
            await asyncio.sleep(self._backoff_s)
            self._backoff_until = 0.0
        await self.want(self._wanted)
