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

Only this consumer's deliveries are believed. Whoever may create a consumer can point one at the
deliver subject, and whoever may publish there can make up a reply subject; a sequence taken from
such a message once made the feed read 200,000 sequences OPS never held, retrying without end. So
a message is a delivery only when its subject is one OPS stores (a plain publish arrives on the
deliver subject itself) and its reply is the acknowledgement subject of this stream and this
durable. Anything else is ``foreign``: counted, logged at most once every ``LOG_EVERY_S``, never
applied, never acknowledged, its sequence never believed. Dropping a real delivery by mistake would
lose nothing: unacknowledged, it is read back with the next delivery's gap, or delivered again.

A gap is checked with the server before it is read. A sequence past the stream's last one, or past
what the server delivered to this consumer, is not ours: foreign. The gap starts no earlier than
the consumer's ack floor (whoever acknowledged a message had applied it) and the stream's first
sequence. One reader walks the gaps in order, asking the stream for the next message stored at or
after a sequence, so deleted and expired sequences cost nothing and reads never pile up. Every
message still stored in a gap so clamped is one the server counts as pending acknowledgement, and
it never lets more than the consumer's ``max_ack_pending`` be pending: a real gap holds no more. The
reader stops there (``gap``: logged and counted) and lets acknowledgements advance over the rest,
since what lies beyond cannot be events someone received and lost, and holding every
acknowledgement behind it would stall the feed. A message that cannot be read within
``READ_BACK``'s budget is given up the same way (``unreadable``): a retry without end holds every
acknowledgement behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo, RawStreamMsg, StreamInfo
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
# Applying a message again: JetStream away for a moment.
RETRY = RetryPolicy(first_s=0.1, max_s=RETRY_MAX_S)
# Reading a skipped message back: longer than an election lasts, short of holding every
# acknowledgement behind one message for ever.
READ_BACK = RetryPolicy(first_s=0.1, max_s=RETRY_MAX_S, budget_s=60.0)
# Checking a gap with the server: each try holds up the deliveries behind it.
LOOKUP = RetryPolicy(first_s=0.1, max_s=1.0, budget_s=5.0)
# Messages read back for one gap when the consumer states no max_ack_pending (the topology's value).
MAX_GAP = 20_000
# Foreign messages cost a counter each and a log line at most this often (per reason).
LOG_EVERY_S = 10.0
LOG_CLIP = 200  # characters of a foreign subject or error in a log line
# An acknowledgement subject with a domain and account hash is well under this.
MAX_ACK_SUBJECT = 256
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
    """A delivered message, a message read back for a gap, or a gap's place in the ack order."""

    __slots__ = ("msg", "applied", "retries", "gap", "waiting")

    def __init__(self, msg: Msg, gap: _Delivery | None = None) -> None:
        self.msg = msg  # a message read back from the stream has no reply subject to ack
        self.applied = False
        self.retries = 0
        self.gap = gap  # of a message read back: the gap it fills
        self.waiting = 0  # of a gap: its messages not applied yet, plus one while it is being read


def _ack_seq(reply: str) -> int | None:
    """The stream sequence of a delivery by our own consumer of OPS, from its acknowledgement subject
    (``$JS.ACK.<stream>.<consumer>.<delivered>.<seq>.<cseq>.<ts>.<pending>``, or with a domain and
    account hash after ``ACK``); None for any other reply subject."""
    if len(reply) > MAX_ACK_SUBJECT:
        return None
    tokens = reply.split(".")
    if len(tokens) == 9:
        owner, numbers = tokens[2:4], tokens[4:9]
    elif len(tokens) >= 11:
        owner, numbers = tokens[4:6], tokens[6:11]
    else:
        return None
    if tokens[:2] != ["$JS", "ACK"] or owner != [names.OPS_STREAM, names.COORDINATOR_CONSUMER]:
        return None
    if not all(n.isascii() and n.isdigit() for n in numbers):
        return None
    delivered, seq = int(numbers[0]), int(numbers[1])
    return seq if delivered > 0 and seq > 0 else None


_OPS_SUBJECTS = tuple(pattern.split(".") for pattern in (names.OPS_PROGRESS_ALL, names.OPS_EVENTS_ALL))


def _stored_in_ops(subject: str) -> bool:
    """Whether OPS stores ``subject``: a delivery keeps the subject it was published on."""
    tokens = subject.split(".")
    return any(len(tokens) == len(pattern) and all(t and w in ("*", t) for w, t in zip(pattern, tokens, strict=True))
               for pattern in _OPS_SUBJECTS)


def _clip(text: str | None, limit: int = LOG_CLIP) -> str:
    text = text or ""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} chars)"


def _describe(msg: Msg) -> str:
    return f"subject {_clip(msg.subject)!r}, reply {_clip(msg.reply)!r}, {len(msg.data or b'')} bytes"


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
        # Gaps to read, in order (placeholder, first, end, most messages to read), and their reader.
        self._gaps: deque[tuple[_Delivery, int, int, int]] = deque()
        self._reader: asyncio.Task[None] | None = None
        self._rejected: dict[str, int] = {}  # by reason, since the last log line about them
        self._logged_at: dict[str, float] = {}

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
        # No reply: a plain publish, or a status message (we ask for no heartbeats or flow control).
        seq = _ack_seq(msg.reply) if msg.reply and _stored_in_ops(msg.subject) else None
        if seq is None:
            self._reject("foreign", _describe(msg))
            return
        if self._expected is not None and seq > self._expected and not await self._gap(self._expected, seq):
            self._reject("foreign", f"{_describe(msg)}: OPS never delivered sequence {seq} to this consumer")
            return
        if self._expected is None or seq >= self._expected:
            self._expected = seq + 1
        delivery = _Delivery(msg)
        self._unacked.append(delivery)
        self._start(delivery)

    async def _gap(self, first: int, end: int) -> bool:
        """Sequences ``first`` to ``end - 1`` were delivered elsewhere or lost on the way: queue what
        of them is left to read. False when the server never delivered ``end`` to this consumer."""
        limit = MAX_GAP
        try:
            stream, consumer = await LOOKUP.run(self._positions, retry_on=_transient)
        except Exception as exc:
            # Subject and reply already say the delivery is our consumer's: read what the bound allows.
            log.warning("could not check OPS sequences %d-%d with the server (%s); reading them anyway",
                        first, end - 1, _clip(str(exc)))
        else:
            delivered = consumer.delivered.stream_seq if consumer.delivered else 0
            if end > (stream.state.last_seq or 0) or end > (delivered or 0):
                return False
            floor = consumer.ack_floor.stream_seq if consumer.ack_floor else 0
            first = max(first, stream.state.first_seq or 0, (floor or 0) + 1)
            if (max_pending := consumer.config.max_ack_pending or 0) > 0:
                limit = max_pending
        if first >= end:
            return True  # acknowledged meanwhile (by another coordinator), or gone from the stream
        log.warning("OPS sequences %d-%d were not delivered here; reading them from the stream", first, end - 1)
        gap = _Delivery(Msg(_client=self.nc))
        gap.waiting = 1
        self._unacked.append(gap)
        self._gaps.append((gap, first, end, limit))
        if self._reader is None:
            self._reader = self._spawn(self._read_gaps())
        return True

    async def _positions(self) -> tuple[StreamInfo, ConsumerInfo]:
        return await asyncio.gather(self.js.stream_info(names.OPS_STREAM),
                                    self.js.consumer_info(names.OPS_STREAM, names.COORDINATOR_CONSUMER))

    async def _read_gaps(self) -> None:
        try:
            while self._gaps:
                gap, first, end, limit = self._gaps[0]
                await self._read_gap(gap, first, end, limit)
                self._gaps.popleft()
                self._settle(gap)
        finally:
            self._reader = None

    async def _read_gap(self, gap: _Delivery, first: int, end: int, limit: int) -> None:
        seq = first
        # One read per message still stored in the gap, and one that finds the gap's end: a real gap
        # holds fewer than ``limit`` (the delivery after it is pending too).
        for _ in range(limit):
            if seq >= end:
                return
            read = functools.partial(self.js.get_msg, names.OPS_STREAM, seq, subject=">", next=True)
            try:
                stored: RawStreamMsg = await READ_BACK.run(read, retry_on=_transient)
            except NotFoundError:
                return  # nothing stored from seq on
            except Exception as exc:
                self._reject("unreadable", f"the OPS message at or after sequence {seq} could not be read within "
                                           f"{READ_BACK.budget_s:g} s: {type(exc).__name__}: {_clip(str(exc))}")
                seq += 1
                continue
            if stored.seq is None or stored.seq >= end:
                return
            missing = _Delivery(Msg(_client=self.nc, subject=stored.subject or "", data=stored.data or b""), gap=gap)
            gap.waiting += 1
            self._start(missing)
            seq = stored.seq + 1
        if seq < end:
            self._reject("gap", f"OPS sequences {seq}-{end - 1} not read: more messages in one gap than the "
                                f"{limit} the consumer may have pending")

    def _reject(self, reason: str, what: str) -> None:
        if self.metrics is not None:
            self.metrics.rejected.labels(subject=names.COORDINATOR_DELIVER, reason=reason).inc()
        self._rejected[reason] = self._rejected.get(reason, 0) + 1
        now = time.monotonic()
        if now - self._logged_at.get(reason, now - LOG_EVERY_S) < LOG_EVERY_S:
            return
        count, self._rejected[reason] = self._rejected[reason], 0
        self._logged_at[reason] = now
        log.warning("OPS feed: %s (%d since the last such line): %s", reason, count, what)

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
        kind = names.OPS_PROGRESS_ALL if ".progress." in subject else names.OPS_EVENTS_ALL
        if self.metrics is not None:
            self.metrics.rejected.labels(subject=kind, reason="poison").inc()
        log.error("giving up on %s after %d tries (%d bytes): %s: %s", _clip(subject), delivery.retries + 1,
                  len(delivery.msg.data or b""), type(exc).__name__, _clip(str(exc), 2000))
        self._applied(delivery)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def _settle(self, gap: _Delivery) -> None:
        """One of ``gap``'s messages is applied, or its reading is over."""
        gap.waiting -= 1
        if gap.waiting == 0:
            self._applied(gap)

    def _applied(self, delivery: _Delivery) -> None:
        delivery.applied = True
        if delivery.gap is not None:
            self._settle(delivery.gap)  # the gap holds the place of its messages in the ack order
            return
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
