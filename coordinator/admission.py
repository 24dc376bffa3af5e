"""What a submission must pass before anything is queued, whichever way it came in.

The HTTP routes (``POST /api/v1/operations``, ``/backtests``, ``/backtests/sweeps``,
``/trainings``) and the NATS service ``ktrdr.ops.submit`` all admit through here, so a bad
strategy is refused up front with the field at fault, never discovered by a worker later.
Params are checked by their model first (a pydantic ``ValidationError``, as before); then:
- backtests and sweeps: the strategy must load, with its overrides and every grid combination;
- training: the strategy must load and be neuro-fuzzy; the symbol, timeframes and model name it
  implies are written into the params.
Loading a strategy is CPU work, so it runs in a thread; other types pass straight through.
"""

from __future__ import annotations

import asyncio

from ktrdr.backtest.checks import RequestProblem, check_strategy
from ktrdr.models.training_plan import TrainingRequestError, plan_training
from subjects import names
from subjects.models import SubmitRequest
from subjects.params import BacktestParams, SweepParams
from subjects.training import TrainingParams


class Rejected(ValueError):
    """``field`` names the part of the params at fault (``strategy``, ``grid.slow``...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"invalid {field}: {message}")
        self.field, self.message = field, message


async def admit(request: SubmitRequest) -> SubmitRequest:
    """The request to dispatch (params completed where the type implies more); raises
    :class:`Rejected`, or pydantic's ``ValidationError`` for params that fail their model."""
    try:
        if request.type in ("backtesting", names.OP_SWEEP):
            model = SweepParams if request.type == names.OP_SWEEP else BacktestParams
            params = model.model_validate(request.params)
            grid = params.grid if isinstance(params, SweepParams) else None
            await asyncio.to_thread(check_strategy, params.strategy, params.parameters, grid)
            return request.model_copy(update={"params": params.model_dump(mode="json")})
        if request.type == "training":
            training = TrainingParams.model_validate(request.params)
            plan = await asyncio.to_thread(plan_training, training)
            filled = training.model_copy(update={"symbols": [plan.symbol], "timeframes": plan.timeframes,
                                                 "model_name": plan.model_name})
            return request.model_copy(update={"params": filled.model_dump(mode="json", exclude_none=True)})
    except (RequestProblem, TrainingRequestError) as exc:
        raise Rejected(exc.field, exc.message) from None
    return request
