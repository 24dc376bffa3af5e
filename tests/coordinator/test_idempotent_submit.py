"""A submission with a client-chosen op id can be sent again: the same content answers with the op
already recorded (nothing is queued twice), other content under that id is a conflict. HTTP and
NATS behave alike, and the CLI's client sends a submission that got no answer again under its id."""

from __future__ import annotations

import asyncio
import json

import httpx
from nats.aio.client import Client
from nats.aio.msg import Msg

from coordinator.app import Coordinator
from ktrdr.client.aio import AsyncClient
from ktrdr.natsd import NatsServer
from ktrdr.runtime.retry import RetryPolicy
from subjects import names, roles
from subjects.models import Operation, SubmitRequest, decode
from tests.conftest import auth
from tests.support import auth_headers

SUBMIT_SUBJECT = f"{names.SERVICE_GROUP}.{names.SERVICE_SUBMIT}"


async def queued_jobs(nc: Client) -> int:
    return (await nc.jetstream().stream_info(names.JOBS_STREAM)).state.messages


async def submit_over_nats(nc: Client, body: dict[str, object]) -> Msg:
    return await nc.request(SUBMIT_SUBJECT, json.dumps(body).encode(), timeout=10)


async def test_the_same_submission_twice_over_http_and_nats_is_one_op_offered_once(
        coordinator: Coordinator, nc: Client) -> None:
    body = {"type": "dummy", "params": {"duration": 1}, "op_id": "dummy-mine1"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{coordinator.api_port}",
                                 headers=auth_headers(coordinator)) as http:
        first = await http.post("/api/v1/operations", json=body)
        again = await http.post("/api/v1/operations", json=body)
        over_nats = await submit_over_nats(nc, body)
    assert first.status_code == again.status_code == 201, again.text
    assert not over_nats.headers or "Nats-Service-Error" not in over_nats.headers
    assert again.json() == first.json()
    assert decode(Operation, over_nats.data).created_at.isoformat() == Operation.model_validate(
        first.json()).created_at.isoformat()
    # No worker runs: the job offered with the first answer is still queued, and no second one joined it.
    assert await queued_jobs(nc) == 1
    assert [op.op_id for op in coordinator.ops.all()] == ["dummy-mine1"]


async def test_the_same_id_with_other_params_is_a_conflict_over_http_and_nats(
        coordinator: Coordinator, nc: Client) -> None:
    await coordinator.layer.submit(SubmitRequest(type="dummy", params={"duration": 1}, op_id="dummy-mine2"))
    other = {"type": "dummy", "params": {"duration": 2}, "op_id": "dummy-mine2"}
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{coordinator.api_port}",
                                 headers=auth_headers(coordinator)) as http:
        over_http = await http.post("/api/v1/operations", json=other)
    over_nats = await submit_over_nats(nc, other)
    assert over_http.status_code == 409
    assert over_nats.headers is not None and over_nats.headers["Nats-Service-Error-Code"] == "409"
    assert over_http.json()["error"] == over_nats.headers["Nats-Service-Error"]
    assert "dummy-mine2 already exists" in over_http.json()["error"]
    assert coordinator.ops.get("dummy-mine2").params["duration"] == 1  # type: ignore[union-attr]


async def test_the_client_sends_an_unanswered_submission_again_under_the_same_id(
        nats_server: NatsServer, nc: Client) -> None:
    # A stand-in for the coordinator that loses its first answer, as a dropped connection would.
    seen: list[SubmitRequest] = []

    async def answer_from_the_second(msg: Msg) -> None:
        request = SubmitRequest.model_validate_json(msg.data)
        seen.append(request)
        if len(seen) > 1:
            assert request.op_id is not None
            await msg.respond(Operation(op_id=request.op_id, type=request.type, params=request.params).encode())

    await nc.subscribe(SUBMIT_SUBJECT, cb=answer_from_the_second)
    await nc.flush()
    async with AsyncClient(nats_url=nats_server.url, auth=auth(roles.CLIENT), timeout=0.5, submit_timeout=0.5
                           ) as client:
        op = await client.submit("dummy", {"duration": 0}, retry=RetryPolicy(first_s=0.05, attempts=3))
    assert len(seen) == 2
    assert seen[0].op_id == seen[1].op_id == op.op_id
    assert op.op_id.startswith("dummy-")


async def test_a_submission_cut_off_by_a_lost_connection_is_sent_again_on_a_new_one(
        nats_server: NatsServer, nc: Client) -> None:
    seen: list[str] = []
    restarted = asyncio.Event()

    async def lose_the_first(msg: Msg) -> None:
        request = SubmitRequest.model_validate_json(msg.data)
        assert request.op_id is not None
        seen.append(request.op_id)
        if len(seen) == 1:
            # The server goes away with the request unanswered, as a connection reset does.
            await asyncio.to_thread(nats_server.stop)
            await asyncio.to_thread(nats_server.start)
            restarted.set()
            return
        await msg.respond(Operation(op_id=request.op_id, type=request.type, params=request.params).encode())

    await nc.subscribe(SUBMIT_SUBJECT, cb=lose_the_first)
    await nc.flush()
    async with AsyncClient(nats_url=nats_server.url, auth=auth(roles.CLIENT), timeout=1.0, submit_timeout=1.0
                           ) as client:
        op = await client.submit("dummy", {"duration": 0}, retry=RetryPolicy(first_s=0.5, attempts=6))
    assert restarted.is_set()
    assert len(seen) >= 2 and set(seen) == {op.op_id}
