"""JetStream publishes whose acknowledgements all come back to one wildcard inbox.

``js.publish`` costs, per call, a random token read from the operating system, a timeout task,
and a parsed acknowledgement object; and it cannot send now and wait later. On the hot path
(every op is about six acknowledged writes) those costs were a fifth of a process's CPU. Here a
publish is sent at once and returns a future for its stream sequence, so several writes leave
in one flush and are awaited together (nats.go calls this ``PublishAsync``). nats-py's own
``js.publish_async`` has the same per-call token and never gives up on a lost acknowledgement;
here a sweep, not a timer per call, fails acknowledgements that never come (the connection
dropped meanwhile).

Key-value writes go through it too: a bucket is a stream, ``create`` is a publish that expects
no earlier revision of the key and ``update`` one that expects the revision read.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import time
from collections import deque

import nats.errors
from nats.aio.client import NO_RESPONDERS_STATUS, Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import Header
from nats.js.errors import APIError, KeyWrongLastSequenceError

from subjects import names

EXPECTED_LAST_SUBJECT_SEQ = Header.EXPECTED_LAST_SUBJECT_SEQUENCE
# JetStream's error codes for a failed expected-sequence check: 10071, or on a replicated stream
# 10164 when another write of the key is still in flight (nats-py's own KeyValue knows both).
WRONG_LAST_SEQUENCE = (10071, 10164)


class AckedPublisher:
    def __init__(self, *, nc: Client, timeout_s: float = 5.0) -> None:
        self.nc = nc
        self.timeout_s = timeout_s
        self._pending: dict[str, asyncio.Future[int]] = {}
        self._deadlines: deque[tuple[float, str]] = deque()
        self._tokens = itertools.count()
        self._prefix = ""
        self._cut = 0
        self._sub: Subscription | None = None
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._prefix = self.nc.new_inbox()
        self._cut = len(self._prefix) + 1
        self._sub = await self.nc.subscribe(f"{self._prefix}.*", cb=self._on_ack)
        self._sweeper = asyncio.create_task(self._sweep(), name="publish-ack-sweep")

    async def stop(self) -> None:
        sweeper, self._sweeper = self._sweeper, None
        if sweeper is not None:
            sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sweeper
        sub, self._sub = self._sub, None
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(nats.errors.ConnectionClosedError())
        self._pending.clear()

    async def __aenter__(self) -> AckedPublisher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def send(self, subject: str, payload: bytes, headers: dict[str, str] | None = None,
                   ) -> asyncio.Future[int]:
        """Publish now; the future gives the stream sequence (a key's new revision) once stored."""
        if self._sub is None:
            raise RuntimeError("publisher not started")
        token = str(next(self._tokens))
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending[token] = future
        self._deadlines.append((time.monotonic() + self.timeout_s, token))
        try:
            await self.nc.publish(subject, payload, reply=f"{self._prefix}.{token}", headers=headers)
        except BaseException:
            self._pending.pop(token, None)
            raise
        return future

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str] | None = None) -> int:
        return await (await self.send(subject, payload, headers))

    async def kv_create(self, bucket: str, key: str, value: bytes) -> int:
        """``kv.create``: raises KeyWrongLastSequenceError if the key was ever written."""
        return await self.publish(names.kv_key_subject(bucket, key), value, {EXPECTED_LAST_SUBJECT_SEQ: "0"})

    async def kv_update(self, bucket: str, key: str, value: bytes, *, last: int) -> int:
        """``kv.update``: raises KeyWrongLastSequenceError unless ``last`` is the key's revision."""
        return await self.publish(names.kv_key_subject(bucket, key), value,
                                  {EXPECTED_LAST_SUBJECT_SEQ: str(last)})

    async def _on_ack(self, msg: Msg) -> None:
        future = self._pending.pop(msg.subject[self._cut:], None)
        if future is None or future.done():
            return
        if msg.headers and msg.headers.get(Header.STATUS) == NO_RESPONDERS_STATUS:
            future.set_exception(nats.errors.NoRespondersError())
            return
        seq = _plain_ack_seq(msg.data)
        if seq is not None:
            future.set_result(seq)
            return
        try:
            ack = json.loads(msg.data)
        except ValueError:
            future.set_exception(APIError(description=f"unreadable acknowledgement {msg.data[:80]!r}"))
            return
        error = ack.get("error")
        if error is None:
            future.set_result(int(ack["seq"]))
        elif error.get("err_code") in WRONG_LAST_SEQUENCE:
            future.set_exception(KeyWrongLastSequenceError(description=error.get("description")))
        else:
            future.set_exception(APIError(code=error.get("code"), err_code=error.get("err_code"),
                                          description=error.get("description")))

    async def _sweep(self) -> None:
        # Deadlines are appended in time order, so the expired ones are always at the front.
        while True:
            await asyncio.sleep(min(0.25, self.timeout_s / 4))
            now = time.monotonic()
            while self._deadlines and self._deadlines[0][0] <= now:
                _, token = self._deadlines.popleft()
                future = self._pending.pop(token, None)
                if future is not None and not future.done():
                    future.set_exception(nats.errors.TimeoutError())
            # Answered tokens leave their deadline behind; drop those from the front too.
            while self._deadlines and self._deadlines[0][1] not in self._pending:
                self._deadlines.popleft()


_SEQ = b'"seq":'


def _plain_ack_seq(data: bytes) -> int | None:
    """The sequence of a plain PubAck (``{"stream":"S","seq":N}``, perhaps with a domain or
    ``duplicate``), read without a JSON parse: one arrives for every write. None for anything else
    (an error above all), which then goes through ``json.loads``."""
    if not data.startswith(b'{"stream":') or b'"error"' in data:
        return None
    start = data.find(_SEQ)
    if start < 0:
        return None
    start += len(_SEQ)
    end = start
    while end < len(data) and 48 <= data[end] <= 57:
        end += 1
    if end == start or end - start > 19 or data[end:end + 1] not in (b",", b"}"):
        return None
    return int(data[start:end])
