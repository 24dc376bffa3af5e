"""One active IB host: a standby neither fetches nor talks to IB, and takes over when the active
host stops (lock released) or dies (lock expires)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nats.aio.client import Client

from coordinator.app import Coordinator
from host_ib.election import lock_bucket, read_lock
from ktrdr.data.shared import fetch_dataset
from ktrdr.data.store import DataStore
from ktrdr.natsd import NatsServer
from subjects import names, roles
from subjects.models import OpStatus, SubmitRequest, WorkerLease, WorkerState, decode
from tests.conftest import ROOT, role_env
from tests.host_ib.conftest import FAST_IB, MakeHost
from tests.ktrdr.ib.fake_gateway import FakeGateway
from tests.support import assert_eventually, wait_status

LOAD = {"symbol": "AAPL", "timeframe": "1h", "mode": "full", "start": "2024-01-01", "end": "2024-01-05"}


async def lease_of(nc: Client, worker_id: str) -> WorkerLease | None:
    kv = await nc.jetstream().key_value(names.WORKERS_BUCKET)
    try:
        entry = await kv.get(names.lease_key(roles.LOCAL_IB_HOST, worker_id))
    except Exception:
        return None
    return decode(WorkerLease, entry.value) if entry.value else None


async def holder(nc: Client) -> str | None:
    kv = await lock_bucket(nc.jetstream())
    current = await read_lock(kv)
    return current[1].worker_id if current and current[1] else None


async def test_standby_waits_and_takes_over_when_the_active_host_stops(
        nc: Client, coordinator: Coordinator, make_host: MakeHost, gateway: FakeGateway) -> None:
    active = await make_host("ib1")
    standby = await make_host("ib2", ib_client_id=2, wait_active=False)

    async def standby_lease() -> bool:
        lease = await lease_of(nc, "ib2")
        return (lease is not None and lease.state is WorkerState.STANDBY and lease.status["role"] == "standby"
                and lease.status["active_instance"] == "ib1")

    await assert_eventually(standby_lease, message="ib2's lease never said standby under ib1")
    assert not standby.active and not standby.gateway.connected
    first = await coordinator.dispatcher.submit(SubmitRequest(type="data_load", params=LOAD))
    assert (await wait_status(coordinator, first.op_id, OpStatus.COMPLETED)).worker_id == "ib1"
    assert gateway.connections_accepted == 1  # the standby never connected

    await active.stop()  # graceful: releases the lock at once
    await assert_eventually(lambda: standby.active and standby.gateway.connected, timeout=5,
                            message="the standby never took over")
    second = await coordinator.dispatcher.submit(SubmitRequest(type="data_load", params=LOAD))
    assert (await wait_status(coordinator, second.op_id, OpStatus.COMPLETED)).worker_id == "ib2"
    assert await holder(nc) == "ib2"


def spawn_host(nats_server: NatsServer, gateway: FakeGateway, tmp_path: Path) -> subprocess.Popen[bytes]:
    """``python -m host_ib`` as worker ``ib-proc``: a real process, to be killed."""
    env = {**os.environ, **role_env(roles.IB), "KTRDR_NATS_URL": nats_server.url, "KTRDR_WORKER_ID": "ib-proc",
           "KTRDR_IB_PORT": str(gateway.port), "KTRDR_IB_DATA_DIR": str(tmp_path / "proc"),
           "KTRDR_LOG_LEVEL": "WARNING", **{f"KTRDR_{k.upper()}": str(v) for k, v in FAST_IB.items()}}
    with open(tmp_path / "ib-proc.log", "wb") as out:
        return subprocess.Popen([sys.executable, "-m", "host_ib"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)


async def test_a_killed_active_host_is_replaced_when_its_lock_expires(
        nats_server: NatsServer, nc: Client, coordinator: Coordinator, make_host: MakeHost,
        gateway: FakeGateway, tmp_path: Path) -> None:
    proc = spawn_host(nats_server, gateway, tmp_path)
    try:
        await assert_eventually(lambda: holder(nc), timeout=20, message="the host process never became active")
        assert await holder(nc) == "ib-proc"
        standby = await make_host("ib2", ib_client_id=2, wait_active=False)
        await assert_eventually(lambda: standby.lease().state is WorkerState.STANDBY)

        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # Nothing released the lock: the standby takes over once its 2 s TTL has run out.
        await assert_eventually(lambda: standby.active and standby.gateway.connected, timeout=8,
                                message="the standby never took over from the killed host")
        op = await coordinator.dispatcher.submit(SubmitRequest(type="data_load", params=LOAD))
        assert (await wait_status(coordinator, op.op_id, OpStatus.COMPLETED)).worker_id == "ib2"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _minute_load(start_day: int, days: int) -> dict[str, str]:
    # 1m bars: IB allows one day per request, so each day is one segment.
    start = datetime(2024, 1, 1, tzinfo=UTC) + timedelta(days=start_day)
    return {"symbol": "AAPL", "timeframe": "1m", "mode": "full", "start": start.isoformat(),
            "end": (start + timedelta(days=days)).isoformat()}


async def bucket_bars(nc: Client, tmp_path: Path) -> int:
    elsewhere = DataStore(root=tmp_path / "elsewhere")
    await fetch_dataset(nc.jetstream(), elsewhere, "AAPL", "1m")
    return len(elsewhere.load("AAPL", "1m"))


async def test_a_host_taking_over_keeps_the_bars_the_other_host_published(
        nc: Client, coordinator: Coordinator, make_host: MakeHost, tmp_path: Path) -> None:
    first = await make_host("ib1")
    op = await coordinator.dispatcher.submit(SubmitRequest(type="data_load", params=_minute_load(0, 2)))
    await wait_status(coordinator, op.op_id, OpStatus.COMPLETED)
    await first.stop()
    # The new host's own store has never seen those two days.
    await make_host("ib2", ib_client_id=2)
    op = await coordinator.dispatcher.submit(SubmitRequest(type="data_load", params=_minute_load(2, 2)))
    done = await wait_status(coordinator, op.op_id, OpStatus.COMPLETED)
    assert done.worker_id == "ib2" and done.info["adopted_bars"] == 2 * 1440
    assert await bucket_bars(nc, tmp_path) == 4 * 1440


async def test_a_full_download_resumes_after_its_host_is_killed(
        nats_server: NatsServer, nc: Client, coordinator: Coordinator, make_host: MakeHost,
        gateway: FakeGateway, tmp_path: Path) -> None:
    gateway.response_delay_s = 0.2
    proc = spawn_host(nats_server, gateway, tmp_path)
    try:
        await assert_eventually(lambda: holder(nc), timeout=20, message="the host process never became active")
        op = await coordinator.dispatcher.submit(SubmitRequest(type="data_load", params=_minute_load(0, 8)))
        await assert_eventually(
            lambda: (o := coordinator.ops.get(op.op_id)) and o.progress and (o.progress.steps_done or 0) >= 3,
            timeout=20, message="three segments never completed")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        await make_host("ib2", ib_client_id=2)  # active once the dead host's lock expires
        done = await wait_status(coordinator, op.op_id, OpStatus.COMPLETED, timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    assert done.attempt == 2 and done.worker_id == "ib2"
    # The two segments in the bucket before the third completed were not asked for again.
    assert done.info["resumed_segments"] >= 2
    day = timedelta(days=1)
    ends = [r.end for r in gateway.historical_requests]
    start = datetime(2024, 1, 1, tzinfo=UTC)
    assert ends.count(start + day) == 1 and ends.count(start + 2 * day) == 1, ends
    assert await bucket_bars(nc, tmp_path) == 8 * 1440
