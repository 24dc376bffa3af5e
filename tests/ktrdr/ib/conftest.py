from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from ktrdr.ib.client import IbClient
from tests.ktrdr.ib.fake_gateway import FakeGateway


@pytest.fixture
async def client(gateway: FakeGateway) -> AsyncIterator[IbClient]:
    ib_client = IbClient(request_timeout_s=5.0)
    await ib_client.connect("127.0.0.1", gateway.port, client_id=11, timeout=3.0)
    try:
        yield ib_client
    finally:
        await ib_client.disconnect()


class ProgressLog:
    """A ProgressFn that remembers every update."""

    def __init__(self) -> None:
        self.updates: list[dict[str, Any]] = []

    def __call__(self, **update: Any) -> None:
        self.updates.append(update)

    @property
    def messages(self) -> list[str]:
        return [u["message"] for u in self.updates if u.get("message")]


@pytest.fixture
def progress_log() -> ProgressLog:
    return ProgressLog()
