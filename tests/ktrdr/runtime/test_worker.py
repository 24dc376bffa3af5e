"""The worker runtime: graceful stop, stable ids, the lease it keeps."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from coordinator.app import Coordinator
from ktrdr.natsd import NatsServer
from ktrdr.runtime.context import JobContext
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.worker import claim_worker_index, default_worker_id
from subjects import names, roles
from subjects.models import CancelReply, OpStatus, SubmitRequest, decode
from tests.conftest import MakeWorker, SpawnWorker, coordinator_settings
from tests.support import assert_eventually, wait_status


async def test_sigterm_lets_the_running_op_finish_within_the_grace_period(
        coordinator: Coordinator, spawn_worker: SpawnWorker) -> None:
    proc = spawn_worker("graceful", KTRDR_GRACE_S="20")
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 1.5, "steps": 3}))
    await wait_status(coordinator, op.op_id, OpStatus.RUNNING)
    proc.send_signal(signal.SIGTERM)
    done = await wait_status(coordinator, op.op_id, OpStatus.COMPLETED, timeout=15)
    assert done.worker_id == "graceful"
    await assert_eventually(lambda: proc.poll() is not None, timeout=15)
    assert proc.returncode == 0
    # The lease was deleted, not left to expire.
    assert coordinator.metrics.lease_expiries.labels(type="standin")._value.get() == 0
    assert "graceful" not in coordinator.registry.workers


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_cancels_the_op_when_the_grace_period_runs_out(
        coordinator: Coordinator, spawn_worker: SpawnWorker, sig: signal.Signals) -> None:
    proc = spawn_worker("impatient", KTRDR_GRACE_S="0.5")
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 60, "steps": 60}))
    await wait_status(coordinator, op.op_id, OpStatus.RUNNING)
    proc.send_signal(sig)
    done = await wait_status(coordinator, op.op_id, OpStatus.CANCELLED, timeout=15)
    assert done.cancel_reason == "worker shutting down"
    assert done.worker_id == "impatient" and done.attempt == 1  # its own outcome, published before it left
    await assert_eventually(lambda: proc.poll() is not None, timeout=15)
    assert proc.returncode == 0
    await assert_eventually(lambda: "impatient" not in coordinator.registry.workers)
    # The lease was deleted, not left to expire.
    assert coordinator.metrics.lease_expiries.labels(type="standin")._value.get() == 0


async def test_a_stopping_worker_fetches_nothing_more(coordinator: Coordinator, make_worker: MakeWorker) -> None:
    worker = await make_worker("w1", grace_s=10)
    first = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0.5, "steps": 1}))
    await wait_status(coordinator, first.op_id, OpStatus.RUNNING)
    second = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    await worker.stop()
    await worker.stop()  # idempotent
    await wait_status(coordinator, first.op_id, OpStatus.COMPLETED)
    assert coordinator.ops.get(second.op_id).status is OpStatus.PENDING  # type: ignore[union-attr]


def test_worker_ids_are_stable_across_restarts() -> None:
    settings = WorkerSettings(worker_index=2)
    assert default_worker_id(settings, "backtest") == default_worker_id(WorkerSettings(worker_index=2), "backtest")
    assert default_worker_id(settings, "backtest").endswith("-backtest-2")
    assert default_worker_id(WorkerSettings(worker_id="gpu-box-1"), "gpu") != "gpu-box-1"  # only the default
    assert WorkerSettings(worker_id="gpu-box-1").worker_id == "gpu-box-1"


def test_workers_of_one_type_started_without_ids_take_distinct_indexes(tmp_path: Path) -> None:
    settings = WorkerSettings(home=tmp_path)
    first, held_first = claim_worker_index(settings, "backtest")
    second, held_second = claim_worker_index(settings, "backtest")
    other_type, held_other = claim_worker_index(settings, "training")
    assert (first, second, other_type) == (0, 1, 0)
    assert held_first is not None and held_second is not None and held_other is not None
    held_first.close()  # the process holding index 0 ended: the next worker takes 0 again
    again, held_again = claim_worker_index(settings, "backtest")
    assert again == 0 and held_again is not None
    # An index given is used as given, and held when free so that workers without one pass it by.
    given, held_given = claim_worker_index(WorkerSettings(home=tmp_path, worker_index=2), "backtest")
    assert given == 2 and held_given is not None
    next_free, held_next = claim_worker_index(settings, "backtest")
    assert next_free == 3 and held_next is not None
    assert claim_worker_index(WorkerSettings(home=tmp_path, worker_index=2), "backtest") == (2, None)
    for handle in (held_second, held_other, held_again, held_given, held_next):
        handle.close()


async def test_the_lease_carries_state_and_running_ops(coordinator: Coordinator, make_worker: MakeWorker) -> None:
    worker = await make_worker("w1")
    assert worker.lease().state == "idle"
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 30}))
    await wait_status(coordinator, op.op_id, OpStatus.RUNNING)
    lease = await assert_eventually(
        lambda: (w := coordinator.registry.workers.get("w1")) and w.running and w)
    assert lease.state == "busy" and [(r.op_id, r.attempt) for r in lease.running] == [(op.op_id, 1)]


async def test_the_lease_follows_an_op_starting_and_ending_without_waiting_for_a_heartbeat(
        nats_server: NatsServer, make_worker: MakeWorker) -> None:
    # Heartbeats 30 s apart: only the write that follows each change can show it in time.
    async with Coordinator(settings=coordinator_settings(nats_server.url, lease_ttl_s=60.0)) as coordinator:
        await make_worker("w1", heartbeat_s=30.0, lease_ttl_s=60.0)

        def lease_of_w1() -> tuple[str, list[str]] | None:
            w = coordinator.registry.workers.get("w1")
            return (w.state, [r.op_id for r in w.running]) if w else None

        await assert_eventually(lambda: lease_of_w1() == ("idle", []))
        for _ in range(2):
            op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 1}))
            await wait_status(coordinator, op.op_id, OpStatus.RUNNING)
            await assert_eventually(lambda: lease_of_w1() == ("busy", [op.op_id]))  # noqa: B023
            await wait_status(coordinator, op.op_id, OpStatus.COMPLETED)
            await assert_eventually(lambda: lease_of_w1() == ("idle", []))


async def test_a_blocking_handler_runs_in_a_thread_and_the_worker_stays_responsive(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client) -> None:
    on_main_thread: list[bool] = []

    def blocking(ctx: JobContext, params: object) -> None:
        on_main_thread.append(threading.current_thread() is threading.main_thread())
        deadline = time.monotonic() + 30
        while not ctx.token.cancelled and time.monotonic() < deadline:
            time.sleep(0.01)  # blocks this thread only
        ctx.raise_if_cancelled()

    await make_worker("w1", handlers={"dummy": blocking})
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={}))
    await wait_status(coordinator, op.op_id, OpStatus.RUNNING)
    leases = await nc.jetstream().key_value(names.WORKERS_BUCKET)
    before = (await leases.get(names.lease_key(roles.LOCAL_HOST, "w1"))).revision
    # The event loop is free: heartbeats go on and the worker itself answers the cancel.
    await assert_eventually(lambda: _newer_lease(leases, before), message="the lease was not refreshed")
    reply = decode(CancelReply, (await nc.request(names.ops_cancel(op.op_id), b"{}", timeout=5)).data)
    assert reply.accepted and "w1" in reply.message
    await wait_status(coordinator, op.op_id, OpStatus.CANCELLED)
    assert on_main_thread == [False]


async def test_a_cancel_reaches_only_the_worker_running_the_op(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client) -> None:
    # Only the coordinator hears ops.<id>.cancel; it forwards a valid request to the claim's holder alone.
    forwarded: list[str] = []

    async def heard(msg: Msg) -> None:
        forwarded.append(msg.subject)

    await nc.subscribe(f"{names.WORKER_CANCEL}.>", cb=heard)
    workers = {w.worker_id: w for w in [await make_worker("w1"), await make_worker("w2")]}
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 30, "steps": 30}))
    running = await wait_status(coordinator, op.op_id, OpStatus.RUNNING)
    owner = running.worker_id
    assert owner is not None

    bad = decode(CancelReply, (await nc.request(names.ops_cancel(op.op_id), b"{not json", timeout=5)).data)
    assert not bad.accepted and "invalid cancel request" in bad.message
    assert coordinator.ops.get(op.op_id).status is OpStatus.RUNNING  # type: ignore[union-attr]

    reply = decode(CancelReply, (await nc.request(names.ops_cancel(op.op_id), b'{"reason": "enough"}',
                                                  timeout=5)).data)
    assert reply.accepted and owner in reply.message
    done = await wait_status(coordinator, op.op_id, OpStatus.CANCELLED)
    assert done.cancel_reason == "enough"
    assert forwarded == [names.worker_cancel(roles.LOCAL_HOST, owner, op.op_id)]
    assert not any(w.rejected for w in workers.values())
    # Once the outcome is out, the coordinator answers: nothing more is forwarded.
    after = decode(CancelReply, (await nc.request(names.ops_cancel(op.op_id), b"{}", timeout=5)).data)
    assert not after.accepted and after.status is OpStatus.CANCELLED
    assert len(forwarded) == 1


async def _newer_lease(leases: KeyValue, revision: int) -> bool:
    return (await leases.get(names.lease_key(roles.LOCAL_HOST, "w1"))).revision > revision


async def test_a_claim_whose_acknowledgement_is_lost_is_read_back_not_dropped(
        coordinator: Coordinator, make_worker: MakeWorker) -> None:
    worker = await make_worker("w1")
    assert worker.publisher is not None
    real_send = worker.publisher.send
    lost: list[str] = []

    async def send(subject: str, payload: bytes, headers: dict[str, str] | None = None) -> asyncio.Future[int]:
        stored = await real_send(subject, payload, headers)
        if subject.startswith("$KV.claims.") and not lost:
            # The claim is stored, but its acknowledgement never arrives (a reconnect, say).
            lost.append(subject)
            await stored
            never: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            never.set_exception(nats.errors.TimeoutError())
            return never
        return stored

    worker.publisher.send = send  # type: ignore[method-assign]
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    done = await wait_status(coordinator, op.op_id, OpStatus.COMPLETED)
    assert lost and done.worker_id == "w1" and done.attempt == 1


async def test_short_ops_that_leave_the_lease_as_it_was_write_no_lease(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client) -> None:
    # A heartbeat far off: every write seen here is a change's.
    worker = await make_worker("w1", heartbeat_s=3600, lease_ttl_s=3600)
    leases = await nc.jetstream().key_value(names.WORKERS_BUCKET)
    key = names.lease_key(roles.LOCAL_HOST, "w1")
    before = (await leases.get(key)).revision
    worker._lease_changed()  # an op started and ended within the change delay
    await assert_eventually(lambda: worker._lease_change is None and not worker._lease_writes)
    assert (await leases.get(key)).revision == before

    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0.5, "steps": 5}))
    await wait_status(coordinator, op.op_id, OpStatus.COMPLETED)
    # An op that lasts past the delay is seen: one write when it starts, one when it ends.
    await assert_eventually(lambda: worker._lease_change is None and not worker._lease_writes)
    assert (await leases.get(key)).revision - before == 2


async def test_a_worker_marks_each_lease_write_in_its_lease_file(
        coordinator: Coordinator, make_worker: MakeWorker, tmp_path: Path) -> None:
    marker = tmp_path / "lease"
    worker = await make_worker("w1", lease_file=marker)
    assert float(marker.read_text()) == worker.settings.lease_ttl_s
    first = marker.stat().st_mtime_ns
    await assert_eventually(lambda: marker.stat().st_mtime_ns > first, message="the heartbeat left the file as it was")


async def test_a_stopped_workers_open_pull_requests_take_no_job(
        coordinator: Coordinator, make_worker: MakeWorker) -> None:
    # Its requests would live 60 s, and a job delivered into its closed inbox would wait out its
    # 30 s AckWait: the stop drains them instead, so the next worker gets the job at once.
    first = await make_worker("w1", fetch_timeout_s=60)
    await first.stop()
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    await make_worker("w2")
    done = await wait_status(coordinator, op.op_id, OpStatus.COMPLETED, timeout=15)
    assert done.worker_id == "w2" and done.attempt == 1


async def test_a_worker_serving_two_subjects_starts_the_oldest_queued_job_first(
        coordinator: Coordinator, make_worker: MakeWorker) -> None:
    # One slot, two job subjects: while it is busy, a dummy is queued, then a newer data load. When
    # the slot frees, both queues hold a job, and requests go out for data.ib first (the worker's
    # order): the older starts first all the same.
    await make_worker("ib1", worker_type="ib", capabilities=[names.CAP_DATA_IB, names.CAP_DUMMY_ANY])
    busy = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 1.0, "steps": 2}))
    await wait_status(coordinator, busy.op_id, OpStatus.RUNNING)
    older = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    newer = await coordinator.dispatcher.submit(SubmitRequest(type="data_load", params={"symbol": "NEW"}))
    await wait_status(coordinator, older.op_id, OpStatus.COMPLETED, timeout=20)
    await assert_eventually(lambda: (op := coordinator.ops.get(newer.op_id)) is not None and op.status.terminal,
                            timeout=20)
    first, second = coordinator.ops.get(older.op_id), coordinator.ops.get(newer.op_id)
    assert first is not None and second is not None
    assert first.started_at is not None and second.started_at is not None
    assert first.started_at < second.started_at, (first.started_at, second.started_at)
