"""The coordinator's feed of what workers publish: the durable consumer of the ``OPS`` stream.

Every message's change is queued at once, so different operations proceed concurrently (one
op's messages stay in order: ``Operations`` queues its changes and commits them together). Acknowledgements go out
in batches: the consumer acknowledges "everything up to here" (AckPolicy ALL), and the feed only
ever acknowledges up to the oldest message not yet applied. A message that cannot be applied
yet (JetStream briefly unavailable) is retried here rather than handed back, which would let a
later acknowledgement cover it. One that never can be applied (a poison message: the same
failure every time) is logged, counted in ``ktrdr_rejected_messages_total`` and acknowledged
after a few tries, since every acknowledgement behind it waits for it. After a crash, what was
applied but not yet acknowledged is delivered again; applying an event or progress update twice
changes nothing.

An "up to here" acknowledgement must never cover a message this process has not seen: one that
went to a coordinator that died before applying it, or that was in flight when the connection
dropped. The server delivers those again only after the AckWait, and in the meantime delivers
newer ones. So the feed follows the stream sequence from the consumer's ack floor on, and reads
any sequence it skipped straight from the stream, applying it before acknowledging past it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import APIError, NotFoundError, ServiceUnavailableError
from pydantic import ValidationError

from coordinator.metrics import Metrics
from coordinator.operations import ConcurrentWriters
from ktrdr.runtime.retry import RetryPolicy
from ktrdr.runtime.tasks import cancel_and_wait
from subjects import names
from subjects.models import BadPayload

log = logging.getLogger(__name__)

ACK_DELAY_S = 0.005  # acknowledgements of the messages applied meanwhile leave together
RETRY_MAX_S = 2.0
# Reading a message back, or applying one again: JetStream away for a moment.
RETRY = RetryPolicy(first_s=0.1, max_s=RETRY_MAX_S)
# Tries of a message that fails for a reason not known to pass (about 10 s): after them it is a
# poison message, logged, counted and acknowledged, since every acknowledgement waits behind it.
POISON_AFTER = 8

# JetStream away for a moment (a reconnect, a leader election): retried for as long as it lasts.
_TRANSIENT = (
    nats.errors.TimeoutError, nats.errors.NoRespondersError, nats.errors.ConnectionClosedError,
    nats.errors.ConnectionReconnectingError, nats.errors.StaleConnectionError,
    nats.errors.OutboundBufferLimitError, nats.errors.FlushTimeoutError, ServiceUnavailableError,
    ConcurrentWriters,
)
# Failures that the same message can only repeat: a poison message at once.
_PERMANENT = (nats.errors.MaxPayloadError, BadPayload, ValidationError, ValueError, TypeError, KeyError)


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, _TRANSIENT):
        return True
    return isinstance(exc, APIError) and (exc.code or 0) >= 500


class _Delivery:
    __slots__ = ("msg", "applied", "retries")

    def __init__(self, msg: Msg) -> None:
        self.msg = msg  # a message read back from the stream has no reply subject to ack
        self.applied = False
        self.retries = 0


def _stream_seq(reply: str) -> int | None:
    """The stream sequence in a JetStream ack subject (with or without a domain)."""
    tokens = reply.split(".")
    if len(tokens) == 9:
        return int(tokens[5])
    if len(tokens) >= 11:
        return int(tokens[7])
    return None


class OpsFeed:
    """``apply(msg)`` queues the message's change and returns the commit to wait for (None when
    there is nothing to apply); it may raise, like the commit may fail, when JetStream is away."""

    def __init__(self, *, nc: Client, js: JetStreamContext,
                 apply: Callable[[Msg], asyncio.Future[Any] | None], metrics: Metrics | None = None) -> None:
        self.nc = nc
        self.js = js
        self._apply = apply
        self.metrics = metrics
        self._expected: int | None = None  # the next new stream sequence the consumer will deliver
        self._unacked: deque[_Delivery] = deque()
        self._ack_to: Msg | None = None
        self._ack_timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._sub: Subscription | None = None

    async def start(self) -> None:
        info = await self.js.consumer_info(names.OPS_STREAM, names.COORDINATOR_CONSUMER)
        self._expected = info.ack_floor.stream_seq + 1 if info.ack_floor else None
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
        seq = _stream_seq(msg.reply)
        if seq is not None:
            if self._expected is not None and seq > self._expected:
                await self._fill_gap(self._expected, seq)
            if self._expected is None or seq >= self._expected:
                self._expected = seq + 1
        delivery = _Delivery(msg)
        self._unacked.append(delivery)
        self._start(delivery)

    async def _fill_gap(self, first: int, end: int) -> None:
        """Sequences ``first`` to ``end - 1`` were delivered elsewhere or lost on the way."""
        if end - first > 100:
            # Messages the stream no longer holds (past their max age) are not a gap.
            first = max(first, (await self.js.stream_info(names.OPS_STREAM)).state.first_seq)
        if first < end:
            log.warning("OPS sequences %d-%d were not delivered here; reading them from the stream", first, end - 1)
        for seq in range(first, end):
            missing = _Delivery(Msg(_client=self.nc))
            self._unacked.append(missing)
            self._spawn(self._read_back(missing, seq))

    async def _read_back(self, missing: _Delivery, seq: int) -> None:
        pauses = RETRY.delays()
        while True:
            try:
                stored = await self.js.get_msg(names.OPS_STREAM, seq)
                break
            except NotFoundError:
                self._applied(missing)  # deleted from the stream: nothing to apply
                return
            except Exception as exc:
                log.warning("could not read OPS sequence %d yet (%s)", seq, exc)
                await asyncio.sleep(next(pauses))
        missing.msg = Msg(_client=self.nc, subject=stored.subject, data=stored.data or b"")
        self._start(missing)

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
        if not _transient(exc) and (isinstance(exc, _PERMANENT) or delivery.retries + 1 >= POISON_AFTER):
            self._poison(delivery, exc)
            return
        delivery.retries += 1
        delay = RETRY.delay(delivery.retries - 1)
        log.warning("could not apply %s yet (%s); retrying in %.1f s", delivery.msg.subject, exc, delay)

        async def retry() -> None:
            await asyncio.sleep(delay)
            self._start(delivery)

        self._spawn(retry())

    def _poison(self, delivery: _Delivery, exc: BaseException) -> None:
        """A message no retry can apply: acknowledging it keeps the ack floor moving, and every
        message behind it (other ops' outcomes) is acknowledged as it is applied."""
        subject = delivery.msg.subject or "?"
        kind = names.OPS_PROGRESS_ALL if subject.endswith(".progress") else names.OPS_EVENTS_ALL
        if self.metrics is not None:
            self.metrics.rejected.labels(subject=kind, reason="poison").inc()
        log.error("giving up on %s after %d tries (%d bytes): %s: %s", subject, delivery.retries + 1,
                  len(delivery.msg.data or b""), type(exc).__name__, exc)
        self._applied(delivery)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _applied(self, delivery: _Delivery) -> None:
        delivery.applied = True
        advanced = False
        while self._unacked and self._unacked[0].applied:
            msg = self._unacked.popleft().msg
            if msg.reply:  # acking a later delivery covers one read back from the stream
                self._ack_to = msg
                advanced = True
        if advanced and self._ack_timer is None and self._sub is not None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY_S, self._ack_soon)

    def _ack_soon(self) -> None:
        self._ack_timer = None
        self._spawn(self._send_ack())

    async def _send_ack(self) -> None:
        msg, self._ack_to = self._ack_to, None
        if msg is None or self.nc.is_closed:
            return
        try:
            await msg.ack()
        except Exception as exc:
            # Unacknowledged messages come again after the AckWait; applying them again is harmless.
            log.warning("acknowledgement of %s failed: %s", msg.subject, exc)
