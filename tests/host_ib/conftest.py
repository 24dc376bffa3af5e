"""IB hosts in-process against the fake gateway, a real nats-server and the in-process coordinator."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from host_ib.app import IbHost
from host_ib.settings import IbSettings
from ktrdr.natsd import NatsServer
from subjects import roles
from tests.conftest import FAST, bounded, creds
from tests.ktrdr.ib.fake_gateway import FakeGateway
from tests.support import assert_eventually

# Short windows and back-offs keep IB's rules at a fraction of the wall-clock cost.
FAST_IB: dict[str, Any] = {
    **FAST, "fetch_timeout_s": 0.3, "grace_s": 1.0, "cancel_wait_s": 2.0,
    "ib_lock_ttl_s": 2.0, "ib_lock_refresh_s": 0.25, "ib_standby_poll_s": 0.1,
    "ib_reconnect_min_s": 0.05, "ib_reconnect_max_s": 0.2, "ib_reconnect_give_up_s": 20.0,
    "ib_connect_timeout_s": 3.0, "ib_request_timeout_s": 5.0,
    "ib_pacing_max_requests": 1000, "ib_pacing_per_contract": 1000, "ib_pacing_contract_window_s": 0.01,
    "ib_pacing_identical_s": 0.05, "ib_pacing_backoff_s": 0.3, "ib_publish_interval_s": 0.0,
}


def host_settings(url: str, worker_id: str, gateway: FakeGateway, data_dir: Path, **overrides: Any) -> IbSettings:
    return IbSettings(**{"nats_url": url, "nats_creds": creds(roles.IB), "worker_id": worker_id,
                         "ib_port": gateway.port,
                         "ib_data_dir": data_dir / worker_id, **FAST_IB, **overrides})


MakeHost = Callable[..., Awaitable[IbHost]]


@pytest.fixture
async def make_host(nats_server: NatsServer, gateway: FakeGateway, tmp_path: Path) -> AsyncIterator[MakeHost]:
    """``await make_host("ib1")``: started; waits until it is active unless ``wait_active=False``."""
    started: list[IbHost] = []

    async def make(worker_id: str, *, wait_active: bool = True, **overrides: Any) -> IbHost:
        host = IbHost(settings=host_settings(nats_server.url, worker_id, gateway, tmp_path, **overrides))
        await host.start()
        started.append(host)
        if wait_active:
            await assert_eventually(lambda: host.active and host.gateway.connected, timeout=10,
                                    message=f"{worker_id} never became active and connected")
        return host

    yield make
    for host in started:
        await bounded(host.stop(), f"IB host {host.worker_id}")
