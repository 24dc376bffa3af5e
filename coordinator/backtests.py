"""Backtest routes of the status API: submit a backtest or a sweep, read an operation's results.

Both submissions are checked before anything is queued: params by their model (422 naming the
field), then the strategy itself (``coordinator.admission``, as for every other way in).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from coordinator.api import ApiError, parse, read_json, submit_admitted
from ktrdr.results import get_result
from subjects import names
from subjects.models import OpStatus, SubmitRequest
from subjects.params import BacktestParams, SweepParams

if TYPE_CHECKING:
    from coordinator.app import Coordinator

M = TypeVar("M", bound=BaseModel)


def routes(coordinator: Coordinator) -> list[Route]:
    async def submit(op_type: str, params: BacktestParams) -> Response:
        return await submit_admitted(coordinator, SubmitRequest(type=op_type, params=params.model_dump(mode="json")))

    async def submit_backtest(request: Request) -> Response:
        return await submit("backtesting", _params(BacktestParams, await read_json(request)))

    async def submit_sweep(request: Request) -> Response:
        return await submit(names.OP_SWEEP, _params(SweepParams, await read_json(request)))

    async def results(request: Request) -> Response:
        op_id = request.path_params["op_id"]
        op = coordinator.ops.get(op_id)
        if op is None:
            raise ApiError(404, f"unknown operation {op_id}")
        if op.status is not OpStatus.COMPLETED:
            raise ApiError(409, f"operation {op_id} is {op.status.value}: results exist once it completes")
        data = await get_result(coordinator.js, op_id)
        if data is None:
            raise ApiError(404, f"operation {op_id} stored no results")
        return Response(data, media_type="application/json")

    return [
        Route("/api/v1/backtests", submit_backtest, methods=["POST"]),
        Route("/api/v1/backtests/sweeps", submit_sweep, methods=["POST"]),
        Route("/api/v1/operations/{op_id}/results", results, methods=["GET"]),
    ]


def _params(model: type[M], body: object) -> M:
    if not isinstance(body, dict):
        raise ApiError(422, "invalid body: expected a JSON object of backtest parameters")
    return parse(model, body)  # type: ignore[no-any-return]
