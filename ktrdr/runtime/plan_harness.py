"""Run a parent type's plan without a coordinator: :class:`PlanEnvironment`.

The coordinator's runner (``coordinator.parents``) asks a parent's plan (``ktrdr.optypes.parent``)
for its stages, runs their children as ordinary ops on workers and reduces their results. Here the
same questions are asked in memory, in the same order: ``prepare`` once, then ``plan``; each stage's
children not yet recorded run to their end (a worker-run child through its handler, in a
:class:`~ktrdr.runtime.harness.HandlerEnvironment` sharing this one's stores; a child that is itself
a parent through its own plan), the plan is asked again as soon as a child fails or is cancelled (it
may give up early) and once they have all ended, and ``reduce`` once it answers ``Ready``. A plan
that absorbs children (``absorb``) has each one absorbed as soon as it completes, as the runner does;
an ``absorb`` that raises fails the run here (the runner logs it and lets ``reduce`` work it out),
so that the plan's own tests see it::

    env = PlanEnvironment(handlers={BACKTEST_BLOCK: handler.run_block, BACKTEST: handler})
    env.datasets.put_bars("SYNTH", "1h", bars)
    outcome = await env.run(SWEEP, SweepParams(...))
    assert outcome.result["best"] and env.stages[env.op_id] == ["blocks", "best in full"]

Each child and the parent are recorded in ``records`` as the runner would record them, so a child's
result is read the way the plan reads it (``ChildState.result``, ``env.result(op_id)``), and a
handler of a later run can read any of them with ``ctx.results.of(op_id)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from pydantic import BaseModel

from ktrdr.optypes import OpType
from ktrdr.optypes.parent import ChildState, Fail, Ready, Reduced, Stage, absorber
from ktrdr.runtime.context import Handler
from ktrdr.runtime.harness import HandlerEnvironment, MemoryStores
from subjects.models import Operation, OpStatus


class _Env:
    """What ``prepare`` and ``reduce`` read (``ParentEnv``), from the environment's stores."""

    def __init__(self, owner: PlanEnvironment, op_id: str) -> None:
        self.owner = owner
        self.op_id = op_id

    async def result(self, op_id: str) -> bytes | None:
        op = self.owner.records.ops.get(op_id)
        name = op.result_object if op is not None and op.result_object else op_id
        return self.owner.results.data.get(name)

    async def bar_index(self, symbol: str, timeframe: str, start: Any, end: Any) -> pd.DatetimeIndex:
        if (symbol, timeframe) not in self.owner.datasets.objects:
            raise LookupError(f"no {symbol} {timeframe} dataset in the data store")
        index = pd.DatetimeIndex(self.owner.datasets.bars(symbol, timeframe).index)
        if start is not None:
            index = index[index >= _utc(start)]
        if end is not None:
            index = index[index <= _utc(end)]
        return index

    def worker_slots(self, capability: str) -> int:
        return self.owner.slots.get(capability, 1)

    async def absorbed(self, op_id: str) -> Any:
        return self.owner.absorbed.get(op_id)


def _utc(moment: Any) -> pd.Timestamp:
    ts = pd.Timestamp(moment)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


@dataclass(kw_only=True)
class PlanEnvironment(MemoryStores):
    """``handlers``: the handler of each worker-run type the plan's children are (``KeyError`` naming
    a missing one); ``slots``: live worker slots per capability as ``worker_slots`` answers (1 for
    any other). After :meth:`run`, ``stages[op_id]`` names each parent's stages in the order they
    ran, ``children[op_id]`` holds its children's final states, by key, and ``absorbed[child_id]``
    what the plan's ``absorb`` made of each completed child."""

    handlers: Mapping[OpType[Any, Any], Handler] = field(default_factory=dict)
    slots: Mapping[str, int] = field(default_factory=dict)
    op_id: str = "harness-parent"
    stages: dict[str, list[str]] = field(default_factory=dict)
    children: dict[str, dict[str, ChildState]] = field(default_factory=dict)
    # Child runs' reports, by child op id (progress, info, warnings: its HandlerEnvironment).
    runs: dict[str, HandlerEnvironment] = field(default_factory=dict)
    absorbed: dict[str, Any] = field(default_factory=dict)

    async def run(self, op_type: OpType[Any, Any], params: BaseModel | dict[str, Any], *,
                  op_id: str | None = None) -> Reduced:
        """Run ``op_type``'s plan on ``params`` (as admitted: run ``admit`` first where it completes
        them) to its end; its outcome as the plan reduced it (``error`` set: the parent failed)."""
        if op_type.parent is None:
            raise ValueError(f"{op_type.name} is run by workers, not planned: use HandlerEnvironment")
        return await self._parent(op_type, op_type.parse(params), op_id or self.op_id)

    async def _parent(self, op_type: OpType[Any, Any], params: BaseModel, op_id: str,
                      parent_id: str | None = None) -> Reduced:
        plan = op_type.parent
        assert plan is not None
        env = _Env(self, op_id)
        record = self.records.put(Operation(op_id=op_id, type=op_type.name, params=op_type.dump(params),
                                            parent_id=parent_id, status=OpStatus.RUNNING,
                                            started_at=datetime.now(UTC)))
        stages = self.stages.setdefault(op_id, [])
        children = self.children.setdefault(op_id, {})
        try:
            prepared = await plan.prepare(params, env)
        except Exception as exc:
            return self._ended(record, Reduced(error=str(exc) or type(exc).__name__))
        record = self.records.put(record.model_copy(update={"info": {"plan": prepared} if prepared else {}}))
        repeated: frozenset[str] | None = None
        while True:
            decision = plan.plan(params, prepared, children)
            if isinstance(decision, Fail):
                return self._ended(record, Reduced(error=decision.error))
            if isinstance(decision, Ready):
                return self._ended(record, await plan.reduce(params, prepared, children, env))
            assert isinstance(decision, Stage)
            if not stages or stages[-1] != decision.name:
                stages.append(decision.name)
            missing = [c for c in decision.children if c.key not in children]
            if not missing:
                keys = frozenset(c.key for c in decision.children)
                if keys == repeated:
                    return self._ended(record, Reduced(
                        error=f"the {op_type.name} plan repeats stage {decision.name!r} whose children have all ended"))
                repeated = keys
                continue
            for child in missing:
                # A plan's children are OpTypes (parent.ChildType is the part of one it may import).
                if not isinstance(child.type, OpType):
                    raise TypeError(f"child {child.key!r} has type {child.type!r}, not an OpType")
                state = await self._child(op_id, child.key, child.type, child.params)
                children[child.key] = state
                absorbing = absorber(plan)
                if absorbing is not None and state.completed:
                    self.absorbed[state.op_id] = await absorbing.absorb(params, state, env)
                # A child that did not complete may change the plan before its stage ends.
                if not state.completed and isinstance(plan.plan(params, prepared, children), Fail):
                    break

    async def _child(self, parent_id: str, key: str, op_type: OpType[Any, Any], params: BaseModel) -> ChildState:
        op_id = f"{parent_id}-{key}"
        if op_type.parent is not None:
            reduced = await self._parent(op_type, params, op_id, parent_id)
            op = self.records.ops[op_id]
            return ChildState(key=key, op_id=op_id, type=op_type.name, status=op.status, params=op.params,
                              result=op.result, error=reduced.error)
        handler = self.handlers.get(op_type)
        if handler is None:
            raise KeyError(f"no handler for {op_type.name}: give PlanEnvironment(handlers={{{op_type.name}: ...}})")
        run = self.runs[op_id] = HandlerEnvironment(op_id=op_id, **self.stores())
        # Failed or cancelled, the run recorded it, as a worker's outcome would be: the plan reads that.
        with contextlib.suppress(Exception):
            await run.run(handler, params, op_type=op_type)
        op = self.records.put(self.records.ops[op_id].model_copy(update={"parent_id": parent_id}))
        return ChildState(key=key, op_id=op_id, type=op_type.name, status=op.status, params=op.params,
                          result=op.result, error=op.error)

    def _ended(self, record: Operation, reduced: Reduced) -> Reduced:
        declared_result = reduced.result.model_dump(mode="json") if isinstance(reduced.result, BaseModel) \
            else reduced.result
        if reduced.document is not None:
            self.results.data[record.op_id] = reduced.document
        self.records.put(record.model_copy(update={
            "completed_at": datetime.now(UTC),
            **({"status": OpStatus.FAILED, "error": reduced.error} if reduced.error is not None else
               {"status": OpStatus.COMPLETED, "result": declared_result,
                "result_object": record.op_id if reduced.document is not None else None})}))
        return reduced
