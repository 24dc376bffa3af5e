"""The roles are enforced by nats-server: each hostile act of issue 10 is refused by the server
itself (its permissions violation is what the client hears), one test per act, and nothing of it
takes effect. That each role can do its own job is what the rest of the suite shows: every
component in it connects with its role's credential."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.aio.client import Client
from nats.errors import Error as NatsError

from coordinator.app import Coordinator
from ktrdr.natsd import NatsServer
from ktrdr.runtime import direct
from ktrdr.runtime.connection import NatsAuth, NatsConnectError, connect
from ktrdr.runtime.objects import ObjectBucket
from subjects import names, roles
from subjects.models import ListRequest, OpEvent, OpEventKind, OpStatus, SubmitRequest, WorkerInfo, utcnow
from tests.conftest import MakeWorker, auth
from tests.subjects.conftest import attempt
from tests.support import wait_status


async def submit_dummy(coordinator: Coordinator, **params: Any) -> str:
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0, "steps": 1,
                                                                                 **params}))
    return op.op_id


async def test_an_anonymous_connection_is_refused(nats_server: NatsServer) -> None:
    with pytest.raises(NatsConnectError, match="requires a credential"):
        await connect(nats_server.url, name="anonymous", auth=NatsAuth(), reconnect=False, quiet=True)


async def test_a_credential_the_server_does_not_know_is_refused(nats_server: NatsServer) -> None:
    from ktrdr.security.credentials import NatsCredential

    stranger = NatsAuth(credential=NatsCredential.generate())
    with pytest.raises(NatsConnectError, match="refused the credential"):
        await connect(nats_server.url, name="stranger", auth=stranger, reconnect=False, quiet=True)


async def test_a_client_cannot_register_a_fake_gpu_worker_nor_write_its_lease(as_role, nc: Client) -> None:
    client, denials = await as_role(roles.CLIENT)
    fake = WorkerInfo(worker_id="fake-gpu", worker_type="gpu", capabilities=[names.CAP_TRAINING_GPU], gpu=True,
                      host="evil", pid=1, version="0", slots=1, started_at=utcnow())
    await attempt(client.request(names.worker_register("local"), fake.encode(), timeout=0.5))
    await denials.expect("publish", names.worker_register("local"))
    await attempt(client.jetstream(timeout=0.5).publish(f"$KV.{names.WORKERS_BUCKET}.local.fake-gpu",
                                                        b"{}"))
    await denials.expect("publish", "$KV.workers.local.fake-gpu")
    workers = await nc.jetstream().key_value(names.WORKERS_BUCKET)
    assert "local.fake-gpu" not in (await workers.keys() if await _has_keys(workers) else [])


async def _has_keys(kv: Any) -> bool:
    try:
        await kv.keys()
        return True
    except Exception:
        return False


async def test_a_client_cannot_forge_a_completed_event(as_role, coordinator: Coordinator,
                                                       make_worker: MakeWorker) -> None:
    op_id = await submit_dummy(coordinator, duration=30, steps=30)
    worker = await make_worker("w1")
    op = await wait_status(coordinator, op_id, OpStatus.RUNNING)
    client, denials = await as_role(roles.CLIENT)
    forged = OpEvent(op_id=op_id, event=OpEventKind.COMPLETED, worker_id=worker.worker_id, attempt=op.attempt,
                     result={"made": "up"})
    await attempt(client.jetstream(timeout=0.5).publish(names.ops_events(op_id, "local"), forged.encode()))
    await denials.expect("publish", names.ops_events(op_id, "local"))
    assert coordinator.ops.get(op_id).status is OpStatus.RUNNING


async def test_a_client_cannot_overwrite_a_live_workers_lease(as_role, make_worker: MakeWorker) -> None:
    worker = await make_worker("w1")
    client, denials = await as_role(roles.CLIENT)
    subject = f"$KV.{names.WORKERS_BUCKET}.{names.lease_key(worker.host, worker.worker_id)}"
    await attempt(client.jetstream(timeout=0.5).publish(subject, b'{"started_at": "2099-01-01T00:00:00Z"}'))
    await denials.expect("publish", subject)


async def test_a_viewer_cannot_cancel_an_operation(as_role, coordinator: Coordinator,
                                                   make_worker: MakeWorker) -> None:
    op_id = await submit_dummy(coordinator, duration=30, steps=30)
    await make_worker("w1")
    await wait_status(coordinator, op_id, OpStatus.RUNNING)
    viewer, denials = await as_role(roles.VIEWER)
    await attempt(viewer.request(names.ops_cancel(op_id), b"{}", timeout=0.5))
    await denials.expect("publish", names.ops_cancel(op_id))
    assert coordinator.ops.get(op_id).status is OpStatus.RUNNING


@pytest.mark.parametrize("role", [roles.WORKER, roles.IB, roles.CLIENT])
async def test_no_role_but_the_coordinator_hears_cancel_requests(as_role, role: str) -> None:
    other, denials = await as_role(role)
    await other.subscribe(names.OPS_CANCEL_ALL)
    await denials.expect("subscription", names.OPS_CANCEL_ALL)


async def test_a_worker_hears_only_its_own_hosts_forwarded_cancels(as_role) -> None:
    worker, denials = await as_role(roles.WORKER)
    await worker.subscribe(names.worker_cancels_of(roles.LOCAL_HOST))
    elsewhere = names.worker_cancels_of("other-host")
    await worker.subscribe(elsewhere)
    await denials.expect("subscription", elsewhere)


@pytest.mark.parametrize("role", [roles.WORKER, roles.IB, roles.CLIENT, roles.VIEWER])
async def test_no_role_but_the_coordinator_forwards_a_cancel_to_a_worker(as_role, role: str) -> None:
    other, denials = await as_role(role)
    subject = names.worker_cancel(roles.LOCAL_HOST, "w1", "someop")
    await other.publish(subject, b"{}")
    await denials.expect("publish", subject)


async def test_a_viewer_cannot_submit(as_role, coordinator: Coordinator) -> None:
    viewer, denials = await as_role(roles.VIEWER)
    subject = f"{names.SERVICE_GROUP}.{names.SERVICE_SUBMIT}"
    await attempt(viewer.request(subject, b'{"type": "dummy", "params": {}}', timeout=0.5))
    await denials.expect("publish", subject)
    assert coordinator.ops.list(ListRequest())[0] == 0


@pytest.mark.parametrize("role", [roles.CLIENT, roles.WORKER, roles.IB, roles.VIEWER])
async def test_only_the_coordinator_publishes_jobs(as_role, role: str) -> None:
    nc, denials = await as_role(role)
    subject = names.jobs_subject(names.CAP_BACKTEST_CPU)
    await attempt(nc.jetstream(timeout=0.5).publish(subject, b"{}"))
    await denials.expect("publish", subject)


@pytest.mark.parametrize(("role", "capability"), [
    (roles.CLIENT, names.CAP_BACKTEST_CPU), (roles.VIEWER, names.CAP_DUMMY_ANY),
    (roles.WORKER, names.CAP_DATA_IB), (roles.IB, names.CAP_BACKTEST_CPU)])
async def test_a_role_cannot_pull_jobs_it_does_not_serve(as_role, role: str, capability: str) -> None:
    nc, denials = await as_role(role)
    subject = names.jobs_pull_subject(capability)
    await nc.publish(subject, b'{"batch": 1}', reply=nc.new_inbox())
    await denials.expect("publish", subject)


@pytest.mark.parametrize("role", [roles.CLIENT, roles.WORKER, roles.IB, roles.VIEWER])
async def test_no_role_but_the_coordinator_can_delete_a_bucket(as_role, nc: Client, role: str) -> None:
    other, denials = await as_role(role)
    await attempt(other.jetstream(timeout=0.5).delete_key_value(names.CLAIMS_BUCKET))
    await denials.expect("publish", f"$JS.API.STREAM.DELETE.KV_{names.CLAIMS_BUCKET}")
    assert await nc.jetstream().key_value(names.CLAIMS_BUCKET)


@pytest.mark.parametrize("role", [roles.CLIENT, roles.WORKER, roles.IB])
async def test_only_the_coordinator_writes_op_records(as_role, role: str) -> None:
    other, denials = await as_role(role)
    subject = names.kv_key_subject(names.OPS_BUCKET, "someop")
    await attempt(other.jetstream(timeout=0.5).publish(subject, b"{}"))
    await denials.expect("publish", subject)


@pytest.mark.parametrize("role", [roles.CLIENT, roles.WORKER, roles.IB, roles.VIEWER])
async def test_only_the_coordinator_reads_and_writes_the_archive(as_role, nc: Client, role: str) -> None:
    other, denials = await as_role(role)
    subject = names.ops_archive("someop")
    await attempt(other.jetstream(timeout=0.5).publish(subject, b"{}"))
    await denials.expect("publish", subject)
    await attempt(other.jetstream(timeout=0.5).get_last_msg(names.OPS_ARCHIVE_STREAM, subject, direct=True))
    await denials.expect("publish", f"$JS.API.DIRECT.GET.{names.OPS_ARCHIVE_STREAM}.{subject}")
    assert (await nc.jetstream().stream_info(names.OPS_ARCHIVE_STREAM)).state.messages == 0


async def test_a_client_cannot_listen_in_on_another_roles_replies(as_role) -> None:
    client, denials = await as_role(roles.CLIENT)
    worker_inbox = auth(roles.WORKER).credential.inbox_prefix  # type: ignore[union-attr]
    await client.subscribe(f"{worker_inbox}.>")
    await denials.expect("subscription", f"{worker_inbox}.>")


async def test_a_worker_cannot_read_the_operations_service(as_role, coordinator: Coordinator) -> None:
    worker, denials = await as_role(roles.WORKER)
    subject = f"{names.SERVICE_GROUP}.{names.SERVICE_LIST}"
    await attempt(worker.request(subject, b"{}", timeout=0.5))
    await denials.expect("publish", subject)


async def test_a_client_submits_lists_follows_and_cancels(nats_server: NatsServer, coordinator: Coordinator,
                                                          make_worker: MakeWorker) -> None:
    from ktrdr.client.aio import AsyncClient

    await make_worker("w1")
    async with AsyncClient(nats_url=nats_server.url, auth=auth(roles.CLIENT)) as client:
        op = await client.submit("dummy", {"duration": 30, "steps": 30})
        await wait_status(coordinator, op.op_id, OpStatus.RUNNING)
        assert [o.op_id for o in (await client.list(limit=5)).operations] == [op.op_id]
        assert (await client.cancel(op.op_id, "enough")).accepted
        await wait_status(coordinator, op.op_id, OpStatus.CANCELLED)
        assert [w.worker_id for w in await client.workers()] == ["w1"]


async def test_a_viewer_reads_but_cannot_change(nats_server: NatsServer, coordinator: Coordinator) -> None:
    from ktrdr.client.aio import AsyncClient
    from ktrdr.client.errors import KtrdrError

    op_id = await submit_dummy(coordinator)
    async with AsyncClient(nats_url=nats_server.url, auth=auth(roles.VIEWER), timeout=1.0) as viewer:
        assert (await viewer.get(op_id)).op_id == op_id
        with pytest.raises(KtrdrError, match="refused") as refused:
            await viewer.submit("dummy", {})
        assert refused.value.code == 403


async def test_a_worker_downloads_a_large_object_and_a_client_lists_a_busy_bucket(as_role, nc: Client) -> None:
    """Both read with direct gets in batches, the only way a role other than the coordinator reads."""
    js = nc.jetstream(timeout=30)
    data = await js.object_store(names.DATA_OBJECTS)
    blob = bytes(range(256)) * (48 * 1024)  # 12 MiB: many batches of chunks
    await data.put("BIG/1h", blob)
    workers = await js.key_value(names.WORKERS_BUCKET)
    for i in range(2000):
        await workers.put(f"w-{i}", b"x" * 256)

    worker, _ = await as_role(roles.WORKER)
    got = await asyncio.wait_for(ObjectBucket(js=worker.jetstream(timeout=30), bucket=names.DATA_OBJECTS)
                                 .get("BIG/1h"), 60)
    assert got == blob

    client, _ = await as_role(roles.CLIENT)
    seen = [s async for s in direct.scan(client, names.kv_stream(names.WORKERS_BUCKET), "$KV.workers.>")]
    assert len(seen) == 2000


async def test_no_credential_can_delete_purge_or_overwrite_a_claim(as_role, nc: Client) -> None:
    """A claim decides who runs an attempt: the server keeps the first write of each key for good."""
    key = names.claim_key("op1", 1)
    await (await nc.jetstream().key_value(names.CLAIMS_BUCKET)).create(key, b'{"worker_id": "w1"}')
    for role in (roles.WORKER, roles.COORDINATOR):
        other, _ = await as_role(role)
        claims = await other.jetstream(timeout=1.0).key_value(names.CLAIMS_BUCKET)
        for act in (claims.put(key, b'{"worker_id": "thief"}'), claims.delete(key), claims.purge(key),
                    claims.create(key, b'{"worker_id": "thief"}')):
            with pytest.raises(NatsError):
                await act
        assert (await claims.get(key)).value == b'{"worker_id": "w1"}'
