"""The dashboard's routes: its page and assets, sign-in, the live event stream, and the views of
queues, op events, models and datasets that the JSON API did not have.

The page is static (plain JavaScript shipped in ``static/``, no build step, nothing fetched from
elsewhere); everything it shows comes from the API, with the same token as any client: sent once
to ``/api/v1/session``, then kept in an HttpOnly cookie (``coordinator.guard``).
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

from coordinator.api import read_json
from coordinator.dashboard import catalog, charts
from coordinator.errors import InvalidRequest, NotFound, Unavailable
from coordinator.guard import TOKEN_COOKIE
from coordinator.routes import stored_result
from ktrdr.data.store import validate_symbol
from ktrdr.data.timeframes import validate_timeframe

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
MAX_TOKEN_CHARS = 512
COOKIE_MAX_AGE_S = 30 * 24 * 3600


def _role(state: Any, token: str | None) -> str | None:
    if not token or len(token) > MAX_TOKEN_CHARS:
        return None
    return state.guard.token_role(token.encode())  # type: ignore[no-any-return]


def _request_token(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, credentials = auth.partition(" ")
    if scheme.lower() == "bearer":
        return credentials.strip()
    return request.cookies.get(TOKEN_COOKIE)


async def page(request: Request) -> Response:
    # Never cached: a new version of the package serves its new page at once.
    return FileResponse(STATIC / "index.html", headers={"cache-control": "no-store"})


async def favicon(request: Request) -> Response:
    return FileResponse(STATIC / "favicon.svg", media_type="image/svg+xml")


async def dashboard_redirect(request: Request) -> Response:
    return RedirectResponse("/", status_code=308)


async def session(request: Request) -> Response:
    """GET: who the page is signed in as (401 if not). POST ``{"token": ...}``: sign in, setting the
    cookie. DELETE: sign out."""
    state = request.app.state
    if request.method == "DELETE":
        response = Response(status_code=204)
        response.delete_cookie(TOKEN_COOKIE, path="/", samesite="strict", httponly=True)
        return response
    if request.method == "GET":
        role = _role(state, _request_token(request))
        if role is None:
            return JSONResponse({"error": "not signed in"}, status_code=401)
        return JSONResponse({"role": role})
    body = await read_json(request)
    token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token.strip():
        raise InvalidRequest("sign in with {\"token\": \"<the API token>\"}", field="token")
    role = _role(state, token.strip())
    if role is None:
        state.metrics.api_errors.labels(status="401").inc()
        log.warning("dashboard sign-in refused: wrong token (from %s)", request.client.host if request.client else "?")
        return JSONResponse({"error": "wrong token"}, status_code=401)
    response = JSONResponse({"role": role})
    response.set_cookie(TOKEN_COOKIE, token.strip(), max_age=COOKIE_MAX_AGE_S, path="/", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")
    return response


async def stream(request: Request) -> Response:
    """Server-sent events: ``hello``, then ``ops`` (summaries of changed ops), ``workers``
    (changed leases and gone workers) and ``resync`` (reload the lists) as they happen."""
    live = request.app.state.live
    if live.full():
        raise Unavailable(f"too many live pages ({live.max_subscribers}); try again later")
    return StreamingResponse(live.stream(), media_type="text/event-stream",
                             headers={"cache-control": "no-store", "x-accel-buffering": "no"})


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
    """What the op's page draws from its stored result (``coordinator.dashboard.charts``)."""
    data = await stored_result(request.app.state, request.path_params["op_id"])
    return JSONResponse(await asyncio.to_thread(charts.chart, data))


async def models(request: Request) -> JSONResponse:
    found = await catalog.models(request.app.state.js)
    return JSONResponse({"total": len(found), "models": found})


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
        Route("/api/v1/models", models, methods=["GET"]),
        Route("/api/v1/datasets", datasets, methods=["GET"]),
        Route("/api/v1/datasets/{symbol}/{timeframe}", dataset, methods=["GET"]),
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
    ]
