"""``POST /api/v1/trainings``: a training request, validated (strategy included) before dispatch."""

from __future__ import annotations

from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from coordinator.api import parse, read_json, submit_admitted
from subjects.models import SubmitRequest
from subjects.training import TrainingParams

if TYPE_CHECKING:
    from coordinator.app import Coordinator


def routes(coordinator: Coordinator) -> list[Route]:
    async def submit_training(request: Request) -> Response:
        """Body: :class:`TrainingParams`. 422 names the field; the strategy must load and be neuro-fuzzy.

        Symbols, timeframes and the model name the strategy implies are written into the op's params.
        """
        params: TrainingParams = parse(TrainingParams, await read_json(request))
        return await submit_admitted(
            coordinator, SubmitRequest(type="training", params=params.model_dump(mode="json", exclude_none=True)))

    return [Route("/api/v1/trainings", submit_training, methods=["POST"])]
