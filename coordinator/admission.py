"""What a submission must pass before anything is queued, whichever way it came in.

The HTTP routes (``POST /api/v1/operations``, ``/backtests``, ``/backtests/sweeps``,
``/trainings``) and the NATS service ``ktrdr.ops.submit`` all admit through here, so a bad
strategy is refused up front with the field at fault, never discovered by a worker later.
Every type's params must first fit ``subjects.limits`` (no string over 64 Ki characters, 128 KiB in
all): they travel in every offer and stay in the op record. Params are checked by their model next
(a pydantic ``ValidationError``, as before); then:
- backtests and sweeps: the strategy must load, with its overrides and every grid combination
  (a packaged name, a file name in the strategies directory or YAML text, never a path: the same
  :func:`ktrdr.strategy.load_strategy` the workers use, so a job that skipped admission fails alike);
- training: the strategy must load and be neuro-fuzzy; the symbol, timeframes and model name it
  implies are written into the params.
Loading a strategy is CPU work, so it runs in a thread; other types pass straight through.
"""

from __future__ import annotations

import asyncio
import logging

from ktrdr.backtest.checks import RequestProblem, check_strategy
from ktrdr.models.training_plan import TrainingRequestError, plan_training
from subjects import limits, names
from subjects.models import SubmitRequest
from subjects.params import BacktestParams, SweepParams
from subjects.training import TrainingParams

log = logging.getLogger(__name__)


class Rejected(ValueError):
    """``field`` names the part of the params at fault (``strategy``, ``grid.slow``...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"invalid {field}: {message}")
        self.field, self.message = field, message


class TooLarge(Rejected):
    """Params over ``subjects.limits``: they would be copied into every offer and the op record."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, f"too large: {message}")


async def admit(request: SubmitRequest) -> SubmitRequest:
    """The request to dispatch (params completed where the type implies more); raises
    :class:`Rejected` (:class:`TooLarge` for params over the limits), or pydantic's
    ``ValidationError`` for params that fail their model."""
    # First, and for every type: an op whose params cannot fit a job or a record must never exist.
    problem = limits.params_problem(request.params)
    if problem is not None:
        log.warning("refused a %s submission: %s: %s", request.type, *problem)
        raise TooLarge(*problem)
    try:
        if request.type in (names.OP_BACKTEST, names.OP_SWEEP):
            model = SweepParams if request.type == names.OP_SWEEP else BacktestParams
            params = model.model_validate(request.params)
            grid = params.grid if isinstance(params, SweepParams) else None
            await asyncio.to_thread(check_strategy, params.strategy, params.parameters, grid)
            return request.model_copy(update={"params": params.model_dump(mode="json")})
        if request.type == names.OP_TRAINING:
            training = TrainingParams.model_validate(request.params)
            plan = await asyncio.to_thread(plan_training, training)
            filled = training.model_copy(update={"symbols": [plan.symbol], "timeframes": plan.timeframes,
                                                 "model_name": plan.model_name})
            return request.model_copy(update={"params": filled.model_dump(mode="json", exclude_none=True)})
    except (RequestProblem, TrainingRequestError) as exc:
        raise Rejected(exc.field, exc.message) from None
    return request
