"""Reading streams without consumers: JetStream's batched direct get (one message by subject is nats-py's
``get_last_msg(direct=True)``).

A consumer is the one thing a role must not make: whoever may create one can give it a
``deliver_subject`` that the server then publishes to on the creator's behalf, past every
permission the creator has (nats-server issue 8274). So only the coordinator makes consumers,
and every other role reads the streams it may read with direct gets
(``$JS.API.DIRECT.GET.<stream>``), answered by the server with stored messages and nothing else.

A batch (``{"batch": N, "next_by_subj": ..., "seq": ...}``) comes back as up to N messages on
the request's reply inbox, then an end-of-batch status (204 ``EOB``) whose ``Nats-Num-Pending``
says how many more match; :func:`scan` pages through a filter that way. ``multi_last`` would be
one request for the last message of every subject, but nats-server answers 413 past 1,024
subjects, so a listing pages instead: every stream read here keeps one message per subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from subjects import names

DEFAULT_TIMEOUT_S = 5.0
# Messages per batch request: big enough to amortise the round trip, small enough that one
# request's answers (at most BATCH x the server's max payload) never pile up unread.
BATCH = 1000


class DirectGetError(RuntimeError):
    """The server refused a direct get (not allowed, direct get off)."""


class NoStream(DirectGetError):
    """Nobody answers direct gets of the stream: it does not exist (yet)."""


@dataclass(frozen=True, slots=True)
class Stored:
    """One stored message as a direct get returns it."""

    subject: str
    seq: int
    data: bytes
    headers: dict[str, str]


def _status(msg: Msg) -> str | None:
    return (msg.headers or {}).get("Status") if not msg.data else None


def _stored(msg: Msg) -> Stored:
    headers = dict(msg.headers or {})
    return Stored(subject=headers.get("Nats-Subject", ""), seq=int(headers.get("Nats-Sequence", "0")),
                  data=bytes(msg.data or b""), headers=headers)


async def batch(nc: Client, stream: str, request: dict[str, Any], *,
                timeout: float = DEFAULT_TIMEOUT_S) -> tuple[list[Stored], int]:
    """One batched direct get: the messages and how many more match (``Nats-Num-Pending``).
    ``timeout`` bounds the wait for the next message, not the whole batch."""
    got: list[Stored] = []
    end: asyncio.Future[Msg] = asyncio.get_running_loop().create_future()

    # The messages are kept as they arrive and one future is woken at the end: a wait per message
    # (a queue and a timeout each) made a listing of 2,000 keys take twice as long.
    async def put(msg: Msg) -> None:
        if _status(msg) is None:
            got.append(_stored(msg))
        elif not end.done():
            end.set_result(msg)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=put)
    try:
        await nc.publish(f"{names.JS_API_PREFIX}.DIRECT.GET.{stream}", json.dumps(request).encode(), reply=inbox)
        seen = -1
        while not end.done():
            if len(got) == seen:  # nothing arrived for a whole timeout
                raise nats.errors.TimeoutError
            seen = len(got)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(end), timeout)
        msg = end.result()
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    status = _status(msg)
    if status == "204":  # end of batch
        return got, int((msg.headers or {}).get("Nats-Num-Pending", "0"))
    if status == "404":  # nothing (more) matches
        return got, 0
    if status == "503":
        raise NoStream(f"no stream {stream} answers direct gets")
    description = (msg.headers or {}).get("Description", "")
    raise DirectGetError(f"direct get on {stream} refused: {status} {description}".strip())


async def scan(nc: Client, stream: str, subject: str, *, page: int = BATCH, seq: int = 1, limit: int | None = None,
               timeout: float = DEFAULT_TIMEOUT_S) -> AsyncIterator[Stored]:
    """Every stored message on ``subject`` (wildcards allowed) from stream sequence ``seq`` on, oldest
    first, a page at a time; at most ``limit`` of them (an object's chunks: no page asks for more)."""
    left = limit
    while left is None or left > 0:
        want = page if left is None else min(page, left)
        got, pending = await batch(nc, stream, {"seq": seq, "next_by_subj": subject, "batch": want},
                                   timeout=timeout)
        for stored in got:
            yield stored
        if left is not None:
            left -= len(got)
        if not got or pending <= 0:
            return
        seq = got[-1].seq + 1
