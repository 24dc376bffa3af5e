"""Backtest routes of the status API: submit a backtest or a sweep, read an operation's results.

Both submissions are checked before anything is queued: params by their model (422 naming the
field), then the strategy itself (``coordinator.admission``, as for every other way in).
"""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from coordinator.api import read_json, submit_admitted
from coordinator.errors import Conflict, InvalidRequest, NotFound, parse
from ktrdr.results import get_result
from subjects import names
from subjects.models import OpStatus, SubmitRequest
from subjects.params import BacktestParams, SweepParams

M = TypeVar("M", bound=BaseModel)


async def _submit(request: Request, op_type: str, params: BacktestParams) -> Response:
    return await submit_admitted(request.app.state,
                                 SubmitRequest(type=op_type, params=params.model_dump(mode="json")))


async def submit_backtest(request: Request) -> Response:
    return await _submit(request, names.OP_BACKTEST, _params(BacktestParams, await read_json(request)))


async def submit_sweep(request: Request) -> Response:
    return await _submit(request, names.OP_SWEEP, _params(SweepParams, await read_json(request)))


async def results(request: Request) -> Response:
    state, op_id = request.app.state, request.path_params["op_id"]
    op = state.layer.get(op_id)
    if op.status is not OpStatus.COMPLETED:
        raise Conflict(f"operation {op_id} is {op.status.value}: results exist once it completes")
    data = await get_result(state.js, op_id)
    if data is None:
        raise NotFound(f"operation {op_id} stored no results")
    return Response(data, media_type="application/json")


def routes() -> list[Route]:
    return [
        Route("/api/v1/backtests", submit_backtest, methods=["POST"]),
        Route("/api/v1/backtests/sweeps", submit_sweep, methods=["POST"]),
        Route("/api/v1/operations/{op_id}/results", results, methods=["GET"]),
    ]


def _params(model: type[M], body: object) -> M:
    if not isinstance(body, dict):
        raise InvalidRequest("invalid body: expected a JSON object of backtest parameters", field="body")
    return parse(model, body)
