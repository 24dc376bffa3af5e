"""The coordinator's feed of what workers publish: the durable consumer of the ``OPS`` stream.

Every message's change is queued at once, so different operations proceed concurrently (one
op's messages stay in order: ``Operations`` queues its changes and commits them together). Acknowledgements go out
in batches: the consumer acknowledges "everything up to here" (AckPolicy ALL), and the feed only
ever acknowledges up to the oldest message not yet applied. A message that cannot be applied
yet (JetStream briefly unavailable) is retried here rather than handed back, which would let a
later acknowledgement cover it. After a crash, what was applied but not yet acknowledged is
delivered again; applying an event or progress update twice changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from ktrdr.runtime.tasks import cancel_and_wait
from subjects import names

log = logging.getLogger(__name__)

ACK_DELAY_S = 0.005  # acknowledgements of the messages applied meanwhile leave together
RETRY_MAX_S = 2.0


class _Delivery:
    __slots__ = ("msg", "applied", "retries")

    def __init__(self, msg: Msg) -> None:
        self.msg = msg
        self.applied = False
        self.retries = 0


class OpsFeed:
    """``apply(msg)`` queues the message's change and returns the commit to wait for (None when
    there is nothing to apply); it may raise, like the commit may fail, when JetStream is away."""

    def __init__(self, *, nc: Client, apply: Callable[[Msg], asyncio.Future[Any] | None]) -> None:
        self.nc = nc
        self._apply = apply
        self._unacked: deque[_Delivery] = deque()
        self._ack_to: Msg | None = None
        self._ack_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(names.COORDINATOR_DELIVER, cb=self._on_msg,
                                            pending_msgs_limit=200_000)

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        await cancel_and_wait(self._tasks, what="ops feed task")
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._ack_timer = None
        await self._send_ack()

    async def _on_msg(self, msg: Msg) -> None:
        if not msg.reply:
            return  # a status message (we ask for no heartbeats or flow control)
        delivery = _Delivery(msg)
        self._unacked.append(delivery)
        self._start(delivery)

    def _start(self, delivery: _Delivery) -> None:
        # No task per message: the change is queued at once and the commit reports back.
        try:
            commit = self._apply(delivery.msg)
        except Exception as exc:
            self._retry_later(delivery, exc)
            return
        if commit is None:
            self._applied(delivery)
        else:
            commit.add_done_callback(lambda done: self._committed(delivery, done))

    def _committed(self, delivery: _Delivery, commit: asyncio.Future[Any]) -> None:
        if commit.cancelled():
            return  # shutting down: the message comes again to the next coordinator
        exc = commit.exception()
        if exc is None:
            self._applied(delivery)
        else:
            self._retry_later(delivery, exc)

    def _retry_later(self, delivery: _Delivery, exc: BaseException) -> None:
        # JetStream unavailable for a moment (a cluster electing a leader): try again. Handing
        # the message back instead would let a later acknowledgement cover it.
        delivery.retries += 1
        delay = min(RETRY_MAX_S, 0.1 * 2 ** (delivery.retries - 1))
        log.warning("could not apply %s yet (%s); retrying in %.1f s", delivery.msg.subject, exc, delay)

        async def retry() -> None:
            await asyncio.sleep(delay)
            self._start(delivery)

        task = asyncio.create_task(retry())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _applied(self, delivery: _Delivery) -> None:
        delivery.applied = True
        advanced = False
        while self._unacked and self._unacked[0].applied:
            self._ack_to = self._unacked.popleft().msg
            advanced = True
        if advanced and self._ack_timer is None and self._sub is not None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY_S, self._ack_soon)

    def _ack_soon(self) -> None:
        self._ack_timer = None
        task = asyncio.create_task(self._send_ack())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send_ack(self) -> None:
        msg, self._ack_to = self._ack_to, None
        if msg is None or self.nc.is_closed:
            return
        try:
            await msg.ack()
        except Exception as exc:
            # Unacknowledged messages come again after the AckWait; applying them again is harmless.
            log.warning("acknowledgement of %s failed: %s", msg.subject, exc)
