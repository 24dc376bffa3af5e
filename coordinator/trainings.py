"""``POST /api/v1/trainings``: a training request, validated (strategy included) before dispatch."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from coordinator.api import ApiError, parse, read_json
from ktrdr.models.training_plan import TrainingRequestError, plan_training
from subjects.models import SubmitRequest
from subjects.training import TrainingParams

if TYPE_CHECKING:
    from coordinator.app import Coordinator


def routes(coordinator: Coordinator) -> list[Route]:
    async def submit_training(request: Request) -> JSONResponse:
        """Body: :class:`TrainingParams`. 422 names the field; the strategy must load and be neuro-fuzzy.

        Symbols, timeframes and the model name the strategy implies are written into the op's params.
        """
        params: TrainingParams = parse(TrainingParams, await read_json(request))
        try:
            plan = await asyncio.to_thread(plan_training, params)
        except TrainingRequestError as exc:
            raise ApiError(422, f"invalid {exc.field}: {exc.message}",
                           [{"field": exc.field, "message": exc.message}]) from None
        filled = params.model_copy(update={"symbols": [plan.symbol], "timeframes": plan.timeframes,
                                           "model_name": plan.model_name})
        op = await coordinator.dispatcher.submit(
            SubmitRequest(type="training", params=filled.model_dump(mode="json", exclude_none=True)))
        return JSONResponse(op.model_dump(mode="json"), status_code=201)

    return [Route("/api/v1/trainings", submit_training, methods=["POST"])]
