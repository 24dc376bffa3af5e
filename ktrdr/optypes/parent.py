"""What a parent operation type supplies to the coordinator's runner (``coordinator.parents``).

A parent operation is run by the coordinator and made of child operations. Its type says how to
plan its children and how to reduce their results; the runner owns everything else: child ids,
submitting them, progress, the cancel cascade, retries (a child's attempts) and picking a parent up
again after a coordinator restart.

Planning is a pure function of what is recorded: ``plan(params, prepared, children)`` sees every
child recorded so far (by its key) and answers the stage to run now (:class:`Stage`: the children
that must exist; those not yet recorded are submitted), :class:`Ready` once everything has run, or
:class:`Fail`. The runner asks again once every child of the stage has ended (and at once when one
fails or is cancelled), so stage n+1 may read stage n's results; after a restart the same answer
comes from the same records: nothing lives only in memory. ``prepare`` runs once, when the parent
starts, for facts the plan needs and that must not change under it (a walk-forward's folds, from the
dataset's bars); its answer is kept in the parent's record (``info["plan"]``).

A plan may also have ``absorb(params, child, env)`` (:class:`Absorbs`): the part of the reduction
that one completed child allows, worked out as soon as it completes while its siblings still run
(a sweep's block parsed into columns), so that little is left to do once the last one ends. The
runner keeps the answers in memory only; ``reduce`` reads them with ``env.absorbed(op_id)`` and works
out itself what is missing (after a coordinator restart, or where an ``absorb`` failed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import pandas as pd
from pydantic import BaseModel

from subjects.models import OpStatus

P = TypeVar("P", bound=BaseModel, contravariant=True)

# A child's key is part of its op id (``<parent>-<key>``): short, one subject token.
_KEY = re.compile(r"^[A-Za-z0-9_]{1,24}$")


class ChildType(Protocol):
    """What the runner needs of a child's type: an ``OpType`` (``ktrdr.optypes.defn``), which holds
    its plan from this module and so is not imported by it."""

    @property
    def name(self) -> str: ...

    def dump(self, params: Any) -> dict[str, Any]: ...


@dataclass(frozen=True, kw_only=True)
class Child:
    """A child the plan wants to exist: ``key`` is stable across re-plans (its id derives from it)."""

    key: str
    type: ChildType
    params: BaseModel

    def __post_init__(self) -> None:
        if not _KEY.match(self.key):
            raise ValueError(f"invalid child key {self.key!r}: 1-24 letters, digits or '_'")


@dataclass(frozen=True, kw_only=True)
class ChildState:
    """A recorded child, as the plan and the reduction see it."""

    key: str
    op_id: str
    type: str
    status: OpStatus
    params: dict[str, Any]
    result: dict[str, Any] | None = None
    error: str | None = None

    @property
    def ended(self) -> bool:
        return self.status.terminal

    @property
    def completed(self) -> bool:
        return self.status is OpStatus.COMPLETED


@dataclass(frozen=True, kw_only=True)
class Stage:
    """The children to run now, under a name for progress (``fold 2 of 5: in-sample sweep``).

    ``total``: how many children the whole parent runs, as far as it is known now (progress is the
    mean over that many). ``items``: when the work is counted in items that children of type
    ``items_type`` report (a sweep's variants, each block reporting how many of its own are done),
    the progress message counts those instead of children.
    """

    name: str
    children: Sequence[Child]
    total: int
    items: int | None = None
    items_type: str | None = None


@dataclass(frozen=True)
class Ready:
    """Every child the parent needs has ended: the runner reduces."""


@dataclass(frozen=True)
class Fail:
    """The parent cannot succeed (e.g. a stage's child failed): it fails with ``error`` and its
    running children are cancelled."""

    error: str


Decision = Stage | Ready | Fail


@dataclass(frozen=True, kw_only=True)
class Reduced:
    """A parent's outcome: ``result`` for its record (small), ``document`` for the ``results``
    store under its id (any size; e.g. a sweep's full ranking). ``error`` set: the parent failed."""

    result: BaseModel | dict[str, Any] | None = None
    document: bytes | None = None
    description: str = ""
    error: str | None = None


class ParentEnv(Protocol):
    """What a parent's ``prepare`` and ``reduce`` may read (the runner's, backed by JetStream)."""

    op_id: str  # the parent's

    async def result(self, op_id: str) -> bytes | None:
        """The document a (child) operation stored in the ``results`` store, None if none."""

    async def bar_index(self, symbol: str, timeframe: str, start: Any, end: Any) -> pd.DatetimeIndex:
        """The timestamps of a dataset's bars in the shared ``data`` store between start and end."""

    def worker_slots(self, capability: str) -> int:
        """Slots of the live workers serving ``capability`` now (to size children by)."""

    async def absorbed(self, op_id: str) -> Any:
        """What the plan's ``absorb`` made of the completed child ``op_id`` (waiting for it if it is
        still at work); None when there is nothing: no ``absorb``, a restart since, or it failed."""


class ParentPlan(Protocol, Generic[P]):
    unit: str  # what a child is, for progress ("backtests", "fold steps")

    async def prepare(self, params: P, env: ParentEnv) -> dict[str, Any]:
        """Facts fixed for the parent's life (JSON-ready), kept in its record; {} if none."""

    def plan(self, params: P, prepared: Mapping[str, Any], children: Mapping[str, ChildState]) -> Decision:
        """What to run now, from the children recorded so far (by key)."""

    async def reduce(self, params: P, prepared: Mapping[str, Any], children: Mapping[str, ChildState],
                     env: ParentEnv) -> Reduced:
        """The outcome, once ``plan`` answered :class:`Ready`."""


class Absorbs(Protocol, Generic[P]):
    """A plan whose reduction can begin before the last child ends (optional; see the module)."""

    async def absorb(self, params: P, child: ChildState, env: ParentEnv) -> Any:
        """What ``reduce`` will need of the completed ``child``; None for nothing."""


def absorber(plan: object) -> Absorbs[Any] | None:
    """``plan`` if it absorbs children as they complete, else None."""
    return plan if callable(getattr(plan, "absorb", None)) else None  # type: ignore[return-value]

