"""Bad input on every subject is logged and counted, crashes nothing and changes no op."""

from __future__ import annotations

import nats.errors
from nats.aio.client import Client

from coordinator.app import Coordinator
from subjects import names
from subjects.models import CancelReply, OpStatus, RegistrationAck, SubmitRequest, decode
from tests.conftest import MakeWorker
from tests.support import assert_eventually, wait_status

GARBAGE = [b"not json at all", b"{}", b'{"op_id": 42, "event": "exploded"}', b"[1,2,3]", b"\xff\xfe"]


def rejected(coordinator: Coordinator) -> float:
    return sum(s.value for m in coordinator.metrics.rejected.collect() for s in m.samples
               if s.name.endswith("_total"))


async def test_malformed_messages_on_every_subject_are_counted_and_change_nothing(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client) -> None:
    worker = await make_worker("w1", slots=2)  # one slot stays free to fetch the bad jobs
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 30, "steps": 3}))
    running = await wait_status(coordinator, op.op_id, OpStatus.RUNNING)
    js = nc.jetstream()
    before = rejected(coordinator)

    for body in GARBAGE:
        ack = decode(RegistrationAck, (await nc.request(names.WORKER_REGISTER, body, timeout=2)).data)
        assert not ack.accepted
        # Progress and events for the running op, with wrong shapes, and one claiming another op's id.
        await js.publish(names.ops_progress(op.op_id), body)
        await js.publish(names.ops_events(op.op_id), body)
        for endpoint in (names.SERVICE_SUBMIT, names.SERVICE_GET, names.SERVICE_LIST):
            reply = await nc.request(f"{names.SERVICE_GROUP}.{endpoint}", body, timeout=2)
            if endpoint != names.SERVICE_LIST or body not in (b"{}",):
                assert reply.headers and reply.headers.get("Nats-Service-Error"), (endpoint, body)
        # A bad job straight onto the queue: the worker terminates it instead of retrying forever.
        await js.publish(names.jobs_subject(names.CAP_DUMMY_ANY), body)
        await js.publish(f"$KV.{names.WORKERS_BUCKET}.w-bad", body)
    await js.publish(names.ops_events(op.op_id),
                     b'{"op_id": "other-op", "event": "completed", "worker_id": "w1", "attempt": 1}')
    reply = decode(CancelReply, (await nc.request(names.ops_cancel(op.op_id), b"{broken", timeout=2)).data)
    assert not reply.accepted and "invalid cancel request" in reply.message
    try:
        await nc.request("ops.bad*.cancel", b"{}", timeout=0.5)
    except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
        pass

    await assert_eventually(lambda: rejected(coordinator) >= before + 4 * len(GARBAGE), timeout=10)
    await assert_eventually(lambda: sum(worker.rejected.values()) >= len(GARBAGE) - 1, timeout=10)
    # The running op is exactly as it was apart from its own progress.
    now = coordinator.ops.get(op.op_id)
    assert now is not None and now.status is OpStatus.RUNNING
    assert (now.worker_id, now.attempt, now.result, now.error) == (
        running.worker_id, running.attempt, running.result, running.error)
    assert "w-bad" not in coordinator.registry.workers
    # And everything still works.
    reply = decode(CancelReply, (await nc.request(names.ops_cancel(op.op_id), b"{}", timeout=2)).data)
    assert reply.accepted
    await wait_status(coordinator, op.op_id, OpStatus.CANCELLED)
    fresh = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    await wait_status(coordinator, fresh.op_id, OpStatus.COMPLETED)
