"""The status API: validation errors name the problem, unknown ids are 404, metrics are exported."""

from __future__ import annotations

import httpx
import pytest

from coordinator.app import Coordinator
from subjects.models import OpStatus
from tests.conftest import MakeWorker
from tests.support import assert_eventually, wait_status


async def test_submit_then_get_list_and_cancel(api: httpx.AsyncClient, coordinator: Coordinator,
                                               make_worker: MakeWorker) -> None:
    await make_worker("w1")
    created = await api.post("/api/v1/operations", json={"type": "dummy", "params": {"duration": 30}})
    assert created.status_code == 201
    op_id = created.json()["op_id"]
    await wait_status(coordinator, op_id, OpStatus.RUNNING)
    assert (await api.get(f"/api/v1/operations/{op_id}")).json()["status"] == "running"
    listed = (await api.get("/api/v1/operations", params={"status": "running", "type": "dummy"})).json()
    assert [o["op_id"] for o in listed["operations"]] == [op_id]
    cancelled = await api.request("DELETE", f"/api/v1/operations/{op_id}", json={"reason": "from the API"})
    assert cancelled.status_code == 202 and cancelled.json()["accepted"] is True
    done = await wait_status(coordinator, op_id, OpStatus.CANCELLED)
    assert done.cancel_reason == "from the API"
    workers = (await api.get("/api/v1/workers", params={"type": "test"})).json()
    assert [w["worker_id"] for w in workers["workers"]] == ["w1"]
    assert (await api.get("/api/v1/workers/w1")).json()["capabilities"] == ["dummy.any"]


@pytest.mark.parametrize(("body", "status", "names_field"), [
    (b"{not json", 400, "not valid JSON"),
    (b'{"params": {}}', 422, "type"),
    (b'{"type": "teleport"}', 422, "unknown operation type"),
    (b'{"type": "dummy", "params": {"duration": -1}}', 422, "params.duration"),
    (b'{"type": "dummy", "params": {"steps": "many"}}', 422, "params.steps"),
    (b'{"type": "dummy", "params": {"bogus": 1}}', 422, "params.bogus"),
    (b'{"type": "dummy", "op_id": "a.b"}', 422, "op_id"),
])
async def test_invalid_submissions_get_a_4xx_naming_the_problem(
        api: httpx.AsyncClient, coordinator: Coordinator, body: bytes, status: int, names_field: str) -> None:
    response = await api.post("/api/v1/operations", content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert names_field in response.json()["error"]
    assert list(coordinator.ops.all()) == []


async def test_unknown_ids_and_bad_filters_are_4xx(api: httpx.AsyncClient) -> None:
    assert (await api.get("/api/v1/operations/nope")).status_code == 404
    assert (await api.get("/api/v1/workers/nope")).status_code == 404
    assert (await api.request("DELETE", "/api/v1/operations/nope")).status_code == 404
    bad = await api.get("/api/v1/operations", params={"status": "sleeping"})
    assert bad.status_code == 422 and "status" in bad.json()["error"]
    assert (await api.get("/api/v1/operations", params={"limit": "0"})).status_code == 422
    assert (await api.get("/api/v1/workers", params={"status": "asleep"})).status_code == 422


async def test_an_op_id_used_by_another_submission_is_refused(api: httpx.AsyncClient) -> None:
    # The same submission again is answered with the op (tests/coordinator/test_idempotent_submit.py).
    first = await api.post("/api/v1/operations", json={"type": "dummy", "op_id": "mine-1"})
    other = await api.post("/api/v1/operations", json={"type": "dummy", "op_id": "mine-1",
                                                       "params": {"duration": 1}})
    assert first.status_code == 201 and other.status_code == 409


async def test_health_and_metrics(api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker) -> None:
    await make_worker("w1")
    op = (await api.post("/api/v1/operations", json={"type": "dummy", "params": {"duration": 0}})).json()
    await wait_status(coordinator, op["op_id"], OpStatus.COMPLETED)
    assert (await api.get("/health")).json()["status"] == "ok"

    async def metrics_text() -> str | None:
        text = (await api.get("/metrics")).text
        # The worker's lease says idle again one heartbeat after the op ends.
        return text if 'ktrdr_workers{state="idle",type="test"} 1.0' in text else None

    text = await assert_eventually(metrics_text)
    for line in ('ktrdr_operations{status="completed",type="dummy"} 1.0',
                 'ktrdr_queue_depth{capability="dummy.any"} 0.0',
                 "ktrdr_dispatch_latency_seconds_count", "ktrdr_operation_duration_seconds_count"):
        assert line in text


async def test_an_empty_submission_names_the_missing_type(api: httpx.AsyncClient) -> None:
    response = await api.post("/api/v1/operations", content=b"  ", headers={"content-type": "application/json"})
    assert response.status_code == 422 and "type" in response.json()["error"]


async def test_a_submission_that_fails_inside_gets_a_json_500_and_the_api_goes_on(
        api: httpx.AsyncClient, coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(request: object, **options: object) -> None:
        raise RuntimeError("JOBS unavailable")

    monkeypatch.setattr(coordinator.dispatcher, "submit", broken)
    response = await api.post("/api/v1/operations", json={"type": "dummy"})
    assert response.status_code == 500 and "JOBS unavailable" in response.json()["error"]
    monkeypatch.undo()
    assert (await api.post("/api/v1/operations", json={"type": "dummy"})).status_code == 201
    # Other methods on the path still go through the router.
    assert (await api.put("/api/v1/operations", json={})).status_code == 405
