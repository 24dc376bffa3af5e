"""While JetStream cannot take a write (a leader election, a stream being recreated, the server away):
health tells the truth, a submission waits within its budget, and past it every door answers 503."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from coordinator.app import Coordinator
from coordinator.health import HEALTH_KEY
from ktrdr.client.aio import AsyncClient
from ktrdr.client.errors import JetStreamUnavailable
from ktrdr.natsd import NatsServer
from ktrdr.runtime.retry import RetryPolicy
from subjects import names, roles
from subjects.models import Operation, OpStatus, SubmitRequest, decode
from tests.conftest import ROOT, MakeWorker, auth, bounded, coordinator_settings, role_env
from tests.support import assert_eventually, auth_headers, wait_status

SUBMIT = {"type": "dummy", "params": {"duration": 0}}


@contextlib.asynccontextmanager
async def running(nats_server: NatsServer, **settings: Any) -> AsyncIterator[Coordinator]:
    c = Coordinator(settings=coordinator_settings(nats_server.url, **settings))
    await c.start()
    try:
        yield c
    finally:
        await bounded(c.stop(), "the coordinator")


def api(c: Coordinator, *, token: bool = True) -> httpx.AsyncClient:
    # Longer than the write budget: a submission that waits out an outage must not time out here.
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{c.api_port}", timeout=15.0,
                             headers=auth_headers(c) if token else None)


async def answers(http: httpx.AsyncClient, path: str, status: int) -> bool:
    return (await http.get(path)).status_code == status


async def lose_the_ops_stream(nc: Client) -> None:
    """What a submission meets while the ``ops`` stream has no leader: nothing stores its subject."""
    await nc.jetstream().delete_stream(names.kv_stream(names.OPS_BUCKET))


async def test_liveness_and_readiness_answer_without_a_token_and_nothing_else_opens(
        coordinator: Coordinator) -> None:
    async with api(coordinator, token=False) as anon:
        live = await anon.get("/health/live")
        assert live.status_code == 200 and live.json() == {"status": "alive"}
        ready = await anon.get("/health/ready")
        assert ready.status_code == 200
        assert ready.json() == {"ready": True, "nats": True, "jetstream": "ok"}
        summary = await anon.get("/health")
        assert summary.status_code == 200 and summary.json()["jetstream"] == "ok"
        assert (await anon.get("/health/ready/more")).status_code == 401
    # The probe's key is no operation: reading the bucket again (as a restart does) neither loads it
    # as one nor calls it malformed.
    assert await coordinator.ops.load() == 0
    assert coordinator.ops.get(HEALTH_KEY) is None
    assert coordinator.metrics.rejected.labels(subject="$KV.ops", reason="schema")._value.get() == 0


async def test_readiness_is_503_while_nats_server_is_down_and_200_once_it_is_back(
        nats_server: NatsServer, coordinator: Coordinator) -> None:
    async with api(coordinator, token=False) as anon:
        nats_server.stop()
        try:
            await assert_eventually(lambda: answers(anon, "/health/ready", 503), timeout=5)
            ready = (await anon.get("/health/ready")).json()
            assert ready["ready"] is False and ready["jetstream"] == "unavailable: not connected to NATS"
            summary = await anon.get("/health")
            assert summary.status_code == 503 and summary.json()["status"] == "degraded"
            # The process itself is fine: a supervisor must not restart it for this.
            assert (await anon.get("/health/live")).status_code == 200
        finally:
            await asyncio.to_thread(nats_server.start)
        await assert_eventually(lambda: answers(anon, "/health/ready", 200), timeout=8,
                                message="not ready again after nats-server came back")


async def test_readiness_is_503_while_connected_but_the_ops_bucket_cannot_be_written(
        nats_server: NatsServer, nc: Client) -> None:
    async with running(nats_server, topology_check_s=60.0) as c, api(c, token=False) as anon:
        await lose_the_ops_stream(nc)
        await assert_eventually(lambda: answers(anon, "/health/ready", 503), timeout=5,
                                message="ready though the ops bucket cannot be written")
        ready = (await anon.get("/health/ready")).json()
        assert ready["nats"] is True and ready["jetstream"].startswith("unavailable: the ops bucket")
        await c._ensure_topology()  # what its topology watch does within KTRDR_TOPOLOGY_CHECK_S
        await assert_eventually(lambda: answers(anon, "/health/ready", 200), timeout=5)


def retrying_a_record(caplog: pytest.LogCaptureFixture) -> bool:
    """The coordinator is in the write's retry loop: the submission waits, it has not failed."""
    return any("could not be written yet" in r.getMessage() for r in caplog.records)


async def test_a_submission_while_nats_server_is_briefly_down_is_answered_once_it_is_back(
        nats_server: NatsServer, coordinator: Coordinator, make_worker: MakeWorker,
        caplog: pytest.LogCaptureFixture) -> None:
    await make_worker("w1")
    caplog.set_level(logging.WARNING, logger="coordinator.store")
    async with api(coordinator) as http:
        nats_server.stop()
        await assert_eventually(lambda: not coordinator.nc.is_connected, timeout=5)
        submitting = asyncio.create_task(http.post("/api/v1/operations", json=SUBMIT))
        await assert_eventually(lambda: retrying_a_record(caplog), timeout=5)
        assert not submitting.done(), "answered while nats-server was down"
        await asyncio.to_thread(nats_server.start)
        response = await submitting
    assert response.status_code == 201, response.text
    await wait_status(coordinator, response.json()["op_id"], OpStatus.COMPLETED, timeout=10)


async def test_a_submission_while_the_ops_stream_has_no_leader_is_answered_once_it_has_one(
        nats_server: NatsServer, nc: Client, make_worker: MakeWorker, caplog: pytest.LogCaptureFixture) -> None:
    await make_worker("w1")
    caplog.set_level(logging.WARNING, logger="coordinator.store")
    async with running(nats_server, topology_check_s=60.0) as c, api(c) as http:
        await lose_the_ops_stream(nc)
        submitting = asyncio.create_task(http.post("/api/v1/operations", json=SUBMIT))
        await assert_eventually(lambda: retrying_a_record(caplog), timeout=5)
        assert not submitting.done(), "answered while nothing could store the record"
        await c._ensure_topology()
        response = await submitting
        assert response.status_code == 201, response.text
        await wait_status(c, response.json()["op_id"], OpStatus.COMPLETED, timeout=10)


async def test_a_submission_past_the_budget_is_a_503_with_retry_after_never_a_500(
        nats_server: NatsServer) -> None:
    async with running(nats_server, write_retry_budget_s=0.5) as c, api(c) as http:
        nats_server.stop()
        try:
            await assert_eventually(lambda: not c.nc.is_connected, timeout=5)
            refused = await http.post("/api/v1/operations", json=SUBMIT)
        finally:
            await asyncio.to_thread(nats_server.start)
        assert refused.status_code == 503
        assert refused.headers["Retry-After"] == "2"
        assert "JetStream is unavailable" in refused.json()["error"]
        assert c.metrics.api_errors.labels(status="503")._value.get() == 1
        assert list(c.ops.all()) == []
        # Once it is back, the same request goes through.
        await assert_eventually(lambda: c.nc.is_connected, timeout=5)
        assert (await http.post("/api/v1/operations", json=SUBMIT)).status_code == 201


async def test_the_nats_service_answers_the_same_503_as_the_api(nats_server: NatsServer, nc: Client) -> None:
    async with running(nats_server, write_retry_budget_s=0.3, topology_check_s=60.0) as c, api(c) as http:
        await lose_the_ops_stream(nc)
        reply = await nc.request(f"{names.SERVICE_GROUP}.{names.SERVICE_SUBMIT}", json.dumps(SUBMIT).encode(),
                                 timeout=5)
        assert reply.headers is not None
        assert reply.headers["Nats-Service-Error-Code"] == "503"
        assert reply.headers["Retry-After"] == "2"
        body = json.loads(reply.data)
        assert body["code"] == 503 and body["retry_after"] == 2
        over_http = await http.post("/api/v1/operations", json=SUBMIT)
        assert over_http.status_code == 503
        assert over_http.json()["error"] == body["error"] == reply.headers["Nats-Service-Error"]


async def test_the_client_tries_a_503_again_and_gets_through_once_jetstream_is_back(
        nats_server: NatsServer, nc: Client) -> None:
    async with running(nats_server, write_retry_budget_s=0.0, topology_check_s=60.0) as c:
        await lose_the_ops_stream(nc)
        async with AsyncClient(nats_url=nats_server.url, auth=auth(roles.CLIENT),
                               unavailable_retry=RetryPolicy(first_s=1.0, attempts=2)) as client:
            submitting = asyncio.create_task(client.submit("dummy", {"duration": 0}))
            # Its first try is answered 503 at once (no budget); the stream returns during its pause.
            await assert_eventually(lambda: submit_requests(nc, 1), timeout=5)
            assert not submitting.done()
            await c._ensure_topology()
            op = await submitting
        assert c.ops.get(op.op_id) is not None
        assert await submit_requests(nc, 2)


async def submit_requests(nc: Client, count: int) -> bool:
    """Whether the coordinator's ``submit`` endpoint has had ``count`` requests (its $SRV stats)."""
    stats = json.loads((await nc.request(f"$SRV.STATS.{names.SERVICE_NAME}", b"", timeout=2)).data)
    submits = next(e for e in stats["endpoints"] if e["name"] == names.SERVICE_SUBMIT)
    return submits["num_requests"] == count


async def test_the_client_gives_up_after_a_couple_of_503s_saying_why(nats_server: NatsServer, nc: Client) -> None:
    async with running(nats_server, write_retry_budget_s=0.0, topology_check_s=60.0):
        await lose_the_ops_stream(nc)
        async with AsyncClient(nats_url=nats_server.url, auth=auth(roles.CLIENT),
                               unavailable_retry=RetryPolicy(first_s=0.1, attempts=3)) as client:
            try:
                await client.submit("dummy", {"duration": 0})
            except JetStreamUnavailable as exc:
                assert exc.code == 503
                assert str(exc) == "the platform is electing a leader (JetStream unavailable); try again"
            else:
                raise AssertionError("submitted while the ops stream was gone")


async def test_the_cli_says_the_platform_is_electing_a_leader_and_exits_3(nats_server: NatsServer,
                                                                         nc: Client) -> None:
    async with running(nats_server, write_retry_budget_s=0.2, topology_check_s=60.0):
        await lose_the_ops_stream(nc)
        env = {**os.environ, **role_env(roles.CLIENT), "KTRDR_NATS_URL": nats_server.url, "COLUMNS": "200"}
        proc = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "ktrdr.cli.app", "dummy"], cwd=ROOT,
                                       env=env, capture_output=True, text=True, timeout=30)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, out
    assert "the platform is electing a leader (JetStream unavailable); try again" in out


async def test_a_refused_submission_stored_after_all_is_withdrawn_and_its_id_can_be_used_again(
        coordinator: Coordinator, nc: Client, make_worker: MakeWorker) -> None:
    # What a stream leader without its quorum does with a write whose submission was refused: stores it
    # once the quorum is back (tests/coordinator/test_cluster_drills.py).
    late = Operation(op_id="mine-1", type="dummy", params={"duration": 0}).encode()
    ops = await nc.jetstream().key_value(names.OPS_BUCKET)
    await ops.create("mine-1", late)
    await coordinator.ops.withdraw("mine-1", late)
    with pytest.raises(KeyNotFoundError):
        await ops.get("mine-1")
    await make_worker("w1")
    again = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}, op_id="mine-1"))
    await wait_status(coordinator, again.op_id, OpStatus.COMPLETED)


async def test_withdrawing_leaves_a_record_submitted_again_since_alone(coordinator: Coordinator, nc: Client) -> None:
    refused = Operation(op_id="mine-2", type="dummy", params={"duration": 0}).encode()
    await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}, op_id="mine-2"))
    await coordinator.ops.withdraw("mine-2", refused)
    ops = await nc.jetstream().key_value(names.OPS_BUCKET)
    assert decode(Operation, (await ops.get("mine-2")).value).op_id == "mine-2"


async def test_withdrawing_a_record_never_stored_leaves_nothing_behind(coordinator: Coordinator, nc: Client) -> None:
    await coordinator.ops.withdraw("mine-3", Operation(op_id="mine-3", type="dummy").encode())
    ops = await nc.jetstream().key_value(names.OPS_BUCKET)
    with pytest.raises(KeyNotFoundError):
        await ops.get("mine-3")
    assert coordinator.ops.get("mine-3") is None
