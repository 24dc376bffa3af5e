"""What a submission must pass before anything is queued, whichever way it came in.

Every submit route of the status API and the NATS service ``ktrdr.ops.submit`` admit through here,
so bad input is refused up front with the field at fault, never discovered by a worker later:

1. the type must be declared (``ktrdr.optypes``);
2. its params must fit ``subjects.limits`` (no string over 64 Ki characters, 128 KiB in all): they
   travel in every offer and stay in the op record;
3. they must fit the type's params model (pydantic's ``ValidationError`` names the field);
4. then the type's own check of the params (``OpType.admit``: a strategy must load, a training's
   strategy must be neuro-fuzzy...), which may complete them;
5. then its check against the platform (``OpType.verify``), with read-only lookups
   (``coordinator.lookups``): the op a param names exists and completed, the bars it needs are
   stored (naming what is, when they are not).

A parent's children (a sweep's blocks, a walk-forward's folds) are made from params admitted here and
go straight to the dispatcher: nothing is checked again per child.
"""

from __future__ import annotations

import logging

from ktrdr.errors import FieldTooLarge
from ktrdr.optypes import Rejected, op_type
from ktrdr.optypes.lookups import Lookups
from subjects import limits
from subjects.models import SubmitRequest

log = logging.getLogger(__name__)

__all__ = ["Rejected", "TooLarge", "admit"]


# Params over ``subjects.limits``: they would be copied into every offer and the op record.
TooLarge = FieldTooLarge


async def admit(request: SubmitRequest, lookups: Lookups | None = None) -> SubmitRequest:
    """The request to dispatch (params completed where the type implies more); raises
    :class:`Rejected` (:class:`TooLarge` for params over the limits, ``UnknownOpType`` for an
    undeclared type), or pydantic's ``ValidationError`` for params that fail their model. Without
    ``lookups`` nothing is checked against the platform."""
    declared = op_type(request.type)
    # Before the model, and for every type: an op whose params cannot fit a job or a record must never exist.
    problem = limits.params_problem(request.params)
    if problem is not None:
        log.warning("refused a %s submission: %s: %s", request.type, *problem)
        raise TooLarge(*problem)
    params = await declared.admitted(declared.parse(request.params), lookups)
    return request.model_copy(update={"params": declared.dump(params)})
