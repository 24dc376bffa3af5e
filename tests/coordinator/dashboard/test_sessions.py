"""Dashboard sessions on their own and in the guard: random ids that expire, are bounded, are revoked
on sign-out and end with the token they were made from."""

from __future__ import annotations

import httpx
from prometheus_client import CollectorRegistry, Counter
from starlette.types import Receive, Scope, Send

from coordinator.dashboard.sessions import Sessions, digest
from coordinator.guard import ROLE_KEY, SESSION_COOKIE, ApiGuard

TOKEN, VIEWER_TOKEN = "operator-token-0123456789", "viewer-token-0123456789"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def role_app(scope: Scope, receive: Receive, send: Send) -> None:
    """Answers with the role the guard found."""
    body = str(scope.get(ROLE_KEY)).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def guard(sessions: Sessions) -> ApiGuard:
    errors = Counter("api_errors", "refusals", ["status"], registry=CollectorRegistry())
    return ApiGuard(app=role_app, token=TOKEN, viewer_token=VIEWER_TOKEN, allowed_hosts=["*"], allowed_origins=[],
                    max_body_bytes=1024, metrics_auth=True, errors=errors, sessions=sessions)


async def get(app: ApiGuard, session_id: str, method: str = "GET") -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1") as client:
        return await client.request(method, "/api/v1/workers", headers={"Cookie": f"{SESSION_COOKIE}={session_id}"})


def test_a_session_id_is_random_and_ends_when_it_expires_or_is_revoked() -> None:
    clock = Clock()
    sessions = Sessions(ttl_s=60, clock=clock)
    first = sessions.create(role="operator", token_digest=digest(TOKEN.encode()))
    second = sessions.create(role="operator", token_digest=digest(TOKEN.encode()))
    assert first != second and len(first) >= 40 and TOKEN not in first
    assert sessions.get(first.encode()) is not None
    assert sessions.revoke(first.encode()) and sessions.get(first.encode()) is None
    clock.now += 61
    assert sessions.get(second.encode()) is None and len(sessions) == 0


def test_sessions_are_bounded_and_the_oldest_of_the_same_role_goes_first() -> None:
    sessions = Sessions(max_sessions=3, clock=Clock())
    operator = sessions.create(role="operator", token_digest=b"o")
    made = [sessions.create(role="viewer", token_digest=b"v") for _ in range(5)]
    assert len(sessions) == 3
    # Viewers signing in again and again replace each other, never the operator's session.
    assert sessions.get(operator.encode()) is not None
    assert [sessions.get(s.encode()) is not None for s in made] == [False, False, False, True, True]


async def test_the_guard_takes_a_live_session_as_its_role_and_a_viewer_session_only_reads() -> None:
    app = guard(Sessions())
    opened = app.open_session(VIEWER_TOKEN.encode())
    assert opened is not None and opened[1] == "viewer"
    assert app.open_session(b"not-a-token") is None
    reply = await get(app, opened[0])
    assert reply.status_code == 200 and reply.text == "viewer"
    assert (await get(app, opened[0], "DELETE")).status_code == 403
    assert (await get(app, "x" * 10_000)).status_code == 401


async def test_sessions_end_when_the_token_they_were_made_from_is_no_longer_taken() -> None:
    app = guard(Sessions())
    operator = app.open_session(TOKEN.encode())
    viewer = app.open_session(VIEWER_TOKEN.encode())
    assert operator is not None and viewer is not None
    app.set_tokens(token="a-new-operator-token-0123", viewer_token=VIEWER_TOKEN)
    refused = await get(app, operator[0])
    assert refused.status_code == 401 and "sign in again" in refused.json()["error"]
    assert (await get(app, viewer[0])).text == "viewer"  # its token is still taken
