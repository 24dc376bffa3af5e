"""JetStream acts on a role's behalf where subject permissions never look: a push consumer delivers
to any subject its creator names, a consumer-create uses up a stream's consumers, a delete removes
anyone's consumer, a purge empties a whole store. So no role but the coordinator (and the operator,
who never leaves its host) may create, delete or purge anything, and nats-server refuses each of
the red team's acts of issue 21 with the role's own credential. What every role still does, it
does with direct gets and plain publishes, shown last."""

from __future__ import annotations

import json

import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from coordinator.app import Coordinator
from ktrdr.models.registry import list_models, load_model, register_model, save_model
from ktrdr.results import get_result, put_result
from ktrdr.security.fleet import invite
from subjects import names, roles
from subjects.models import ListRequest, Operation, OpStatus, SubmitRequest
from tests.conftest import MakeWorker, fleet
from tests.subjects.conftest import attempt
from tests.support import assert_eventually, wait_status

UNTRUSTED = [roles.WORKER, roles.IB, roles.CLIENT, roles.VIEWER]
API = names.JS_API_PREFIX


async def ended_dummy(coordinator: Coordinator) -> str:
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0, "steps": 1}))
    await wait_status(coordinator, op.op_id, OpStatus.COMPLETED)
    return op.op_id


def push_consumer(stream: str, name: str, *, deliver_subject: str, filter_subject: str) -> bytes:
    return json.dumps({"stream_name": stream, "config": {
        "name": name, "deliver_subject": deliver_subject, "deliver_group": "q", "ack_policy": "none",
        "filter_subject": filter_subject, "deliver_policy": "all"}}).encode()


@pytest.mark.parametrize("role", UNTRUSTED)
async def test_no_role_can_redirect_stored_messages_onto_the_prune_service(
        as_role, nc: Client, coordinator: Coordinator, make_worker: MakeWorker, role: str) -> None:
    await make_worker("w1")
    op_id = await ended_dummy(coordinator)
    # The red team's payload, stored where a worker may write: a prune of everything ended.
    stored = await put_result(nc.jetstream(), json.dumps({"older_than": 0, "action": "delete"}).encode(),
                              host=roles.LOCAL_HOST, op_id="evil", attempt=1)
    chunks = names.artifact_chunks(names.RESULTS_ARTIFACTS, stored.name)
    other, denials = await as_role(role)
    stream = names.RESULTS_STREAM
    for subject in (f"{API}.CONSUMER.CREATE.{stream}.evil", f"{API}.CONSUMER.CREATE.{stream}.evil.{chunks}",
                    f"{API}.CONSUMER.DURABLE.CREATE.{stream}.evil"):
        body = push_consumer(stream, "evil", deliver_subject=f"{names.SERVICE_GROUP}.{names.SERVICE_PRUNE}",
                             filter_subject=chunks)
        await attempt(other.request(subject, body, timeout=0.5))
        await denials.expect("publish", subject)
    with pytest.raises(NotFoundError):
        await nc.jetstream().consumer_info(stream, "evil")
    assert coordinator.ops.get(op_id).status is OpStatus.COMPLETED


@pytest.mark.parametrize("role", UNTRUSTED)
async def test_no_role_can_point_a_consumer_at_the_coordinators_feed_or_submit_subject(
        as_role, nc: Client, coordinator: Coordinator, role: str) -> None:
    other, denials = await as_role(role)
    for target in (names.COORDINATOR_DELIVER, f"{names.SERVICE_GROUP}.{names.SERVICE_SUBMIT}"):
        subject = f"{API}.CONSUMER.CREATE.OBJ_data.evil"
        await attempt(other.request(subject, push_consumer("OBJ_data", "evil", deliver_subject=target,
                                                           filter_subject="$O.data.>"), timeout=0.5))
        await denials.expect("publish", subject)
    assert coordinator.ops.list(ListRequest())[0] == 0


@pytest.mark.parametrize("role", UNTRUSTED)
@pytest.mark.parametrize("stream", ["RESULTS", "OBJ_models", "OBJ_data", "CHECKPOINTS", "KV_claims", "OPS"])
async def test_no_role_can_purge_a_store(as_role, nc: Client, role: str, stream: str) -> None:
    js = nc.jetstream()
    subject = next(iter((await js.stream_info(stream)).config.subjects or [])).replace(">", "x").replace("*", "x")
    await js.publish(subject, b"kept")
    other, denials = await as_role(role)
    await attempt(other.request(f"{API}.STREAM.PURGE.{stream}", json.dumps({"seq": 200_000}).encode(),
                                timeout=0.5))
    await denials.expect("publish", f"{API}.STREAM.PURGE.{stream}")
    assert (await js.stream_info(stream)).state.messages == 1


@pytest.mark.parametrize("role", UNTRUSTED)
async def test_no_role_can_delete_the_coordinators_consumers(as_role, nc: Client, role: str) -> None:
    other, denials = await as_role(role)
    jobs = names.jobs_consumer(names.CAP_BACKTEST_CPU)
    for stream, consumer in ((names.OPS_STREAM, names.COORDINATOR_CONSUMER), (names.JOBS_STREAM, jobs)):
        subject = f"{API}.CONSUMER.DELETE.{stream}.{consumer}"
        await attempt(other.request(subject, b"", timeout=0.5))
        await denials.expect("publish", subject)
        assert await nc.jetstream().consumer_info(stream, consumer)


async def test_a_viewer_cannot_use_up_a_streams_consumers(as_role, nc: Client) -> None:
    viewer, denials = await as_role(roles.VIEWER)
    for i in range(20):
        await attempt(viewer.request(f"{API}.CONSUMER.DURABLE.CREATE.OBJ_data.d{i}", json.dumps(
            {"stream_name": "OBJ_data", "config": {"durable_name": f"d{i}", "ack_policy": "explicit"}}).encode(),
            timeout=0.2))
    await denials.expect("publish", f"{API}.CONSUMER.DURABLE.CREATE.OBJ_data.d19")
    assert (await nc.jetstream().stream_info("OBJ_data")).state.consumer_count == 0


async def test_nats_py_object_reads_are_refused_to_a_worker(as_role, nc: Client) -> None:
    """What a worker read before with nats-py's ObjectStore.get (an ordered consumer) it cannot now."""
    await (await nc.jetstream().object_store(names.DATA_OBJECTS)).put("SYN/1h", b"bars")
    worker, denials = await as_role(roles.WORKER)
    got: list[bytes] = []

    async def read() -> None:
        got.append((await (await worker.jetstream(timeout=0.5).object_store(names.DATA_OBJECTS)).get("SYN/1h")).data)

    await attempt(read())
    # Its info read (STREAM.MSG.GET) is refused already, and the consumer it would make next.
    await assert_eventually(lambda: any("permissions violation" in s for s in denials.seen))
    assert got == [], denials.seen


async def test_the_operator_inspects_like_the_coordinator_and_is_never_invited(as_role, nc: Client) -> None:
    operator, denials = await as_role(roles.OPERATOR)
    workers = await operator.jetstream().key_value(names.WORKERS_BUCKET)
    await (await nc.jetstream().key_value(names.WORKERS_BUCKET)).put("w1", b"{}")
    assert await workers.keys() == ["w1"]  # an ordered consumer, as `nats kv ls` makes
    assert denials.seen == []
    for role in roles.TRUSTED:
        with pytest.raises(ValueError, match="never leaves this host"):
            invite(home=fleet().home, role=role, url="nats://127.0.0.1:4222", ca=None)


async def test_every_role_still_reads_what_it_may_without_a_consumer(as_role, nc: Client) -> None:
    worker, worker_denials = await as_role(roles.WORKER)
    written = await put_result(worker.jetstream(), b'{"total_return_pct": 1.5}', host=roles.LOCAL_HOST,
                               op_id="op1", attempt=1)
    record = Operation(op_id="op1", type="backtesting", status=OpStatus.COMPLETED, result_object=written.name)
    version = await save_model(worker.jetstream(), "m", b"bundle", {"source": "test"})
    await register_model(nc.jetstream(), "m", version)  # the coordinator, when that training completes
    for role in (roles.CLIENT, roles.VIEWER):
        reader, denials = await as_role(role)
        assert await get_result(reader.jetstream(), record) == b'{"total_return_pct": 1.5}'
        assert [v.ref for v in await list_models(reader.jetstream())] == [f"m@{version}"]
        assert await load_model(reader.jetstream(), "m", version) == b"bundle"
        assert denials.seen == []
    assert worker_denials.seen == []


@pytest.mark.parametrize("role", UNTRUSTED)
async def test_only_the_coordinator_registers_a_model_version(as_role, nc: Client, role: str) -> None:
    version = await save_model(nc.jetstream(), "m", b"trained", {})
    await register_model(nc.jetstream(), "m", version)
    other, denials = await as_role(role)
    subject = names.kv_key_subject(names.MODEL_PINS_BUCKET, names.model_pin_key("m", version))
    await attempt(other.jetstream(timeout=0.5).publish(subject, json.dumps({"digest": "SHA-256=forged"}).encode()))
    await denials.expect("publish", subject)
    assert await load_model(nc.jetstream(), "m", version) == b"trained"
