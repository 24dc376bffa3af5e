"""Backtest routes of the status API: submit a backtest or a sweep, read an operation's results.

Both submissions are checked before anything is queued: params by their model (422 naming the
field), then the strategy itself (it must load, with its overrides and every grid combination).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from coordinator.api import ApiError, parse, read_json
from ktrdr.backtest.checks import RequestProblem, check_strategy
from ktrdr.results import get_result
from subjects import names
from subjects.models import OpStatus, SubmitRequest
from subjects.params import BacktestParams, SweepParams

if TYPE_CHECKING:
    from coordinator.app import Coordinator

M = TypeVar("M", bound=BaseModel)


def routes(coordinator: Coordinator) -> list[Route]:
    async def submit(op_type: str, params: BacktestParams) -> JSONResponse:
        grid = params.grid if isinstance(params, SweepParams) else None
        try:
            # Loading a strategy and every combination is CPU work: keep it off the event loop.
            await asyncio.to_thread(check_strategy, params.strategy, params.parameters, grid)
        except RequestProblem as exc:
            raise ApiError(422, f"invalid {exc.field}: {exc.message}",
                           [{"field": exc.field, "message": exc.message}]) from None
        op = await coordinator.dispatcher.submit(
            SubmitRequest(type=op_type, params=params.model_dump(mode="json")))
        return JSONResponse(op.model_dump(mode="json"), status_code=201)

    async def submit_backtest(request: Request) -> JSONResponse:
        return await submit("backtesting", _params(BacktestParams, await read_json(request)))

    async def submit_sweep(request: Request) -> JSONResponse:
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
