"""Cancellation over ``ops.<id>.cancel``: running, queued, unknown and finished operations."""

from __future__ import annotations

from nats.aio.client import Client

from coordinator.app import Coordinator
from ktrdr.natsd import NatsServer
from subjects import names
from subjects.models import CancelReply, JobMessage, OpStatus, SubmitRequest, decode
from tests.conftest import MakeWorker, coordinator_settings
from tests.support import assert_eventually, wait_status


async def request_cancel(nc: Client, op_id: str, body: bytes = b'{"reason": "test"}') -> CancelReply:
    msg = await nc.request(names.ops_cancel(op_id), body, timeout=5)
    return decode(CancelReply, msg.data)


async def test_cancel_of_a_running_op_is_answered_by_its_worker_and_stops_it(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client) -> None:
    await make_worker("w1")
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 60, "steps": 600}))
    await wait_status(coordinator, op.op_id, OpStatus.RUNNING)
    reply = await request_cancel(nc, op.op_id)
    assert reply.accepted and reply.status is OpStatus.RUNNING
    assert "w1" in reply.message
    done = await wait_status(coordinator, op.op_id, OpStatus.CANCELLED, timeout=5)
    assert done.cancel_reason == "test" and done.worker_id == "w1"


async def test_cancel_works_with_an_empty_body_as_from_nats_req(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client) -> None:
    await make_worker("w1")
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 60}))
    await wait_status(coordinator, op.op_id, OpStatus.RUNNING)
    assert (await request_cancel(nc, op.op_id, b"")).accepted
    await wait_status(coordinator, op.op_id, OpStatus.CANCELLED, timeout=5)


async def test_a_queued_op_cancelled_by_the_coordinator_never_starts(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client) -> None:
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    reply = await request_cancel(nc, op.op_id)
    assert reply.accepted and reply.status is OpStatus.CANCELLED
    assert "before any worker" in reply.message
    # A worker arriving later fetches the queued copy, loses the claim and drops it.
    await make_worker("w1")

    async def queue_drained() -> bool:
        return (await nc.jetstream().stream_info(names.JOBS_STREAM)).state.messages == 0

    await assert_eventually(queue_drained)
    final = coordinator.ops.get(op.op_id)
    assert final is not None and final.status is OpStatus.CANCELLED
    assert final.started_at is None and final.worker_id is None


async def test_a_cancelled_queued_op_leaves_the_job_queue_though_no_worker_serves_it(
        coordinator: Coordinator, nc: Client) -> None:
    # No worker serves dummy.any here: without the coordinator deleting it, the job would wait forever.
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    js = nc.jetstream()
    assert (await js.stream_info(names.JOBS_STREAM)).state.messages == 1
    assert (await request_cancel(nc, op.op_id)).accepted

    async def queue_empty() -> bool:
        return (await js.stream_info(names.JOBS_STREAM)).state.messages == 0

    await assert_eventually(queue_empty, message="the cancelled op's job is still queued")


async def test_a_queued_op_offered_before_a_coordinator_restart_leaves_the_queue_when_cancelled(
        nats_server: NatsServer, nc: Client) -> None:
    js = nc.jetstream()
    async with Coordinator(settings=coordinator_settings(nats_server.url)) as first:
        kept = await first.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
        op = await first.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    assert (await js.stream_info(names.JOBS_STREAM)).state.messages == 2
    async with Coordinator(settings=coordinator_settings(nats_server.url)):
        assert (await request_cancel(nc, op.op_id)).accepted

        async def one_left() -> bool:
            return (await js.stream_info(names.JOBS_STREAM)).state.messages == 1

        await assert_eventually(one_left, message="the cancelled op's job is still queued")
        left = await js.get_msg(names.JOBS_STREAM, subject=names.jobs_subject(names.CAP_DUMMY_ANY), seq=1, next=True)
        assert decode(JobMessage, left.data or b"").op_id == kept.op_id


async def test_cancel_of_an_unknown_op_gets_a_clear_reply(coordinator: Coordinator, nc: Client) -> None:
    reply = await request_cancel(nc, "no-such-op")
    assert not reply.accepted and reply.status is None
    assert reply.message == "unknown operation no-such-op"


async def test_cancel_of_a_finished_op_says_it_is_finished(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client) -> None:
    await make_worker("w1")
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    await wait_status(coordinator, op.op_id, OpStatus.COMPLETED)
    reply = await request_cancel(nc, op.op_id)
    assert not reply.accepted and reply.status is OpStatus.COMPLETED
    assert "already completed" in reply.message
