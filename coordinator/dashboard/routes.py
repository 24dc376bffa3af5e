"""The dashboard's routes: its page and assets, sign-in, the live event stream, and the views of
queues, op events, a running training's epochs, models and datasets that the JSON API did not have.

The page is static (plain JavaScript shipped in ``static/``, no build step, nothing fetched from
elsewhere); everything it shows comes from the API, with the same token as any client: sent once
to ``/api/v1/session``, which answers with a session id in an HttpOnly cookie (``coordinator.guard``,
``coordinator.dashboard.sessions``); the token itself is never stored in the browser.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from coordinator.api import read_json
from coordinator.dashboard import catalog, charts
from coordinator.dashboard.live import LiveFeed, Subscriber
from coordinator.errors import Conflict, InvalidRequest, NotFound, OpError, Unavailable
from coordinator.guard import ROLE_KEY, SESSION_COOKIE, TLS_KEY, VIEWER
from coordinator.routes import stored_result
from ktrdr.data.store import validate_symbol
from ktrdr.data.timeframes import validate_timeframe
from ktrdr.optypes import UnknownOpType, op_type
from ktrdr.results import get_result
from subjects.models import OpStatus

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_TOKEN_CHARS = 512
# The sign-in's body is one token: anyone may send it, so it is refused before it is parsed.
MAX_SIGN_IN_BYTES = 4096
# Where earlier versions kept the token itself: removed from any browser that still sends it.
LEGACY_TOKEN_COOKIE = "ktrdr_token"


class TooLargeSignIn(OpError):
    status = 413


async def page(request: Request) -> Response:
    # Never cached: a new version of the package serves its new page at once.
    return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})


async def favicon(request: Request) -> Response:
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


async def dashboard_redirect(request: Request) -> Response:
    return RedirectResponse("/", status_code=308)


async def session(request: Request) -> Response:
    """GET: who the page is signed in as (401 if not). POST ``{"token": ...}``: sign in, setting a
    cookie with a new session's id. DELETE: sign out, ending that session."""
    state = request.app.state
    if request.method == "DELETE":
        session_id = request.cookies.get(SESSION_COOKIE)
        if session_id:
            state.guard.sessions.revoke(session_id.encode())
        response = Response(status_code=204)
        _forget(request, response, SESSION_COOKIE)
        return response
    if request.method == "GET":
        # The guard found the role, from the bearer token or the session cookie.
        role = request.scope.get(ROLE_KEY)
        if role is None:
            return JSONResponse({"error": "not signed in"}, status_code=401)
        return JSONResponse({"role": role})
    if len(await request.body()) > MAX_SIGN_IN_BYTES:
        raise TooLargeSignIn(f"a sign-in body is at most {MAX_SIGN_IN_BYTES} bytes")
    body = await read_json(request)
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token.strip():
        raise InvalidRequest("sign in with {\"token\": \"<the API token>\"}", field="token")
    token = token.strip()
    opened = state.guard.open_session(token.encode()) if len(token) <= MAX_TOKEN_CHARS else None
    if opened is None:
        state.metrics.api_errors.labels(status="401").inc()
        log.warning("dashboard sign-in refused: wrong token (from %s)", request.client.host if request.client else "?")
        return JSONResponse({"error": "wrong token"}, status_code=401)
    session_id, role = opened
    response = JSONResponse({"role": role})
    response.set_cookie(SESSION_COOKIE, session_id, max_age=int(state.guard.sessions.ttl_s), path="/",
                        httponly=True, samesite="strict", secure=_over_tls(request))
    if LEGACY_TOKEN_COOKIE in request.cookies:
        _forget(request, response, LEGACY_TOKEN_COOKIE)
    return response


def _over_tls(request: Request) -> bool:
    # The guard decided, from the scheme or a trusted proxy's X-Forwarded-Proto.
    return bool(request.scope.get(TLS_KEY))


def _forget(request: Request, response: Response, cookie: str) -> None:
    response.delete_cookie(cookie, path="/", samesite="strict", httponly=True, secure=_over_tls(request))


async def stream(request: Request) -> Response:
    """Server-sent events: ``hello``, then ``ops`` (summaries of changed ops), ``workers``
    (changed leases and gone workers) and ``resync`` (reload the lists) as they happen."""
    live: LiveFeed = request.app.state.live
    role = request.scope.get(ROLE_KEY, VIEWER)
    # The slot is taken now, not when the stream starts: pages asking at once cannot all pass the check.
    sub = live.open(role)
    if sub is None:
        share = live.max_viewers if role == VIEWER else live.max_subscribers
        raise Unavailable(f"too many live pages ({share} for the {role} role); try again later")
    return LiveResponse(live, sub)


class LiveResponse(StreamingResponse):
    """One page's event stream, its slot given back however the response ends, even before the
    stream started (a client gone at once)."""

    def __init__(self, live: LiveFeed, sub: Subscriber) -> None:
        super().__init__(live.stream(sub), media_type="text/event-stream",
                         headers={"cache-control": "no-store", "x-accel-buffering": "no"})
        self._live, self._sub = live, sub

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._live.release(self._sub)


async def queues(request: Request) -> JSONResponse:
    state = request.app.state
    now = datetime.now(UTC)
    rows = await catalog.queues(state.js, now=now)
    return JSONResponse({"queues": rows, "ops": state.ops.status_counts(), "at": now.isoformat()})


async def op_events(request: Request) -> JSONResponse:
    state, op_id = request.app.state, request.path_params["op_id"]
    state.layer.get(op_id)  # unknown or malformed ids answer as GET /operations/{id} does
    found, cut = await catalog.events(state.js, op_id)
    return JSONResponse({"op_id": op_id, "events": found, "truncated": cut})


async def op_chart(request: Request) -> JSONResponse:
    """What the op's page draws from its stored result (``coordinator.dashboard.charts``), or, for a
    type whose declaration gives a view (``OpType.view``), that view (``{"kind": "view", ...}``). For a
    sweep, ``?x=fast&y=slow`` chooses the heatmap's two parameters (422 naming the valid ones for
    any other name or the same one twice; each cell is the best value over the grid's other parameters)."""
    query = request.query_params
    x, y = query.get("x"), query.get("y")
    state, op_id = request.app.state, request.path_params["op_id"]
    declared = await _declared_view(state, op_id, axes=x is not None or y is not None)
    if declared is not None:
        return JSONResponse(declared)
    data = await stored_result(state, op_id)
    try:
        view = await asyncio.to_thread(charts.chart, data, x=x, y=y)
    except charts.BadAxes as exc:
        raise InvalidRequest(str(exc), field=exc.field) from None
    return JSONResponse(view)


async def _declared_view(state: Any, op_id: str, *, axes: bool) -> dict[str, Any] | None:
    """The view the op's type declares, of its record's result and its stored document; None when
    the type declares none (the page's own charts apply)."""
    op = state.layer.get(op_id)
    try:
        declared = op_type(op.type)
    except UnknownOpType:
        return None
    if declared.view is None:
        return None
    if axes:
        raise InvalidRequest("x and y choose a sweep's heatmap axes: this op's result is not a sweep's", field="x")
    if op.status is not OpStatus.COMPLETED:
        raise Conflict(f"operation {op_id} is {op.status.value}: results exist once it completes")
    document = await get_result(state.js, op)
    view = await asyncio.to_thread(declared.view_of, op.result, document)
    assert view is not None
    return {"kind": "view", **view.model_dump(mode="json")}


async def op_epochs(request: Request) -> JSONResponse:
    """A running training's loss and accuracy per epoch so far, from the progress its worker
    published (``catalog.epochs``); ``?since=SEQ`` reads only what came after an earlier answer's
    ``last_seq``. Once it completes, ``/chart`` draws its stored history instead."""
    state, op_id = request.app.state, request.path_params["op_id"]
    state.layer.get(op_id)  # unknown or malformed ids answer as GET /operations/{id} does
    since = request.query_params.get("since", "0")
    if not since.isdigit() or len(since) > 19:
        raise InvalidRequest("since: a stream sequence, a whole number from an earlier answer's last_seq",
                             field="since")
    return JSONResponse(await catalog.epochs(state.js, op_id, since=int(since)))


async def models(request: Request) -> JSONResponse:
    found = await catalog.models(request.app.state.js)
    return JSONResponse({"total": len(found), "models": found})


async def model(request: Request) -> JSONResponse:
    name, version = request.path_params["name"], request.path_params["version"]
    try:
        found = await catalog.model(request.app.state.js, name, version)
    except ValueError as exc:
        raise InvalidRequest(str(exc), field="model") from None
    if found is None:
        raise NotFound(f"no model {name}@{version}")
    return JSONResponse(found)


async def datasets(request: Request) -> JSONResponse:
    found = await request.app.state.datasets.list(request.app.state.js)
    return JSONResponse({"total": len(found), "datasets": found})


async def dataset(request: Request) -> JSONResponse:
    symbol, timeframe = request.path_params["symbol"], request.path_params["timeframe"]
    try:
        validate_symbol(symbol)
        validate_timeframe(timeframe)
    except ValueError as exc:
        raise InvalidRequest(str(exc), field="dataset") from None
    found = await request.app.state.datasets.show(request.app.state.js, symbol, timeframe)
    if found is None:
        raise NotFound(f"no shared dataset {symbol} {timeframe}")
    return JSONResponse(found)


def dashboard_routes() -> list[Route | Mount]:
    return [
        Route("/", page, methods=["GET"]),
        Route("/dashboard", dashboard_redirect, methods=["GET"]),
        Route("/favicon.ico", favicon, methods=["GET"]),
        Route("/api/v1/session", session, methods=["GET", "POST", "DELETE"]),
        Route("/api/v1/stream", stream, methods=["GET"]),
        Route("/api/v1/queues", queues, methods=["GET"]),
        Route("/api/v1/operations/{op_id}/events", op_events, methods=["GET"]),
        Route("/api/v1/operations/{op_id}/chart", op_chart, methods=["GET"]),
        Route("/api/v1/operations/{op_id}/epochs", op_epochs, methods=["GET"]),
        Route("/api/v1/models", models, methods=["GET"]),
        Route("/api/v1/models/{name}/{version}", model, methods=["GET"]),
        Route("/api/v1/datasets", datasets, methods=["GET"]),
        Route("/api/v1/datasets/{symbol}/{timeframe}", dataset, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
