"""HTTP routes that operation types add to the status API, beside the core ones in ``coordinator.api``.

A type whose declaration names an ``api`` path (``ktrdr.optypes``) gets ``POST <path>`` taking its bare
params (``POST /api/v1/backtests`` with a backtest's params); every type is also submitted through
``POST /api/v1/operations`` with ``{"type": ..., "params": ...}``. ``GET /api/v1/optypes`` lists the
declared types, where they run and their params' JSON schema. Handlers reach what they need through
``request.app.state``.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from coordinator.api import read_json, submit_admitted
from coordinator.errors import Conflict, InvalidRequest, NotFound, parse
from ktrdr.optypes import OpType, op_types
from ktrdr.optypes.backtesting import BACKTEST
from ktrdr.results import get_result
from subjects.models import Operation, OpStatus, SubmitRequest


def _submit_route(declared: OpType[Any, Any]) -> Route:
    async def submit(request: Request) -> Response:
        body = await read_json(request)
        if not isinstance(body, dict):
            raise InvalidRequest(f"invalid body: expected a JSON object of {declared.name} parameters",
                                 field="body")
        params = parse(declared.params, body)
        return await submit_admitted(request.app.state,
                                     SubmitRequest(type=declared.name, params=declared.dump(params)))

    submit.__name__ = f"submit_{declared.name}"
    assert declared.api is not None
    return Route(declared.api, submit, methods=["POST"])


async def stored_result(state: Any, op_id: str) -> bytes:
    """The bytes a completed op stored in ``results``: 404 for an unknown op or none stored, 409 before it completes."""
    return await _stored(state, state.layer.get(op_id))


async def _stored(state: Any, op: Operation) -> bytes:
    op_id = op.op_id
    if op.status is not OpStatus.COMPLETED:
        raise Conflict(f"operation {op_id} is {op.status.value}: results exist once it completes")
    data = await get_result(state.js, op)
    if data is None:
        raise NotFound(f"operation {op_id} stored no results")
    return data


async def results(request: Request) -> Response:
    """An operation's full result from the ``results`` store (a backtest's trades and curves, a
    sweep's whole ranking), once it has completed."""
    data = await stored_result(request.app.state, request.path_params["op_id"])
    return Response(data, media_type="application/json")


async def compare_backtests(request: Request) -> Response:
    """``GET /api/v1/backtests/compare?ids=a,b``: completed backtests' metrics side by side and their
    equity curves as a % of starting capital (``ktrdr.backtest.compare``; the CLI gives the same)."""
    from coordinator.dashboard.charts import reduce_curves
    from ktrdr.backtest.compare import MAX_COMPARED, compare, growth_curves

    ids = [i for i in request.query_params.get("ids", "").split(",") if i]
    if not 2 <= len(ids) <= MAX_COMPARED or len(set(ids)) != len(ids):
        raise InvalidRequest(f"ids: give 2 to {MAX_COMPARED} different backtest ids, comma-separated",
                             field="ids")
    state = request.app.state
    documents: dict[str, bytes] = {}
    for op_id in ids:
        op = state.layer.get(op_id)
        if op.type != BACKTEST.name:
            raise InvalidRequest(f"ids: {op_id} is a {op.type}, not a backtest", field="ids")
        documents[op_id] = await _stored(state, op)
    found = compare(documents)
    found["curves"] = {op_id: reduce_curves(index_ns, {"growth_pct": growth})
                       for op_id, (index_ns, growth) in growth_curves(documents).items()}
    return JSONResponse(found)


def describe(declared: OpType[Any, Any]) -> dict[str, Any]:
    return {"name": declared.name, "summary": declared.summary,
            "runs": "coordinator" if declared.on_coordinator else list(declared.runs.capabilities),
            "api": declared.api, "cli": declared.cli, "view": declared.view is not None,
            "params": declared.params.model_json_schema()}


async def list_types(request: Request) -> JSONResponse:
    return JSONResponse({"types": [describe(t) for t in op_types()]})


def optype_routes() -> list[Route]:
    routes = [_submit_route(t) for t in op_types() if t.api is not None]
    routes += [Route("/api/v1/operations/{op_id}/results", results, methods=["GET"]),
               Route("/api/v1/backtests/compare", compare_backtests, methods=["GET"]),
               Route("/api/v1/optypes", list_types, methods=["GET"])]
    return routes
