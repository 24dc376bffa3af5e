"""Leases decide liveness; fencing; nothing lives only in memory."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from nats.aio.client import Client

from coordinator.app import Coordinator
from ktrdr.client.aio import AsyncClient
from ktrdr.natsd import NatsServer
from ktrdr.runtime.worker import WorkerRefused
from subjects import names, roles
from subjects.models import Operation, OpStatus, SubmitRequest, WorkerLease
from tests.conftest import FAST, ROOT, MakeWorker, SpawnWorker, auth, coordinator_settings, role_env
from tests.support import assert_eventually, wait_status

TTL = FAST["lease_ttl_s"]
# The semantic is "within lease TTL + 2 s"; the slack absorbs a loaded CI machine.
RECOVERY_DEADLINE = TTL + 2.0 + 3.0


async def start_on(coordinator: Coordinator, op_id: str, worker_id: str) -> Operation:
    op = await wait_status(coordinator, op_id, OpStatus.RUNNING, timeout=15)
    assert op.worker_id == worker_id
    return op


async def test_killed_worker_op_is_retried_on_another_worker(
        coordinator: Coordinator, spawn_worker: SpawnWorker, make_worker: MakeWorker) -> None:
    victim = spawn_worker("victim")
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 60, "steps": 60}))
    await start_on(coordinator, op.op_id, "victim")
    await make_worker("rescuer")
    victim.send_signal(signal.SIGKILL)

    def retried() -> Operation | None:
        o = coordinator.ops.get(op.op_id)
        return o if o and o.attempt == 2 and o.status is OpStatus.RUNNING else None

    again = await assert_eventually(retried, timeout=RECOVERY_DEADLINE)
    assert again.worker_id == "rescuer"
    assert any("victim" in w for w in again.warnings)
    assert "retry after worker victim lost" in (again.route_reason or "")
    assert [a.attempt for a in again.attempts] == [1, 2]


async def test_a_worker_restarted_under_its_own_id_loses_what_the_old_process_ran(
        nats_server: NatsServer, spawn_worker: SpawnWorker, nc: Client) -> None:
    # A lease far longer than the test: the old process's lease never expires, because the new
    # process (same stable id) takes it over within a second or two. The bucket's TTL is its
    # creator's: made anew by this test's coordinator, not the fixture's 2 s one.
    await nc.jetstream().delete_key_value(names.WORKERS_BUCKET)
    settings = coordinator_settings(nats_server.url, lease_ttl_s=60.0)
    async with Coordinator(settings=settings) as coordinator:
        old = spawn_worker("steady", KTRDR_LEASE_TTL_S="60")
        op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 60, "steps": 60}))
        await start_on(coordinator, op.op_id, "steady")
        old.send_signal(signal.SIGKILL)
        old.wait()
        spawn_worker("steady", KTRDR_LEASE_TTL_S="60")

        def retried() -> Operation | None:
            o = coordinator.ops.get(op.op_id)
            return o if o and o.attempt == 2 and o.status is OpStatus.RUNNING else None

        again = await assert_eventually(retried, timeout=30)
        assert again.worker_id == "steady"  # the new process took the retry
        assert any("restarted" in w for w in again.warnings), again.warnings


async def test_lease_expiry_fails_the_op_naming_the_worker_when_attempts_are_exhausted(
        coordinator: Coordinator, spawn_worker: SpawnWorker) -> None:
    victim = spawn_worker("victim")
    op = await coordinator.dispatcher.submit(
        SubmitRequest(type="dummy", params={"duration": 60}, max_attempts=1))
    await start_on(coordinator, op.op_id, "victim")
    victim.send_signal(signal.SIGKILL)
    failed = await wait_status(coordinator, op.op_id, OpStatus.FAILED, timeout=RECOVERY_DEADLINE)
    assert "worker victim lost" in (failed.error or "")
    assert "no attempts left" in (failed.error or "")
    assert coordinator.metrics.lease_expiries.labels(type="standin")._value.get() == 1


async def test_a_frozen_worker_that_wakes_up_is_fenced(
        coordinator: Coordinator, spawn_worker: SpawnWorker, make_worker: MakeWorker) -> None:
    frozen = spawn_worker("frozen")
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 30, "steps": 300}))
    await start_on(coordinator, op.op_id, "frozen")
    frozen.send_signal(signal.SIGSTOP)
    await make_worker("rescuer")
    again = await assert_eventually(
        lambda: (o := coordinator.ops.get(op.op_id)) and o.attempt == 2 and o.status is OpStatus.RUNNING and o,
        timeout=RECOVERY_DEADLINE)
    assert again.worker_id == "rescuer"
    frozen.send_signal(signal.SIGCONT)
    # The woken worker publishes for attempt 1 (buffered progress, then its cancelled outcome once it
    # notices it lost ownership): all of it is ignored and counted.
    await assert_eventually(lambda: _fenced(coordinator, "event") >= 1, timeout=10,
                            message="the woken worker's outcome was not fenced")
    current = coordinator.ops.get(op.op_id)
    assert current is not None and current.status is OpStatus.RUNNING
    assert current.worker_id == "rescuer" and current.attempt == 2


def _fenced(coordinator: Coordinator, kind: str) -> float:
    return coordinator.metrics.fenced.labels(kind=kind)._value.get()


def spawn_coordinator(server: NatsServer, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **role_env(roles.COORDINATOR), "KTRDR_NATS_URL": server.url, "KTRDR_API_ENABLED": "false",
           "KTRDR_LEASE_TTL_S": str(TTL), "KTRDR_HEARTBEAT_S": str(FAST["heartbeat_s"])}
    return subprocess.Popen([sys.executable, "-m", "coordinator"], cwd=ROOT, env=env,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT)  # noqa: SIM115


async def test_coordinator_killed_mid_op_loses_nothing(
        nats_server: NatsServer, make_worker: MakeWorker, tmp_path: Path) -> None:
    first = spawn_coordinator(nats_server, tmp_path / "coordinator.log")
    try:
        async with AsyncClient(nats_url=nats_server.url, auth=auth(roles.CLIENT)) as client:
            await make_worker("w1")
            op = await assert_eventually(lambda: _try_submit(client), timeout=15)
            await assert_eventually(lambda: _status_is(client, op.op_id, OpStatus.RUNNING), timeout=10)
            first.send_signal(signal.SIGKILL)
            first.wait()
            # The op goes on while no coordinator runs; its progress and outcome wait in OPS.
            second = spawn_coordinator(nats_server, tmp_path / "coordinator.log")
            try:
                done = await assert_eventually(lambda: _status_is(client, op.op_id, OpStatus.COMPLETED),
                                               timeout=20)
                assert done.result == {"steps": 4, "duration": 2.0}
                assert done.progress is not None and done.progress.steps_done == 4
                assert done.worker_id == "w1" and done.attempt == 1
            finally:
                second.send_signal(signal.SIGTERM)
                second.wait(10)
    finally:
        if first.poll() is None:
            first.kill()


async def _try_submit(client: AsyncClient) -> Operation | None:
    try:
        return await client.submit("dummy", {"duration": 2.0, "steps": 4})
    except Exception:
        return None


async def _status_is(client: AsyncClient, op_id: str, status: OpStatus) -> Operation | None:
    try:
        op = await client.get(op_id)
    except Exception:
        return None
    return op if op.status is status else None


async def test_nats_server_restart_mid_op_loses_nothing(
        nats_server: NatsServer, coordinator: Coordinator, make_worker: MakeWorker, nc: Client) -> None:
    await make_worker("w1")
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 3, "steps": 6}))
    await wait_status(coordinator, op.op_id, OpStatus.RUNNING)
    nats_server.stop()
    nats_server.start()
    done = await wait_status(coordinator, op.op_id, OpStatus.COMPLETED, timeout=20)
    assert done.attempt == 1 and done.worker_id == "w1"
    # Every component reconnected by itself: a new op goes through the whole path.
    await assert_eventually(lambda: "w1" in coordinator.registry.workers, timeout=10)
    after = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    await wait_status(coordinator, after.op_id, OpStatus.COMPLETED, timeout=15)


async def test_a_worker_id_in_use_by_a_live_process_is_refused_at_registration(
        coordinator: Coordinator, make_worker: MakeWorker) -> None:
    first = await make_worker("twin")
    rejected = coordinator.metrics.rejected.labels(subject="$KV.workers", reason="duplicate worker id")
    with pytest.raises(WorkerRefused, match="worker id twin is in use by another live process"):
        await make_worker("twin")
    assert rejected._value.get() == 1
    # Refused before it wrote anything: the lease is the first process's, never taken for a restart.
    lease = coordinator.registry.workers["twin"]
    assert lease.started_at == first.started_at
    assert coordinator.metrics.lease_expiries.labels(type="test")._value.get() == 0


async def test_of_twins_started_in_the_same_instant_one_serves_and_the_other_is_refused(
        coordinator: Coordinator, make_worker: MakeWorker) -> None:
    # Both are welcomed (neither has written a lease yet); only one first lease write finds the key empty.
    started = await asyncio.gather(make_worker("twin"), make_worker("twin"), return_exceptions=True)
    refused = [r for r in started if isinstance(r, BaseException)]
    serving = [r for r in started if not isinstance(r, BaseException)]
    assert len(serving) == 1 and len(refused) == 1, started
    assert isinstance(refused[0], WorkerRefused) and "worker id twin" in str(refused[0])
    await assert_eventually(lambda: "twin" in coordinator.registry.workers)
    assert coordinator.registry.workers["twin"].started_at == serving[0].started_at
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    assert (await wait_status(coordinator, op.op_id, OpStatus.COMPLETED)).worker_id == "twin"


async def test_twins_started_before_the_coordinator_are_reported_and_the_older_one_stops(
        nats_server: NatsServer, make_worker: MakeWorker) -> None:
    # No coordinator answers registrations yet: both go on and write the one lease key, in turn.
    first = await make_worker("twin")
    second = await make_worker("twin")
    assert not first.registered.is_set() and not second.registered.is_set()
    async with Coordinator(settings=coordinator_settings(nats_server.url)) as coordinator:
        rejected = coordinator.metrics.rejected.labels(subject="$KV.workers", reason="duplicate worker id")
        await assert_eventually(lambda: rejected._value.get() >= 1, message="the shared id was not reported")
        # The registry follows the newer process; the older one's registration (asked again in the
        # background) is refused, and it stops without deleting the lease the two share.
        await assert_eventually(lambda: first.refused is not None, timeout=15, message="the older twin was not refused")
        assert "worker id twin is in use by another live process" in (first.refused or "")
        await assert_eventually(lambda: second.registered.is_set(), timeout=15)
        assert second.refused is None
        seen: list[WorkerLease | None] = []
        coordinator.registry.subscribe(lambda worker_id, lease: seen.append(lease))
        await first.stop()
        # The second's next heartbeats arrive, and the registry never saw the worker go in between.
        await assert_eventually(lambda: len([x for x in seen if x is not None]) >= 2, message="no heartbeat")
        assert None not in seen
        assert all(x is not None and x.started_at == second.started_at for x in seen)
