"""The parent-operation runner: runs every operation type whose route is the coordinator.

A parent type supplies its plan (``ktrdr.optypes.parent``): which children to run now, and how to
reduce their results at the end. The runner owns the rest, the same for every such type:

- **child ids**: ``<parent>-<key>`` (a digest of the parent id stands in when that is too long),
  so a child is found again from its id alone;
- **stages**: the plan's current stage is submitted (children already recorded are skipped); once
  every child of it has ended, the plan is asked again, with their results, for the next. A child
  that fails or is cancelled has the plan asked at once (it may give up early); completions only
  count towards the stage (asking a 10,000-child sweep's plan after each would cost more than the
  backtests);
- **progress**: the mean of the children's percentages over the stage's expected total, folded
  into the parent a few times a second;
- **cancel**: cancelling the parent (answered by ``coordinator.cancel``) cancels every child that
  has not ended: a queued one here (its claim taken), any other through ``ops.<child>.cancel``
  (a request every worker receives), and a child that is itself a parent passes it on;
  a parent that fails cancels its children the same way;
- **retries**: a child is an ordinary operation, retried on a lost worker like any other;
- **absorbing**: a plan that can begin its reduction child by child (``absorb``) has each child
  absorbed as it completes, while its siblings still run; the answers are only a head start, held
  in memory until the parent ends, and ``reduce`` works out whatever is missing;
- **restart**: nothing else lives only in memory. On start every unfinished parent is planned again
  from the records: children a crash left out are submitted, and a parent whose children all
  ended meanwhile is reduced.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError

from coordinator import lifecycle
from coordinator.dispatcher import Dispatcher
from coordinator.operations import OperationExists, Operations
from coordinator.registry import WorkerRegistry
from ktrdr.data.shared import data_bucket, object_name
from ktrdr.data.store import bars_from_bytes
from ktrdr.optypes import OpType, UnknownOpType, op_type
from ktrdr.optypes.parent import ChildState, Fail, Ready, Reduced, Stage, absorber
from ktrdr.results import get_result, put_result
from ktrdr.runtime.tasks import cancel_and_wait
from subjects import names
from subjects.models import CancelRequest, Operation, OpStatus, Progress, SubmitRequest
from subjects.names import COORDINATOR_HOST

log = logging.getLogger(__name__)

# At most this many child submissions or cancels in flight per parent.
FAN_OUT = 64


def child_prefix(parent_id: str) -> str:
    # Keys are at most 24 characters: the id stays one 64-character token.
    if len(parent_id) + 1 + 24 <= 64:
        return parent_id
    return "p" + hashlib.sha1(parent_id.encode()).hexdigest()[:20]


def child_op_id(parent_id: str, key: str) -> str:
    return f"{child_prefix(parent_id)}-{key}"


def child_key(parent_id: str, child_id: str) -> str | None:
    prefix = child_prefix(parent_id) + "-"
    return child_id[len(prefix):] if child_id.startswith(prefix) else None


def parent_type(op: Operation) -> OpType[Any, Any] | None:
    """The declaration of ``op``'s type when the coordinator runs it, else None."""
    try:
        declared = op_type(op.type)
    except UnknownOpType:
        return None
    return declared if declared.on_coordinator else None


class JetStreamEnv:
    """What plans read (``ktrdr.optypes.parent.ParentEnv``), from the shared stores."""

    def __init__(self, *, js: JetStreamContext, op_id: str, registry: WorkerRegistry, ops: Operations,
                 absorbing: Mapping[str, asyncio.Task[Any]] | None = None) -> None:
        self.js = js
        self.op_id = op_id
        self.registry = registry
        self.ops = ops
        self.absorbing = absorbing or {}

    def worker_slots(self, capability: str) -> int:
        return sum(w.slots for w in self.registry.with_capability(capability))

    async def result(self, op_id: str) -> bytes | None:
        """The result the op's record names (the artifact its claimant reported)."""
        op = self.ops.get(op_id)
        return None if op is None else await get_result(self.js, op)

    async def absorbed(self, op_id: str) -> Any:
        task = self.absorbing.get(op_id)
        if task is None:
            return None
        # Waited for, not awaited: a reduction cancelled meanwhile must not cancel the absorbing.
        await asyncio.wait({task})
        return None if task.cancelled() or task.exception() is not None else task.result()

    async def bar_index(self, symbol: str, timeframe: str, start: Any, end: Any) -> pd.DatetimeIndex:
        name = object_name(symbol, timeframe)
        try:
            bucket = await data_bucket(self.js)
            data = (await bucket.get(name)).data or b""
        except (BucketNotFoundError, ObjectNotFoundError, NotFoundError):
            raise LookupError(f"no {symbol} {timeframe} dataset in the data store: import it (`ktrdr data "
                              "import`) or make some (`ktrdr data synth`)") from None
        # Parsing years of minute bars is CPU work: off the event loop.
        bars = await asyncio.to_thread(bars_from_bytes, data, source=f"object {names.DATA_OBJECTS}/{name}")
        index = pd.DatetimeIndex(bars.index)
        if start is not None:
            index = index[index >= pd.Timestamp(start)]
        if end is not None:
            index = index[index <= pd.Timestamp(end)]
        return index


class ParentRunner:
    def __init__(self, *, nc: Client, js: JetStreamContext, ops: Operations, dispatcher: Dispatcher,
                 refresh_s: float = 0.2) -> None:
        self.nc = nc
        self.ops = ops
        self.dispatcher = dispatcher
        self.refresh_s = refresh_s
        self.js = js
        self._children: dict[str, set[str]] = defaultdict(set)
        self._stage: dict[str, Stage] = {}
        self._locks: defaultdict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._again: set[str] = set()
        self._replan: set[str] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # Children absorbed or being absorbed, by parent and child id (``ktrdr.optypes.parent``).
        self._absorbing: dict[str, dict[str, asyncio.Task[Any]]] = {}
        self._started = False
        # Set by the coordinator (CancelResponder.cancel_queued): cancels a queued child without a
        # request on ops.<child>.cancel; None, every child is cancelled through that subject.
        self.cancel_queued: Callable[[str, str], Awaitable[bool]] | None = None
        ops.subscribe(self._on_change)

    # --- lifecycle ------------------------------------------------------------------------

    async def run(self) -> None:
        await self.start()

    async def start(self) -> None:
        """Pick every parent up again from the records (after a restart some are half done)."""
        for op in self.ops.all():
            if op.parent_id:
                self._children[op.parent_id].add(op.op_id)
        self._started = True
        for op in list(self.ops.all()):
            if parent_type(op) is None:
                continue
            if not op.status.terminal:
                # Its children that ended long ago are no longer held in memory: the index has them.
                self._children[op.op_id].update(child.op_id for child in self.ops.children(op.op_id))
                self._advance_soon(op.op_id)
            elif op.status in (OpStatus.CANCELLED, OpStatus.FAILED):
                self._spawn(self._cancel_children(op.op_id, _why_ended(op)))

    async def stop(self) -> None:
        self._started = False
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        absorbing = [task for tasks in self._absorbing.values() for task in tasks.values()]
        self._absorbing.clear()
        await cancel_and_wait(list(self._tasks) + absorbing, what="parent task")

    async def __aenter__(self) -> ParentRunner:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("parent task failed", exc_info=task.exception())

    # --- reacting to op changes -------------------------------------------------------------

    def _on_change(self, before: Operation, after: Operation) -> None:
        if not self._started:
            return
        if after.parent_id:
            self._children[after.parent_id].add(after.op_id)
            parent = self.ops.get(after.parent_id)
            if parent is not None and parent.status is OpStatus.RUNNING and parent_type(parent) is not None:
                if after.status is OpStatus.COMPLETED and before.status is not OpStatus.COMPLETED:
                    self._absorb(parent, after)
                if after.status in (OpStatus.FAILED, OpStatus.CANCELLED) and not before.status.terminal:
                    # A child that did not complete may change the plan before its stage ends.
                    self._replan.add(parent.op_id)
                if after.status.terminal and not before.status.terminal:
                    # It may be the stage's last: the next stage (or the outcome) should not wait for
                    # the progress timer, which only folds running children's reports.
                    self._spawn(self._refresh(parent.op_id))
                else:
                    self._schedule_refresh(parent.op_id)
        if parent_type(after) is None:
            return
        if after.status is OpStatus.PENDING:
            self._advance_soon(after.op_id)
        elif after.status.terminal:
            self._forget_absorbed(after.op_id)
        if after.status in (OpStatus.CANCELLED, OpStatus.FAILED) and not before.status.terminal:
            self._stage.pop(after.op_id, None)
            self._spawn(self._cancel_children(after.op_id, _why_ended(after)))

    def _absorb(self, parent: Operation, child: Operation) -> None:
        declared = parent_type(parent)
        plan = None if declared is None else absorber(declared.parent)
        key = child_key(parent.op_id, child.op_id)
        if plan is None or declared is None or key is None:
            return
        state = ChildState(key=key, op_id=child.op_id, type=child.type, status=child.status, params=child.params,
                           result=child.result, error=child.error)
        task = asyncio.create_task(plan.absorb(declared.parse(parent.params), state, self._env(parent.op_id)),
                                   name=f"absorb-{child.op_id}")
        task.add_done_callback(_absorbed)
        self._absorbing.setdefault(parent.op_id, {})[child.op_id] = task

    def _forget_absorbed(self, parent_id: str) -> None:
        for task in self._absorbing.pop(parent_id, {}).values():
            task.cancel()

    def _schedule_refresh(self, parent_id: str) -> None:
        # Children report ~10 times a second each: fold them into the parent a few times a second.
        if parent_id in self._timers:
            return
        loop = asyncio.get_running_loop()
        self._timers[parent_id] = loop.call_later(self.refresh_s, self._fire_refresh, parent_id)

    def _fire_refresh(self, parent_id: str) -> None:
        self._timers.pop(parent_id, None)
        self._spawn(self._refresh(parent_id))

    async def _refresh(self, parent_id: str) -> None:
        stage = self._stage.get(parent_id)
        replan = parent_id in self._replan
        self._replan.discard(parent_id)
        if stage is None or replan or self._stage_ended(parent_id, stage):
            await self._advance(parent_id)
        else:
            await self._show_progress(parent_id, stage)

    def _advance_soon(self, parent_id: str) -> None:
        self._spawn(self._advance(parent_id))

    # --- planning ---------------------------------------------------------------------------

    async def _advance(self, parent_id: str) -> None:
        """Plan the parent from its recorded children and act on the answer; one at a time per
        parent (a request while one runs makes it go round once more)."""
        lock = self._locks[parent_id]
        if lock.locked():
            self._again.add(parent_id)
            return
        async with lock:
            while True:
                self._again.discard(parent_id)
                try:
                    await self._step(parent_id)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.exception("parent %s: planning failed", parent_id)
                    await self._fail(parent_id, f"planning failed: {type(exc).__name__}: {exc}")
                if parent_id not in self._again:
                    break

    async def _step(self, parent_id: str) -> None:
        op = self.ops.get(parent_id)
        declared = None if op is None else parent_type(op)
        if op is None or declared is None or op.status.terminal:
            return
        assert declared.parent is not None
        params = declared.parse(op.params)
        if op.status is OpStatus.PENDING:
            try:
                prepared = await declared.parent.prepare(params, self._env(parent_id))
            except Exception as exc:
                await self._fail(parent_id, f"{type(exc).__name__}: {exc}" if not str(exc) else str(exc))
                return
            op = (await self.ops.mutate(parent_id, lambda o: lifecycle.start_parent(
                o, plan=prepared, at=datetime.now(UTC)))).record
            if op is None or op.status is not OpStatus.RUNNING:
                return
        prepared = op.info.get("plan") or {}
        seen: frozenset[str] | None = None
        while True:
            children = self._states(parent_id)
            decision = declared.parent.plan(params, prepared, children)
            if isinstance(decision, Fail):
                await self._fail(parent_id, decision.error)
                return
            if isinstance(decision, Ready):
                last = self._stage.pop(parent_id, None)
                await self._complete(parent_id, declared, params, prepared, children, last)
                return
            assert isinstance(decision, Stage)
            self._stage[parent_id] = decision
            keys = frozenset(c.key for c in decision.children)
            if not await self._submit_missing(parent_id, decision):
                return
            if not self._stage_ended(parent_id, decision):
                await self._show_progress(parent_id, decision)
                return
            # Every child of this stage had already ended (a restart): ask for the next one.
            if keys == seen:
                await self._fail(parent_id, f"the {declared.name} plan repeats stage {decision.name!r} "
                                            "whose children have all ended")
                return
            seen = keys

    def _env(self, parent_id: str) -> JetStreamEnv:
        return JetStreamEnv(js=self.js, op_id=parent_id, registry=self.dispatcher.registry, ops=self.ops,
                            absorbing=self._absorbing.get(parent_id))

    def _states(self, parent_id: str) -> dict[str, ChildState]:
        states: dict[str, ChildState] = {}
        for cid in self._children.get(parent_id, ()):
            child = self.ops.get(cid)
            key = child_key(parent_id, cid)
            if child is None or key is None:
                continue
            states[key] = ChildState(key=key, op_id=cid, type=child.type, status=child.status,
                                     params=child.params, result=child.result, error=child.error)
        return states

    def _stage_ended(self, parent_id: str, stage: Stage) -> bool:
        for child in stage.children:
            op = self.ops.get(child_op_id(parent_id, child.key))
            if op is None or not op.status.terminal:
                return False
        return True

    async def _submit_missing(self, parent_id: str, stage: Stage) -> bool:
        """Submit the stage's children not yet recorded; False if the parent ended meanwhile."""
        missing = [c for c in stage.children if self.ops.get(child_op_id(parent_id, c.key)) is None]
        if not missing:
            return True
        limit = asyncio.Semaphore(FAN_OUT)
        failures: list[str] = []

        async def one(child: Any) -> None:
            async with limit:
                parent = self.ops.get(parent_id)
                if parent is None or parent.status.terminal or failures:
                    return
                cid = child_op_id(parent_id, child.key)
                request = SubmitRequest(type=child.type.name, params=child.type.dump(child.params),
                                        parent_id=parent_id, op_id=cid)
                try:
                    await self.dispatcher.submit(request, admitted=True)
                except OperationExists:
                    pass
                except Exception as exc:
                    failures.append(f"could not submit {child.type.name} {cid}: {exc}")
                    return
                self._children[parent_id].add(cid)
                parent = self.ops.get(parent_id)
                if parent is not None and parent.status is OpStatus.CANCELLED:
                    # Cancelled while this child was being submitted: the cascade may have missed it.
                    await self._cancel(cid, _why_ended(parent))

        await asyncio.gather(*(one(c) for c in missing))
        if failures:
            await self._fail(parent_id, failures[0])
            return False
        log.info("parent %s: %d child operation(s) submitted for %s", parent_id, len(missing), stage.name)
        parent = self.ops.get(parent_id)
        return parent is not None and not parent.status.terminal

    # --- progress and outcome -----------------------------------------------------------------

    async def _show_progress(self, parent_id: str, stage: Stage) -> None:
        parent = self.ops.get(parent_id)
        declared = None if parent is None else parent_type(parent)
        if parent is None or declared is None or parent.status is not OpStatus.RUNNING:
            return
        assert declared.parent is not None
        progress = _aggregate(self._child_ops(parent_id), stage, declared.parent.unit)
        await self.ops.mutate(parent_id, lambda op: lifecycle.parent_progress(op, progress=progress,
                                                                              children=stage.total))

    def _child_ops(self, parent_id: str) -> list[Operation]:
        return [op for cid in self._children.get(parent_id, ()) if (op := self.ops.get(cid)) is not None]

    async def _complete(self, parent_id: str, declared: OpType[Any, Any], params: Any,
                        prepared: Mapping[str, Any], children: dict[str, ChildState], last: Stage | None) -> None:
        assert declared.parent is not None
        reduced: Reduced = await declared.parent.reduce(params, prepared, children, self._env(parent_id))
        written = None
        if reduced.document is not None:
            record = self.ops.get(parent_id)
            written = await put_result(self.js, reduced.document, host=COORDINATOR_HOST, op_id=parent_id,
                                       attempt=record.attempt if record is not None else 1,
                                       description=reduced.description or f"{declared.name} {parent_id}")
        result = declared.result_dict(reduced.result)
        child_ops = self._child_ops(parent_id)
        ended = sum(c.status.terminal for c in child_ops)
        progress = _aggregate(child_ops, Stage(name="done", children=(), total=ended,
                                               items=last.items if last else None,
                                               items_type=last.items_type if last else None),
                              declared.parent.unit)
        done = (await self.ops.mutate(parent_id, lambda op: lifecycle.conclude(
            op, at=datetime.now(UTC), progress=progress, result=result, error=reduced.error,
            result_object=written.name if written is not None else None))).record
        if done is not None and done.status.terminal:
            log.info("%s %s %s: %d child operation(s)", declared.name, parent_id, done.status.value, ended)

    async def _fail(self, parent_id: str, error: str) -> None:
        done = (await self.ops.mutate(parent_id, lambda op: lifecycle.fail_parent(
            op, error=error, at=datetime.now(UTC)))).record
        if done is not None and done.status is OpStatus.FAILED:
            log.warning("parent %s failed: %s", parent_id, error)
        # The change listener cascades to the children that have not ended.

    # --- cancellation -------------------------------------------------------------------------

    async def _cancel_children(self, parent_id: str, reason: str) -> None:
        pending = [c.op_id for c in self._child_ops(parent_id) if not c.status.terminal]
        if not pending:
            return
        log.info("parent %s ended: cancelling %d child operation(s)", parent_id, len(pending))
        limit = asyncio.Semaphore(FAN_OUT)

        async def one(cid: str) -> None:
            async with limit:
                await self._cancel(cid, reason)

        await asyncio.gather(*(one(cid) for cid in pending))

    async def _cancel(self, op_id: str, reason: str) -> None:
        # A queued child is cancelled here (``coordinator.cancel``: its claim taken, so no worker
        # starts it): through ``ops.<child>.cancel`` each would be a message to every worker of the
        # fleet. A running child is stopped by its worker, which only that subject reaches.
        if self.cancel_queued is not None:
            try:
                if await self.cancel_queued(op_id, reason):
                    return
            except Exception as exc:
                log.warning("cancel of queued child %s failed (%s); asking over NATS", op_id, exc)
        try:
            await self.nc.request(names.ops_cancel(op_id), CancelRequest(reason=reason).encode(), timeout=5.0)
        except Exception as exc:
            log.warning("cancel of child %s got no answer: %s", op_id, exc)


def _absorbed(task: asyncio.Task[Any]) -> None:
    # The reduction works out itself what an absorb failed to: worth a line, not a failure.
    if not task.cancelled() and task.exception() is not None:
        log.warning("%s failed; the reduction does it again: %r", task.get_name(), task.exception())


def _why_ended(parent: Operation) -> str:
    """The reason a parent's children are cancelled with: ``sweep <id> cancelled: <reason>``."""
    if parent.status is OpStatus.FAILED:
        return f"{parent.type} {parent.op_id} failed: {parent.error or 'no reason given'}"
    return f"{parent.type} {parent.op_id} cancelled: {parent.cancel_reason or 'no reason given'}"


def _aggregate(children: list[Operation], stage: Stage, unit: str) -> Progress:
    """Percentage: the mean over the stage's expected total (children not yet submitted count 0)."""
    total = max(stage.total, len(children))
    pct = 0.0
    counts = {s: 0 for s in OpStatus}
    for c in children:
        counts[c.status] += 1
        if c.status.terminal:
            pct += 100.0
        elif c.progress is not None and c.progress.percentage is not None:
            pct += c.progress.percentage
    ended = counts[OpStatus.COMPLETED] + counts[OpStatus.FAILED] + counts[OpStatus.CANCELLED]
    message = f"{ended} of {total} {unit} finished"
    items_done = None
    if stage.items is not None:
        items_done = 0
        for c in children:
            if c.type == stage.items_type and c.progress is not None:
                items_done += (c.progress.items_total or 0) if c.status.terminal else (c.progress.items_done or 0)
        message = f"{items_done} of {stage.items} {unit} finished"
    if counts[OpStatus.FAILED] or counts[OpStatus.CANCELLED]:
        message += f" ({counts[OpStatus.FAILED]} failed, {counts[OpStatus.CANCELLED]} cancelled)"
    if stage.name != unit and stage.name != "done":
        message += f"; {stage.name}"
    return Progress(percentage=round(pct / max(total, 1), 2), step=stage.name, steps_done=ended,
                    steps_total=total, items_done=ended if items_done is None else items_done,
                    items_total=total if stage.items is None else stage.items, message=message,
                    context={"running": counts[OpStatus.RUNNING], "pending": counts[OpStatus.PENDING],
                             "completed": counts[OpStatus.COMPLETED], "failed": counts[OpStatus.FAILED],
                             "cancelled": counts[OpStatus.CANCELLED]})
