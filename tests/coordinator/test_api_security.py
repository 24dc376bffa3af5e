"""The status API's front door (coordinator/guard.py): token, content type, Host, Origin, body size."""

from __future__ import annotations

import json
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from coordinator.app import Coordinator
from ktrdr.natsd import NatsServer
from ktrdr.security.api_token import load_or_create_token, read_token
from tests.conftest import bounded, coordinator_settings
from tests.support import auth_headers

StartCoordinator = Callable[..., Awaitable[Coordinator]]
MB = 1024 * 1024

# One request per route family; the submit route is the bare ASGI one in front of Starlette.
ROUTES = [
    ("GET", "/api/v1/workers"),
    ("GET", "/api/v1/workers/w1"),
    ("GET", "/api/v1/operations"),
    ("GET", "/api/v1/operations/op-1"),
    ("GET", "/api/v1/operations/op-1/results"),
    ("POST", "/api/v1/operations"),
    ("DELETE", "/api/v1/operations/op-1"),
    ("POST", "/api/v1/backtests"),
    ("POST", "/api/v1/backtests/sweeps"),
    ("GET", "/api/v1/backtests/compare?ids=a,b"),
    ("POST", "/api/v1/trainings"),
    ("GET", "/metrics"),
    ("GET", "/no/such/route"),
    # The dashboard's data (its page and assets hold none: tests/coordinator/dashboard).
    ("GET", "/api/v1/stream"),
    ("GET", "/api/v1/queues"),
    ("GET", "/api/v1/models"),
    ("GET", "/api/v1/datasets"),
    ("GET", "/api/v1/datasets/SYN/1h"),
    ("GET", "/api/v1/operations/op-1/events"),
    ("GET", "/api/v1/operations/op-1/chart"),
    ("GET", "/api/v1/operations/op-1/epochs"),
    ("GET", "/api/v1/models/m/1"),
]


@pytest.fixture
async def start_coordinator(nats_server: NatsServer) -> AsyncIterator[StartCoordinator]:
    """Coordinators with settings of the test's choosing, stopped at the end."""
    started: list[Coordinator] = []

    async def start(**overrides: Any) -> Coordinator:
        c = Coordinator(settings=coordinator_settings(nats_server.url, **overrides))
        await c.start()
        started.append(c)
        return c

    yield start
    for c in started:
        await bounded(c.stop(), "a coordinator")


def url(coordinator: Coordinator) -> str:
    return f"http://127.0.0.1:{coordinator.api_port}"


def refused(response: httpx.Response, status: int, says: str = "") -> bool:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert says in response.json()["error"]
    return True


@pytest.mark.parametrize(("method", "path"), ROUTES)
async def test_without_a_token_every_route_but_health_answers_401(
        anon: httpx.AsyncClient, coordinator: Coordinator, method: str, path: str) -> None:
    body = {"type": "dummy"} if method in ("POST", "DELETE") else None
    response = await anon.request(method, path, json=body)
    assert refused(response, 401, "bearer token")
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert list(coordinator.ops.all()) == []


async def test_a_wrong_token_is_401_on_the_fast_submit_route_and_the_others(
        anon: httpx.AsyncClient, coordinator: Coordinator) -> None:
    wrong = {"Authorization": f"Bearer {coordinator.api_token}x"}
    assert refused(await anon.post("/api/v1/operations", json={"type": "dummy"}, headers=wrong), 401, "wrong")
    assert refused(await anon.get("/api/v1/operations", headers=wrong), 401, "wrong")
    assert refused(await anon.get("/api/v1/workers", headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401)
    assert list(coordinator.ops.all()) == []


@pytest.mark.parametrize(("method", "path"), [r for r in ROUTES if r[0] in ("POST", "DELETE")])
async def test_the_viewer_token_cannot_submit_or_cancel(
        anon: httpx.AsyncClient, coordinator: Coordinator, method: str, path: str) -> None:
    viewer = {"Authorization": f"Bearer {coordinator.api_viewer_token}"}
    response = await anon.request(method, path, json={"type": "dummy"}, headers=viewer)
    assert refused(response, 403, "read-only")
    assert list(coordinator.ops.all()) == []


async def test_the_viewer_token_reads(anon: httpx.AsyncClient, coordinator: Coordinator) -> None:
    viewer = {"Authorization": f"Bearer {coordinator.api_viewer_token}"}
    assert coordinator.api_viewer_token != coordinator.api_token
    for path in ("/api/v1/workers", "/api/v1/operations", "/metrics"):
        assert (await anon.get(path, headers=viewer)).status_code == 200, path


async def test_the_right_token_is_accepted_whatever_the_case_of_its_scheme(
        anon: httpx.AsyncClient, coordinator: Coordinator) -> None:
    response = await anon.get("/api/v1/workers", headers={"Authorization": f"bearer {coordinator.api_token}"})
    assert response.status_code == 200


async def test_refusals_are_counted_in_the_api_errors_metric(anon: httpx.AsyncClient, api: httpx.AsyncClient) -> None:
    await anon.get("/api/v1/workers")
    assert 'ktrdr_api_errors_total{status="401"} 1.0' in (await api.get("/metrics")).text


async def test_health_needs_no_token(anon: httpx.AsyncClient) -> None:
    response = await anon.get("/health")
    assert response.status_code == 200 and response.json()["status"] == "ok"


async def test_metrics_need_the_token_by_default(anon: httpx.AsyncClient, api: httpx.AsyncClient) -> None:
    assert refused(await anon.get("/metrics"), 401)
    assert "ktrdr_operations" in (await api.get("/metrics")).text


async def test_metrics_are_open_to_a_scraper_when_metrics_auth_is_off(start_coordinator: StartCoordinator) -> None:
    coordinator = await start_coordinator(metrics_auth=False)
    async with httpx.AsyncClient(base_url=url(coordinator)) as anon:
        assert (await anon.get("/metrics")).status_code == 200
        assert refused(await anon.get("/api/v1/workers"), 401)


async def test_a_text_plain_submission_is_415_and_nothing_is_queued(
        api: httpx.AsyncClient, coordinator: Coordinator) -> None:
    # What a cross-site form or no-preflight fetch can send: refused before any parsing.
    body = json.dumps({"type": "dummy"}).encode()
    for path in ("/api/v1/operations", "/api/v1/backtests", "/api/v1/trainings"):
        response = await api.post(path, content=body, headers={"content-type": "text/plain"})
        assert refused(response, 415, "application/json")
    assert refused(await api.post("/api/v1/operations", content=body), 415)
    assert list(coordinator.ops.all()) == []


async def test_a_cancel_with_a_non_json_body_is_415(api: httpx.AsyncClient) -> None:
    response = await api.request("DELETE", "/api/v1/operations/op-1", content=b'{"reason": "x"}',
                                 headers={"content-type": "application/x-www-form-urlencoded"})
    assert refused(response, 415)


async def test_json_with_a_charset_is_json(api: httpx.AsyncClient, coordinator: Coordinator) -> None:
    response = await api.post("/api/v1/operations", content=b'{"type": "dummy"}',
                              headers={"content-type": "application/json; charset=utf-8"})
    assert response.status_code == 201
    assert [op.op_id for op in coordinator.ops.all()] == [response.json()["op_id"]]


async def test_a_foreign_host_header_is_refused(api: httpx.AsyncClient, coordinator: Coordinator) -> None:
    # A DNS-rebinding page reaches 127.0.0.1 under its own name, which the browser sends as Host.
    for host in ("evil.example", f"evil.example:{coordinator.api_port}"):
        assert refused(await api.get("/api/v1/workers", headers={"Host": host}), 421, "KTRDR_API_ALLOWED_HOSTS")
    assert refused(await api.post("/api/v1/operations", json={"type": "dummy"}, headers={"Host": "evil.example"}),
                   421)
    assert list(coordinator.ops.all()) == []
    assert (await api.get("/api/v1/workers", headers={"Host": f"localhost:{coordinator.api_port}"})).status_code == 200


async def test_a_foreign_origin_is_refused_and_gets_no_cors_headers(
        api: httpx.AsyncClient, coordinator: Coordinator) -> None:
    response = await api.post("/api/v1/operations", json={"type": "dummy"}, headers={"Origin": "https://evil.example"})
    assert refused(response, 403, "KTRDR_API_ALLOWED_ORIGINS")
    assert "access-control-allow-origin" not in response.headers
    assert list(coordinator.ops.all()) == []


async def test_the_api_s_own_origin_is_not_foreign(api: httpx.AsyncClient, coordinator: Coordinator) -> None:
    response = await api.get("/api/v1/workers", headers={"Origin": url(coordinator)})
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


async def test_a_configured_origin_gets_cors_and_its_preflight(start_coordinator: StartCoordinator) -> None:
    coordinator = await start_coordinator(api_allowed_origins="http://dash.example:3000")
    origin = {"Origin": "http://dash.example:3000"}
    async with httpx.AsyncClient(base_url=url(coordinator)) as anon:
        preflight = await anon.options("/api/v1/operations", headers={
            **origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type"})
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == "http://dash.example:3000"
        assert "authorization" in preflight.headers["access-control-allow-headers"]
        ok = await anon.get("/api/v1/workers", headers={**origin, **auth_headers(coordinator)})
        assert ok.status_code == 200 and ok.headers["access-control-allow-origin"] == "http://dash.example:3000"
        # Still the token: CORS only lets the page read the answer.
        assert refused(await anon.get("/api/v1/workers", headers=origin), 401)
        assert refused(await anon.get("/api/v1/workers", headers={"Origin": "http://other.example"}), 403)


async def test_a_2_mb_body_is_413_json_by_its_content_length(api: httpx.AsyncClient, coordinator: Coordinator) -> None:
    body = {"type": "dummy", "params": {"pad": "x" * 2 * MB}}
    for path in ("/api/v1/operations", "/api/v1/backtests"):
        assert refused(await api.post(path, json=body), 413, "request body too large: limit 524288 bytes")
    assert list(coordinator.ops.all()) == []
    assert (await api.get("/health")).status_code == 200


async def test_a_2_mb_chunked_body_without_a_length_is_413_json(
        api: httpx.AsyncClient, coordinator: Coordinator) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"type": "dummy", "params": {"pad": "'
        for _ in range(32):
            yield b"x" * 65536
        yield b'"}}'

    response = await api.post("/api/v1/operations", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert refused(response, 413, "request body too large")
    assert list(coordinator.ops.all()) == []


async def test_a_chunked_body_under_the_limit_reaches_the_fast_submit_route(
        api: httpx.AsyncClient, coordinator: Coordinator) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"type": '
        yield b'"dummy"}'

    response = await api.post("/api/v1/operations", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 201
    assert [op.op_id for op in coordinator.ops.all()] == [response.json()["op_id"]]


async def test_a_32_mb_cancel_reason_is_413_json_not_a_500(api: httpx.AsyncClient) -> None:
    response = await api.request("DELETE", "/api/v1/operations/op-1", json={"reason": "x" * 32 * MB})
    assert refused(response, 413, "request body too large")


async def test_a_cancel_reason_just_under_the_limit_fits_in_a_nats_message(api: httpx.AsyncClient) -> None:
    # The default limit leaves room under NATS's 1 MB max payload: the request is answered.
    response = await api.request("DELETE", "/api/v1/operations/op-1", json={"reason": "x" * (512 * 1024 - 20)})
    assert response.status_code == 404 and response.json()["accepted"] is False


async def test_invalid_json_is_400(api: httpx.AsyncClient) -> None:
    headers = {"content-type": "application/json"}
    assert refused(await api.post("/api/v1/operations", content=b"{nope", headers=headers), 400, "not valid JSON")
    assert refused(await api.request("DELETE", "/api/v1/operations/op-1", content=b"{nope", headers=headers),
                   400, "not valid JSON")


DEEP_OBJECTS = b'{"a":' * 5_000 + b"1" + b"}" * 5_000
DEEP_LISTS = b"[" * 5_000 + b"]" * 5_000
TOO_DEEP = "JSON nested deeper than 64 levels"


@pytest.mark.parametrize(("method", "path"), [
    ("POST", "/api/v1/operations"), ("POST", "/api/v1/operations/prune"), ("POST", "/api/v1/backtests"),
    ("POST", "/api/v1/backtests/sweeps"), ("POST", "/api/v1/trainings"), ("DELETE", "/api/v1/operations/op-1")])
async def test_json_nested_5000_deep_is_400_naming_the_limit_not_a_500(
        api: httpx.AsyncClient, method: str, path: str) -> None:
    headers = {"content-type": "application/json"}
    for body in (DEEP_OBJECTS, DEEP_LISTS):
        assert refused(await api.request(method, path, content=body, headers=headers), 400, TOO_DEEP)
    # At the limit it is parsed, and judged by its model like any other body.
    within = b'{"reason":' + b"[" * 63 + b"]" * 63 + b"}"
    assert (await api.request("DELETE", "/api/v1/operations/op-1", content=within, headers=headers)).status_code == 422


async def test_the_unauthenticated_sign_in_refuses_deep_json_with_a_400(anon: httpx.AsyncClient) -> None:
    # Deep enough to exhaust json.loads' recursion, small enough to pass the sign-in's size cap.
    body = b"[" * 2_000 + b"]" * 2_000
    response = await anon.post("/api/v1/session", content=body, headers={"content-type": "application/json"})
    assert refused(response, 400, TOO_DEEP)


async def test_an_exception_in_a_route_is_a_json_500_counted_in_the_metrics(
        api: httpx.AsyncClient, coordinator: Coordinator, monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken() -> None:
        raise RuntimeError("JOBS stream unavailable")

    monkeypatch.setattr(coordinator, "collect_metrics", broken)
    assert refused(await api.get("/metrics"), 500, "JOBS stream unavailable")
    monkeypatch.undo()
    assert 'ktrdr_api_errors_total{status="500"} 1.0' in (await api.get("/metrics")).text


async def test_the_token_file_is_created_private_when_absent_and_reused_on_restart(
        start_coordinator: StartCoordinator, api_token_file: Path) -> None:
    assert not api_token_file.exists()
    first = await start_coordinator()
    assert stat.S_IMODE(api_token_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(api_token_file.parent.stat().st_mode) == 0o700
    assert read_token(api_token_file) == first.api_token and len(first.api_token or "") >= 32
    await first.stop()
    second = await start_coordinator()
    assert second.api_token == first.api_token


async def test_ktrdr_api_token_takes_precedence_over_the_file(
        start_coordinator: StartCoordinator, api_token_file: Path) -> None:
    coordinator = await start_coordinator(api_token="a-token-from-the-environment")
    assert coordinator.api_token == "a-token-from-the-environment"
    assert not api_token_file.exists()


def test_processes_racing_to_create_the_token_file_all_get_the_same_token(tmp_path: Path) -> None:
    path = tmp_path / "auth" / "api.token"
    with ThreadPoolExecutor(8) as pool:
        tokens = set(pool.map(lambda _: load_or_create_token(path), range(32)))
    assert tokens == {read_token(path)}
    assert [p.name for p in path.parent.iterdir()] == ["api.token"]
