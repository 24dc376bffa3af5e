"""The status API (Starlette): health, workers, operations, cancel, submit and /metrics.

It reads the coordinator's mirrors of the ``workers`` and ``ops`` buckets, submits through the
dispatcher and cancels through ``ops.<id>.cancel``, the same path as ``nats req``. The submit
route, the API's hot path, is a bare ASGI app in front of Starlette (:class:`SubmitEndpoint`);
both sit behind :class:`coordinator.guard.ApiGuard` (token, Host, Origin, content type, body size).
"""

from __future__ import annotations

import json
import logging
from typing import TYPE_CHECKING, Any

import nats.errors
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from coordinator.admission import Rejected, admit
from coordinator.guard import ApiGuard
from coordinator.health import RETRY_AFTER_S, unavailable_message
from coordinator.operations import OperationExists
from ktrdr.runtime.retry import transient_js_error
from subjects import names
from subjects.limits import MAX_LIST_PAGE_OPS
from subjects.models import (
    CancelReply,
    CancelRequest,
    ListRequest,
    OpStatus,
    SubmitRequest,
    WorkerState,
    decode,
)

if TYPE_CHECKING:
    from coordinator.app import Coordinator

log = logging.getLogger(__name__)

SUBMIT_PATH = "/api/v1/operations"


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: Any = None, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers


def jetstream_unavailable(exc: BaseException) -> ApiError:
    """The 503 for a write that waited out its budget while JetStream elected a leader (never a 500:
    nothing is wrong with the request, and trying again later is the right thing to do)."""
    return ApiError(503, unavailable_message(exc), headers={"Retry-After": str(RETRY_AFTER_S)})


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


def validation_detail(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"field": ".".join(str(p) for p in e["loc"]), "message": e["msg"]} for e in exc.errors()]


async def read_json(request: Request) -> Any:
    body = await request.body()
    if not body.strip():
        return {}
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from None


def invalid(exc: ValidationError, *, prefix: str = "") -> ApiError:
    """A 422 naming the first field that failed (``prefix`` places it, e.g. ``params.``)."""
    detail = validation_detail(exc)
    return ApiError(422, f"invalid {prefix}{detail[0]['field'] or 'body'}: {detail[0]['message']}", detail)


def parse(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise invalid(exc) from None


def error_response(exc: ApiError, metrics: Any) -> JSONResponse:
    metrics.api_errors.labels(status=str(exc.status)).inc()
    body: dict[str, Any] = {"error": exc.error}
    if exc.detail is not None:
        body["detail"] = exc.detail
    return JSONResponse(body, status_code=exc.status, headers=exc.headers)


async def submit_admitted(coordinator: Coordinator, submit: SubmitRequest) -> Response:
    """Admit (``coordinator.admission``), dispatch, answer 201 with the op: every submit route."""
    return Response(await _submit(coordinator, submit), status_code=201, media_type="application/json")


async def _submit(coordinator: Coordinator, submit: SubmitRequest) -> bytes:
    try:
        op = await coordinator.dispatcher.submit(await admit(submit))
    except Rejected as exc:
        raise ApiError(422, str(exc), [{"field": exc.field, "message": exc.message}]) from None
    except ValidationError as exc:
        detail = validation_detail(exc)
        raise ApiError(422, f"invalid params.{detail[0]['field']}: {detail[0]['message']}", detail) from None
    except OperationExists as exc:
        raise ApiError(409, str(exc)) from None
    except Exception as exc:
        if transient_js_error(exc, nc=coordinator.nc):
            raise jetstream_unavailable(exc) from None
        raise
    # Serialised by pydantic in one step: the busiest response of the API.
    return op.encode()


def parse_submit(body: bytes) -> SubmitRequest:
    """The body of ``POST /api/v1/operations``, parsed and validated in one step."""
    if not body.strip():
        body = b"{}"
    try:
        return SubmitRequest.model_validate_json(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        if first["type"] == "json_invalid":
            raise ApiError(400, f"request body is not valid JSON: {first['msg']}") from None
        raise invalid(exc) from None


class SubmitEndpoint:
    """``POST /api/v1/operations`` answered before Starlette; every other request goes through it.

    Starlette's routing, its middleware and its Request object cost the coordinator ~50 µs per
    submitted op, a sixth of its CPU: with this, HTTP throughput rose by about a tenth (README,
    Benchmarks). The answers are the routed version's: the same JSON, status codes and metrics.
    """

    def __init__(self, *, coordinator: Coordinator, app: ASGIApp) -> None:
        self.coordinator = coordinator
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
            out = await _submit(self.coordinator, parse_submit(body))
        except ApiError as exc:
            await error_response(exc, self.coordinator.metrics)(scope, receive, send)
            return
        except Exception as exc:
            log.exception("submission failed")
            await error_response(ApiError(500, f"submission failed: {exc}"), self.coordinator.metrics)(
                scope, receive, send)
            return
        await send({"type": "http.response.start", "status": 201,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(out))]})
        await send({"type": "http.response.body", "body": out})


def build_app(coordinator: Coordinator, extra_routes: list[Route] | None = None) -> ASGIApp:
    ops, registry = coordinator.ops, coordinator.registry
    metrics = coordinator.metrics

    async def health(request: Request) -> JSONResponse:
        js = await coordinator.jetstream.state()
        return JSONResponse({"status": "ok" if js.ok else "degraded", "nats": coordinator.nc.is_connected,
                             "jetstream": js.text, "workers": len(registry.workers),
                             "operations": sum(1 for _ in ops.all())},
                            status_code=200 if js.ok else 503)

    async def live(request: Request) -> JSONResponse:
        # Answered by the event loop that runs everything else: a stuck loop does not answer at all.
        return JSONResponse({"status": "alive"})

    async def ready(request: Request) -> JSONResponse:
        js = await coordinator.jetstream.state()
        return JSONResponse({"ready": js.ok, "nats": coordinator.nc.is_connected, "jetstream": js.text},
                            status_code=200 if js.ok else 503)

    async def list_workers(request: Request) -> JSONResponse:
        wtype, state = request.query_params.get("type"), request.query_params.get("status")
        if state is not None and state not in set(WorkerState):
            raise ApiError(422, f"invalid status {state!r}; use one of {', '.join(WorkerState)}")
        workers = [w for w in registry.workers.values()
                   if (wtype is None or w.worker_type == wtype) and (state is None or w.state == state)]
        return JSONResponse({"total": len(workers),
                             "workers": [_dump(w) for w in sorted(workers, key=lambda w: w.worker_id)]})

    async def get_worker(request: Request) -> JSONResponse:
        worker_id = request.path_params["worker_id"]
        lease = registry.workers.get(worker_id)
        if lease is None:
            raise ApiError(404, f"unknown worker {worker_id}")
        return JSONResponse(_dump(lease))

    async def list_operations(request: Request) -> JSONResponse:
        q = request.query_params
        data: dict[str, Any] = {k: q[k] for k in ("type", "limit", "offset", "parent_id") if k in q}
        if "status" in q:
            data["status"] = [s for s in q.getlist("status") for s in s.split(",") if s]
        if "active_only" in q:
            data["active_only"] = q["active_only"]
        query = parse(ListRequest, data)
        # Paged like ktrdr.ops.list: at most MAX_LIST_PAGE_OPS and MAX_LIST_PAGE_BYTES of them.
        page = ops.page(query)
        return JSONResponse({"total": page.total, "limit": min(query.limit, MAX_LIST_PAGE_OPS),
                             "offset": page.offset, "next_offset": page.next_offset, "truncated": page.truncated,
                             "operations": [_dump(o) for o in page.operations]})

    def _op_or_404(op_id: str) -> Any:
        op = ops.get(op_id)
        if op is None:
            raise ApiError(404, f"unknown operation {op_id}")
        return op

    async def get_operation(request: Request) -> Response:
        return Response(_op_or_404(request.path_params["op_id"]).encode(), media_type="application/json")

    async def cancel_operation(request: Request) -> JSONResponse:
        op_id = request.path_params["op_id"]
        try:
            names.validate_token(op_id, what="operation id")
        except names.InvalidToken as exc:
            raise ApiError(422, str(exc)) from None
        body = await read_json(request)
        if "reason" in request.query_params and not body:
            body = {"reason": request.query_params["reason"]}
        cancel: CancelRequest = parse(CancelRequest, body)
        try:
            msg = await coordinator.nc.request(names.ops_cancel(op_id), cancel.encode(), timeout=5.0)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            raise ApiError(504, f"no answer to the cancel request: {exc}") from None
        reply = decode(CancelReply, msg.data)
        if reply.accepted:
            code = 202 if reply.status is OpStatus.RUNNING else 200
        else:
            code = 404 if reply.status is None and ops.get(op_id) is None else 409
        return JSONResponse(_dump(reply), status_code=code)

    async def metrics_endpoint(request: Request) -> Response:
        await coordinator.collect_metrics()
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def on_api_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, ApiError)
        return error_response(exc, metrics)

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)
        metrics.api_errors.labels(status=str(exc.status_code)).inc()
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code)

    async def on_nats_error(request: Request, exc: Exception) -> JSONResponse:
        # Handled here rather than by on_unexpected, which Starlette re-raises: an election is not a bug.
        if transient_js_error(exc, nc=coordinator.nc):
            log.warning("%s %s: JetStream unavailable: %s", request.method, request.url.path, exc)
            return error_response(jetstream_unavailable(exc), metrics)
        log.error("status API request %s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(ApiError(500, f"internal error: {exc}"), metrics)

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Starlette re-raises it after this answer; ApiGuard logs it with its traceback.
        return error_response(ApiError(500, f"internal error: {exc}"), metrics)

    routes = [
        Route("/health", health),
        Route("/health/live", live),
        Route("/health/ready", ready),
        Route("/metrics", metrics_endpoint),
        Route("/api/v1/workers", list_workers),
        Route("/api/v1/workers/{worker_id}", get_worker),
        # POST /api/v1/operations never gets here: SubmitEndpoint answers it.
        Route(SUBMIT_PATH, list_operations, methods=["GET"]),
        Route("/api/v1/operations/{op_id}", get_operation, methods=["GET"]),
        Route("/api/v1/operations/{op_id}", cancel_operation, methods=["DELETE"]),
        *(extra_routes or []),
    ]
    app = Starlette(routes=routes, exception_handlers={ApiError: on_api_error, HTTPException: on_http_error,
                                                       nats.errors.Error: on_nats_error, Exception: on_unexpected})
    s = coordinator.settings
    assert coordinator.api_token is not None, "the coordinator resolves its API token before building the API"
    return ApiGuard(app=SubmitEndpoint(coordinator=coordinator, app=app), token=coordinator.api_token,
                    viewer_token=coordinator.api_viewer_token,
                    allowed_hosts=s.api_allowed_hosts, allowed_origins=s.api_allowed_origins,
                    max_body_bytes=s.api_max_body_bytes, metrics_auth=s.metrics_auth, errors=metrics.api_errors)
