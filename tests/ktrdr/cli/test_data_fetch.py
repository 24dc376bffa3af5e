"""``ktrdr data fetch`` with no IB host running says so at once, and a followed download gives up."""

from __future__ import annotations

from coordinator.app import Coordinator
from ktrdr.natsd import NatsServer
from subjects.models import OpStatus
from tests.ktrdr.cli.running import cli, error_lines

FETCH = ("data", "fetch", "AAPL", "-t", "1h", "--mode", "full", "--start", "2024-01-01", "--end", "2024-01-02")


async def test_a_followed_fetch_without_an_ib_host_is_cancelled_after_the_wait_saying_why(
        nats_server: NatsServer, coordinator: Coordinator) -> None:
    done = await cli(nats_server, *FETCH, "--follow", "--ib-wait", "1")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "no IB host holds a lease" in done.stderr and "ktrdr host ib" in done.stderr
    assert error_lines(done)[-1].startswith("error: no IB host was available within 1 s")
    op = next(iter(coordinator.ops.all()))
    assert op.status is OpStatus.CANCELLED
    assert op.cancel_reason is not None and "no IB host was available within 1 s" in op.cancel_reason


async def test_the_wait_comes_from_the_settings_too(nats_server: NatsServer, coordinator: Coordinator) -> None:
    done = await cli(nats_server, *FETCH, "--follow", KTRDR_IB_WAIT_S="0.5")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "no IB host was available within 0.5 s" in done.stderr


async def test_an_unfollowed_fetch_without_an_ib_host_is_queued_with_a_notice(
        nats_server: NatsServer, coordinator: Coordinator) -> None:
    done = await cli(nats_server, *FETCH)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no IB host holds a lease" in done.stderr
    assert next(iter(coordinator.ops.all())).status is OpStatus.PENDING
