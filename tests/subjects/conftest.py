"""The fixture every role test uses: connections holding one role's credential, each with the
server's permission violations it heard."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client

from ktrdr.natsd import NatsServer
from tests.conftest import connect_as
from tests.support import assert_eventually


class Denials:
    """The permission violations the server reported on one connection."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def record(self, exc: Exception) -> None:
        self.seen.append(str(exc))

    async def expect(self, verb: str, subject: str) -> None:
        # nats-py lower-cases the server's notice, subject included.
        wanted = f'permissions violation for {verb} to "{subject}"'.lower()
        await assert_eventually(lambda: any(wanted in s.lower() for s in self.seen),
                                message=f"the server did not refuse {verb} {subject}")


@pytest.fixture
async def as_role(nats_server: NatsServer) -> AsyncIterator[Callable[[str], Awaitable[tuple[Client, Denials]]]]:
    opened: list[Client] = []

    async def open_as(role: str) -> tuple[Client, Denials]:
        denials = Denials()
        nc = await connect_as(nats_server.url, role, error_cb=denials.record)
        opened.append(nc)
        return nc, denials

    yield open_as
    for nc in opened:
        with contextlib.suppress(Exception):
            await nc.close()


async def attempt(awaitable: Awaitable[Any]) -> None:
    """A denied JetStream call or request only times out on the client: the refusal is the
    server's violation notice, which the test reads instead."""
    with contextlib.suppress(nats.errors.TimeoutError, nats.errors.NoRespondersError, asyncio.TimeoutError):
        await asyncio.wait_for(awaitable, 1.0)


