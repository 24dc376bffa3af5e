"""``POST /api/v1/trainings``: a training request, validated (strategy included) before dispatch."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from coordinator.api import read_json, submit_admitted
from coordinator.errors import parse
from subjects import names
from subjects.models import SubmitRequest
from subjects.training import TrainingParams


async def submit_training(request: Request) -> Response:
    """Body: :class:`TrainingParams`. 422 names the field; the strategy must load and be neuro-fuzzy.

    Symbols, timeframes and the model name the strategy implies are written into the op's params.
    """
    params = parse(TrainingParams, await read_json(request))
    return await submit_admitted(
        request.app.state,
        SubmitRequest(type=names.OP_TRAINING, params=params.model_dump(mode="json", exclude_none=True)))


def routes() -> list[Route]:
    return [Route("/api/v1/trainings", submit_training, methods=["POST"])]
