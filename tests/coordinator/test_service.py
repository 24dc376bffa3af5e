"""The coordinator's NATS micro service, as `nats micro ls` and `nats req` see it."""

from __future__ import annotations

import json

from nats.aio.client import Client

from coordinator.app import Coordinator
from subjects import names
from subjects.models import Operation, OpList, OpStatus, decode
from tests.conftest import MakeWorker
from tests.support import assert_eventually, wait_status


async def test_the_service_is_discoverable_with_a_description(coordinator: Coordinator, nc: Client) -> None:
    info = json.loads((await nc.request(f"$SRV.INFO.{names.SERVICE_NAME}", b"", timeout=2)).data)
    assert info["name"] == names.SERVICE_NAME and info["description"]
    subjects = {e["subject"] for e in info["endpoints"]}
    assert subjects == {f"{names.SERVICE_GROUP}.{e}" for e in ("submit", "get", "list", "prune")}


async def test_submit_get_and_list_over_nats(coordinator: Coordinator, make_worker: MakeWorker, nc: Client) -> None:
    await make_worker("w1")
    reply = await nc.request(f"{names.SERVICE_GROUP}.submit", b'{"type": "dummy", "params": {"duration": 0}}')
    op = decode(Operation, reply.data)
    await wait_status(coordinator, op.op_id, OpStatus.COMPLETED)
    got = decode(Operation, (await nc.request(f"{names.SERVICE_GROUP}.get",
                                              json.dumps({"op_id": op.op_id}).encode())).data)
    assert got.status is OpStatus.COMPLETED
    listed = decode(OpList, (await nc.request(f"{names.SERVICE_GROUP}.list", b'{"status": ["completed"]}')).data)
    assert [o.op_id for o in listed.operations] == [op.op_id]
    missing = await nc.request(f"{names.SERVICE_GROUP}.get", b'{"op_id": "nope"}')
    assert missing.headers and missing.headers["Nats-Service-Error-Code"] == "404"


async def test_workers_register_and_are_acknowledged(coordinator: Coordinator, make_worker: MakeWorker) -> None:
    worker = await make_worker("w1")
    await assert_eventually(worker.registered.is_set, message="no registration ack")
    await assert_eventually(lambda: "w1" in coordinator.registry.workers)
