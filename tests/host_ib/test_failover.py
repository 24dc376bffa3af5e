"""One active IB host: a standby neither fetches nor talks to IB, and takes over when the active
host stops (lock released) or dies (lock expires)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from nats.aio.client import Client

from coordinator.app import Coordinator
from host_ib.election import lock_bucket, read_lock
from ktrdr.natsd import NatsServer
from subjects import names
from subjects.models import OpStatus, SubmitRequest, WorkerLease, WorkerState, decode
from tests.conftest import ROOT
from tests.host_ib.conftest import FAST_IB, MakeHost
from tests.ktrdr.ib.fake_gateway import FakeGateway
from tests.support import assert_eventually, wait_status

LOAD = {"symbol": "AAPL", "timeframe": "1h", "mode": "full", "start": "2024-01-01", "end": "2024-01-05"}


async def lease_of(nc: Client, worker_id: str) -> WorkerLease | None:
    kv = await nc.jetstream().key_value(names.WORKERS_BUCKET)
    try:
        entry = await kv.get(worker_id)
    except Exception:
        return None
    return decode(WorkerLease, entry.value) if entry.value else None


async def holder(nc: Client) -> str | None:
    kv = await lock_bucket(nc.jetstream(), ttl_s=FAST_IB["ib_lock_ttl_s"])
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


async def test_a_killed_active_host_is_replaced_when_its_lock_expires(
        nats_server: NatsServer, nc: Client, coordinator: Coordinator, make_host: MakeHost,
        gateway: FakeGateway, tmp_path: Path) -> None:
    env = {**os.environ, "KTRDR_NATS_URL": nats_server.url, "KTRDR_WORKER_ID": "ib-proc",
           "KTRDR_IB_PORT": str(gateway.port), "KTRDR_IB_DATA_DIR": str(tmp_path / "proc"),
           "KTRDR_LOG_LEVEL": "WARNING", **{f"KTRDR_{k.upper()}": str(v) for k, v in FAST_IB.items()}}
    with open(tmp_path / "ib-proc.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "host_ib"], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT)
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
