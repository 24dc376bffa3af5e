"""The status API (Starlette): health, workers, operations, cancel, submit and /metrics.

It reads the coordinator's mirrors of the ``workers`` and ``ops`` buckets and submits, gets, lists
and cancels through the operations layer (``coordinator.layer``), as the NATS service does; every
error is an ``OpError`` from the one table in ``coordinator.errors``, so both answer alike. The submit
route, the API's hot path, is a bare ASGI app in front of Starlette (:class:`SubmitEndpoint`);
both sit behind :class:`coordinator.guard.ApiGuard` (token, Host, Origin, content type, body size).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import nats.errors
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.datastructures import State
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Receive, Scope, Send

from coordinator.dashboard.catalog import Datasets
from coordinator.errors import (
    InvalidRequest,
    MalformedBody,
    NotFound,
    OpError,
    Unavailable,
    check_depth,
    op_error,
    parse,
    parse_body,
)
from coordinator.guard import ApiGuard
from coordinator.layer import OpsLayer
from coordinator.metrics import Metrics
from subjects.limits import MAX_LIST_PAGE_OPS
from subjects.models import (
    CancelRequest,
    ListRequest,
    OpStatus,
    PruneRequest,
    SubmitRequest,
    WorkerState,
)

if TYPE_CHECKING:
    from nats.aio.client import Client
    from nats.js import JetStreamContext

    from coordinator.dashboard.live import LiveFeed
    from coordinator.dispatcher import Dispatcher
    from coordinator.health import JetStreamProbe
    from coordinator.operations import Operations
    from coordinator.registry import WorkerRegistry
    from coordinator.settings import CoordinatorSettings

log = logging.getLogger(__name__)

SUBMIT_PATH = "/api/v1/operations"


class ApiSources(Protocol):
    """What the API is built from: the coordinator's parts (``coordinator.app.Coordinator``, which
    builds it and so is not imported here), or a stand-in that serves none (``docs/gen.py``)."""

    layer: OpsLayer
    ops: Operations
    registry: WorkerRegistry
    dispatcher: Dispatcher
    metrics: Metrics
    nc: Client
    js: JetStreamContext
    jetstream: JetStreamProbe
    live: LiveFeed
    settings: CoordinatorSettings
    api_token: str | None
    api_viewer_token: str | None

    def collect_metrics(self) -> Awaitable[None]: ...


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


async def read_json(request: Request) -> Any:
    body = await request.body()
    if not body.strip():
        return {}
    check_depth(body)
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise MalformedBody(f"request body is not valid JSON: {exc}") from None


def error_response(exc: OpError, metrics: Metrics) -> JSONResponse:
    """An :class:`OpError` as HTTP writes it (the NATS service writes the same body: ``coordinator.errors``)."""
    metrics.api_errors.labels(status=str(exc.status)).inc()
    return JSONResponse(exc.body(), status_code=exc.status, headers=exc.headers)


async def submit_admitted(state: State, submit: SubmitRequest) -> Response:
    """Admit, dispatch, answer 201 with the op: every submit route (``state``: the app's)."""
    op = await state.layer.submit(submit)
    return Response(op.encode(), status_code=201, media_type="application/json")


def parse_submit(body: bytes) -> SubmitRequest:
    """The body of ``POST /api/v1/operations``, parsed and validated in one step."""
    return parse_body(SubmitRequest, body)


class SubmitEndpoint:
    """``POST /api/v1/operations`` answered before Starlette; every other request goes through it.

    Starlette's routing, its middleware and its Request object cost the coordinator ~50 µs per
    submitted op, a sixth of its CPU: with this, HTTP throughput rose by about a tenth (bench/README.md).
    The answers are the routed version's: the same JSON, status codes and metrics.
    """

    def __init__(self, *, layer: OpsLayer, metrics: Metrics, app: ASGIApp) -> None:
        self.layer = layer
        self.metrics = metrics
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != SUBMIT_PATH or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        body = b""
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        try:
            # Serialised by pydantic in one step: the busiest response of the API.
            out = (await self.layer.submit(parse_body(SubmitRequest, body))).encode()
        except OpError as exc:
            await error_response(exc, self.metrics)(scope, receive, send)
            return
        except Exception as exc:
            log.exception("submission failed")
            await error_response(op_error(exc), self.metrics)(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(out))]})
        await send({"type": "http.response.body", "body": out})


def _state(request: Request) -> State:
    return request.app.state  # type: ignore[no-any-return]


async def health(request: Request) -> JSONResponse:
    state = _state(request)
    js = await state.jetstream.state()
    return JSONResponse({"status": "ok" if js.ok else "degraded", "nats": state.nc.is_connected,
                         "jetstream": js.text, "workers": len(state.registry.workers),
                         "operations": state.ops.total()},
                        status_code=200 if js.ok else 503)


async def live(request: Request) -> JSONResponse:
    # Answered by the event loop that runs everything else: a stuck loop does not answer at all.
    return JSONResponse({"status": "alive"})


async def ready(request: Request) -> JSONResponse:
    state = _state(request)
    js = await state.jetstream.state()
    return JSONResponse({"ready": js.ok, "nats": state.nc.is_connected, "jetstream": js.text},
                        status_code=200 if js.ok else 503)


async def list_workers(request: Request) -> JSONResponse:
    wtype, wstate = request.query_params.get("type"), request.query_params.get("status")
    if wstate is not None and wstate not in set(WorkerState):
        raise InvalidRequest(f"invalid status {wstate!r}; use one of {', '.join(WorkerState)}", field="status")
    workers = [w for w in _state(request).registry.workers.values()
               if (wtype is None or w.worker_type == wtype) and (wstate is None or w.state == wstate)]
    return JSONResponse({"total": len(workers),
                         "workers": [_dump(w) for w in sorted(workers, key=lambda w: w.worker_id)]})


async def get_worker(request: Request) -> JSONResponse:
    worker_id = request.path_params["worker_id"]
    lease = _state(request).registry.workers.get(worker_id)
    if lease is None:
        raise NotFound(f"unknown worker {worker_id}")
    return JSONResponse(_dump(lease))


async def list_operations(request: Request) -> JSONResponse:
    q = request.query_params
    data: dict[str, Any] = {k: q[k] for k in ("type", "limit", "offset", "parent_id", "worker_id", "since",
                                              "until", "q") if k in q}
    if "status" in q:
        data["status"] = [s for s in q.getlist("status") for s in s.split(",") if s]
    for flag in ("active_only", "include_children", "include_archived"):
        if flag in q:
            data[flag] = q[flag]
    query = parse(ListRequest, data)
    # Paged like ktrdr.ops.list: at most MAX_LIST_PAGE_OPS and MAX_LIST_PAGE_BYTES of them.
    page = _state(request).layer.page(query)
    return JSONResponse({"total": page.total, "total_capped": page.total_capped,
                         "limit": min(query.limit, MAX_LIST_PAGE_OPS), "offset": page.offset,
                         "next_offset": page.next_offset, "truncated": page.truncated,
                         "operations": [_dump(o) for o in page.operations]})


async def prune_operations(request: Request) -> JSONResponse:
    """Retention on demand (``coordinator.retention``): body :class:`PruneRequest`."""
    reply = await _state(request).layer.prune(parse(PruneRequest, await read_json(request)))
    return JSONResponse(_dump(reply))


async def get_operation(request: Request) -> Response:
    op = _state(request).layer.get(request.path_params["op_id"])
    return Response(op.encode(), media_type="application/json")


async def cancel_operation(request: Request) -> JSONResponse:
    state, op_id = _state(request), request.path_params["op_id"]
    body = await read_json(request)
    if "reason" in request.query_params and not body:
        body = {"reason": request.query_params["reason"]}
    cancel: CancelRequest = parse(CancelRequest, body)
    reply = await state.layer.cancel(op_id, cancel)
    # The reply is the answer either way; its status code says what became of the op.
    if reply.accepted:
        code = 202 if reply.status is OpStatus.RUNNING else 200
    else:
        code = 404 if reply.status is None and state.ops.get(op_id) is None else 409
    return JSONResponse(_dump(reply), status_code=code)


async def metrics_endpoint(request: Request) -> Response:
    state = _state(request)
    await state.collect_metrics()
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


async def on_op_error(request: Request, exc: Exception) -> JSONResponse:
    return error_response(op_error(exc), _state(request).metrics)


async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    _state(request).metrics.api_errors.labels(status=str(exc.status_code)).inc()
    return JSONResponse({"error": exc.detail, "code": exc.status_code}, status_code=exc.status_code)


async def on_nats_error(request: Request, exc: Exception) -> JSONResponse:
    # Handled here rather than by on_unexpected, which Starlette re-raises: an election is not a bug.
    state = _state(request)
    error = op_error(exc, nc=state.nc)
    if isinstance(error, Unavailable):
        log.warning("%s %s: JetStream unavailable: %s", request.method, request.url.path, exc)
    else:
        log.error("status API request %s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(error, state.metrics)


async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
    # Starlette re-raises it after this answer; ApiGuard logs it with its traceback.
    return error_response(op_error(exc), _state(request).metrics)


def build_app(coordinator: ApiSources, extra_routes: Sequence[BaseRoute] | None = None) -> ASGIApp:
    """The status API. Handlers reach what they need through ``request.app.state`` (the operations
    layer, the op and worker mirrors, the dispatcher, metrics, the NATS connection), never the coordinator."""
    routes = [
        Route("/health", health),
        Route("/health/live", live),
        Route("/health/ready", ready),
        Route("/metrics", metrics_endpoint),
        Route("/api/v1/workers", list_workers),
        Route("/api/v1/workers/{worker_id}", get_worker),
        # POST /api/v1/operations never gets here: SubmitEndpoint answers it.
        Route(SUBMIT_PATH, list_operations, methods=["GET"]),
        Route("/api/v1/operations/prune", prune_operations, methods=["POST"]),
        Route("/api/v1/operations/{op_id}", get_operation, methods=["GET"]),
        Route("/api/v1/operations/{op_id}", cancel_operation, methods=["DELETE"]),
        *(extra_routes or []),
    ]
    app = Starlette(routes=routes, exception_handlers={OpError: on_op_error, HTTPException: on_http_error,
                                                       nats.errors.Error: on_nats_error, Exception: on_unexpected})
    state = app.state
    state.layer, state.ops, state.registry = coordinator.layer, coordinator.ops, coordinator.registry
    state.dispatcher, state.metrics, state.nc, state.js = (coordinator.dispatcher, coordinator.metrics,
                                                           coordinator.nc, coordinator.js)
    state.jetstream = coordinator.jetstream
    # The dashboard's: its live feed and dataset summaries.
    state.live, state.datasets = coordinator.live, Datasets()
    # Looked up on each scrape (the one late-bound thing the API asks of the coordinator itself).
    state.collect_metrics = lambda: coordinator.collect_metrics()
    s = coordinator.settings
    assert coordinator.api_token is not None, "the coordinator resolves its API token before building the API"
    guard = ApiGuard(app=SubmitEndpoint(layer=coordinator.layer, metrics=coordinator.metrics, app=app),
                     token=coordinator.api_token, viewer_token=coordinator.api_viewer_token,
                     allowed_hosts=s.api_allowed_hosts, allowed_origins=s.api_allowed_origins,
                     max_body_bytes=s.api_max_body_bytes, metrics_auth=s.metrics_auth,
                     errors=coordinator.metrics.api_errors, trusted_proxies=s.api_trusted_proxies)
    # The dashboard's sign-in asks the guard whose a token is and opens its sessions there.
    state.guard = guard
    return guard

