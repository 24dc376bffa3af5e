"""Bad input on every subject is logged and counted, crashes nothing and changes no op."""

from __future__ import annotations

import json

import nats.errors
import pytest
from nats.aio.client import Client

from coordinator.app import Coordinator
from subjects import names
from subjects.limits import MAX_JSON_DEPTH
from subjects.models import (
    BadPayload,
    CancelReply,
    CancelRequest,
    OpStatus,
    RegistrationAck,
    SubmitRequest,
    decode,
    json_too_deep,
)
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
        ack = decode(RegistrationAck, (await nc.request(names.worker_register("local"), body, timeout=2)).data)
        assert not ack.accepted
        # Progress and events for the running op, with wrong shapes, and one claiming another op's id.
        await js.publish(names.ops_progress(op.op_id, "local"), body)
        await js.publish(names.ops_events(op.op_id, "local"), body)
        for endpoint in (names.SERVICE_SUBMIT, names.SERVICE_GET, names.SERVICE_LIST):
            reply = await nc.request(f"{names.SERVICE_GROUP}.{endpoint}", body, timeout=2)
            if endpoint != names.SERVICE_LIST or body not in (b"{}",):
                assert reply.headers and reply.headers.get("Nats-Service-Error"), (endpoint, body)
        # A bad job straight onto the queue: the worker terminates it instead of retrying forever.
        await js.publish(names.jobs_subject(names.CAP_DUMMY_ANY), body)
        await js.publish(f"$KV.{names.WORKERS_BUCKET}.w-bad", body)
    await js.publish(names.ops_events(op.op_id, "local"),
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


DEEP = [b"[" * 5_000 + b"]" * 5_000, b'{"a":' * 5_000 + b"1" + b"}" * 5_000,
        b'{"op_id": "x", "reason": ' + b"[" * 100_000]  # unclosed: the parser would descend all the same
TOO_DEEP = f"JSON nested deeper than {MAX_JSON_DEPTH} levels"


def test_json_depth_is_checked_before_parsing_and_brackets_in_strings_nest_nothing() -> None:
    def nested(depth: int) -> bytes:
        return b'{"a":' * (depth // 2) + b"[" * (depth - depth // 2) + b"]" * (depth - depth // 2) + b"}" * (depth // 2)

    assert json_too_deep(nested(MAX_JSON_DEPTH)) is None
    assert json_too_deep(nested(MAX_JSON_DEPTH + 1)) == TOO_DEEP
    # Wide is not deep, and brackets inside strings (a strategy's YAML, escaped quotes) are text.
    assert json_too_deep(json.dumps({"rows": [[i, {"v": [i]}] for i in range(5_000)]})) is None
    assert json_too_deep(json.dumps({"yaml": "[" * 10_000, "q": '\\"[[[' * 1_000})) is None
    for body in DEEP:
        assert json_too_deep(body) == TOO_DEEP
        with pytest.raises(BadPayload, match=TOO_DEEP):
            decode(CancelRequest, body)
    # Invalid, not deep: the parser says so.
    assert json_too_deep(b"[[[1") is None


async def test_deeply_nested_payloads_are_refused_naming_the_limit_on_every_subject(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client) -> None:
    worker = await make_worker("w-deep", slots=2)
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 30, "steps": 3}))
    await wait_status(coordinator, op.op_id, OpStatus.RUNNING)
    js = nc.jetstream()
    before = rejected(coordinator)
    for body in DEEP:
        ack = decode(RegistrationAck, (await nc.request(names.worker_register("local"), body, timeout=2)).data)
        assert not ack.accepted and TOO_DEEP in ack.message
        for endpoint in (names.SERVICE_SUBMIT, names.SERVICE_GET, names.SERVICE_LIST, names.SERVICE_PRUNE):
            reply = await nc.request(f"{names.SERVICE_GROUP}.{endpoint}", body, timeout=2)
            assert reply.headers and reply.headers["Nats-Service-Error-Code"] == "400", endpoint
            assert TOO_DEEP in reply.headers["Nats-Service-Error"]
        cancel = decode(CancelReply, (await nc.request(names.ops_cancel(op.op_id), body, timeout=2)).data)
        assert not cancel.accepted and TOO_DEEP in cancel.message
        await js.publish(names.ops_progress(op.op_id, "local"), body)
        await js.publish(names.ops_events(op.op_id, "local"), body)
        await js.publish(names.jobs_subject(names.CAP_DUMMY_ANY), body)
    await assert_eventually(lambda: rejected(coordinator) >= before + 3 * len(DEEP), timeout=10)
    await assert_eventually(lambda: sum(worker.rejected.values()) >= len(DEEP), timeout=10)
    running = coordinator.ops.get(op.op_id)
    assert running is not None and running.status is OpStatus.RUNNING and running.error is None
    fresh = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    await wait_status(coordinator, fresh.op_id, OpStatus.COMPLETED)
