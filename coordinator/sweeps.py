"""Parameter sweeps: a ``sweep`` parent op the coordinator runs itself, one ``backtesting`` child per
combination of its grid.

Children are ordinary queued jobs (``parent_id`` set), so every backtest worker takes some. The
parent's progress is derived from its children (percentage: their mean; steps: children finished);
once every child is terminal the completed ones are ranked by the chosen metric: the top ones go
in the parent's result, the full ranking in the ``results`` bucket under the parent's id.

Nothing lives only in memory: children have deterministic ids (``<parent>-<index>``), so on start
the manager re-derives every sweep from the op records, submits the children a crash left out,
and finishes sweeps whose children all ended while it was down. Cancelling the parent (answered by
``coordinator.cancel``) cancels every child that has not ended, through ``ops.<child>.cancel``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext

from coordinator.dispatcher import Dispatcher
from coordinator.operations import OperationExists, Operations
from ktrdr.backtest.sweep import combinations, rank
from ktrdr.results import put_result
from ktrdr.runtime.tasks import cancel_and_wait
from subjects import names
from subjects.limits import MAX_ERROR_CHARS, bounded_text
from subjects.models import CancelRequest, Operation, OpStatus, Progress, SubmitRequest
from subjects.params import SweepParams

log = logging.getLogger(__name__)

RANKING_FORMAT = "ktrdr.sweep.ranking/1"
# Metrics copied into each entry of the parent's (small) result beside the ranking metric.
SUMMARY_METRICS = ("total_return_pct", "sharpe_ratio", "max_drawdown_pct", "trades", "win_rate")


def child_id(parent_id: str, index: int) -> str:
    candidate = f"{parent_id}-{index}"
    if len(candidate) <= 64:
        return candidate
    # A long client-chosen parent id: a stable digest keeps the child id one valid token.
    return f"sweep-{hashlib.sha1(parent_id.encode()).hexdigest()[:16]}-{index}"


class SweepManager:
    def __init__(self, *, nc: Client, js: JetStreamContext, ops: Operations, dispatcher: Dispatcher,
                 refresh_s: float = 0.2) -> None:
        self.nc = nc
        self.js = js
        self.ops = ops
        self.dispatcher = dispatcher
        self.refresh_s = refresh_s
        self._children: dict[str, set[str]] = defaultdict(set)
        self._launching: set[str] = set()
        self._finishing: set[str] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._started = False
        ops.subscribe(self._on_change)

    # --- lifecycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Re-derive every sweep from the op records (after a restart some are half done)."""
        for op in self.ops.all():
            if op.parent_id:
                self._children[op.parent_id].add(op.op_id)
        self._started = True
        for op in list(self.ops.all()):
            if op.type != names.OP_SWEEP:
                continue
            if not op.status.terminal:
                self._spawn(self._launch(op.op_id))
            elif op.status is OpStatus.CANCELLED:
                self._spawn(self._cancel_children(op.op_id, op.cancel_reason or "sweep cancelled"))

    async def stop(self) -> None:
        self._started = False
        for handle in self._timers.values():
            handle.cancel()
        self._timers.clear()
        await cancel_and_wait(list(self._tasks), what="sweep task")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("sweep task failed", exc_info=task.exception())

    # --- reacting to op changes -------------------------------------------------------------

    def _on_change(self, before: Operation, after: Operation) -> None:
        if not self._started:
            return
        if after.parent_id:
            self._children[after.parent_id].add(after.op_id)
            parent = self.ops.get(after.parent_id)
            if parent is not None and parent.type == names.OP_SWEEP and parent.status is OpStatus.RUNNING:
                self._schedule_refresh(parent.op_id)
        if after.type != names.OP_SWEEP:
            return
        if after.status is OpStatus.PENDING and after.op_id not in self._launching:
            self._spawn(self._launch(after.op_id))
        elif after.status is OpStatus.CANCELLED and not before.status.terminal:
            self._spawn(self._cancel_children(after.op_id, after.cancel_reason or "sweep cancelled"))

    def _schedule_refresh(self, sweep_id: str) -> None:
        # Children report ~10 times a second each: fold them into the parent a few times a second.
        if sweep_id in self._timers:
            return
        loop = asyncio.get_running_loop()
        self._timers[sweep_id] = loop.call_later(self.refresh_s, self._fire_refresh, sweep_id)

    def _fire_refresh(self, sweep_id: str) -> None:
        self._timers.pop(sweep_id, None)
        self._spawn(self._refresh(sweep_id))

    # --- fan-out ----------------------------------------------------------------------------

    async def _launch(self, sweep_id: str) -> None:
        """Mark the sweep running and submit every child not yet recorded (idempotent)."""
        if sweep_id in self._launching:
            return
        self._launching.add(sweep_id)
        try:
            op = self.ops.get(sweep_id)
            if op is None or op.status.terminal:
                return
            params = SweepParams.model_validate(op.params)
            combos = combinations(params.grid)
            if op.status is OpStatus.PENDING:
                await self.ops.mutate(sweep_id, _started(len(combos)))
            for index, combo in enumerate(combos):
                parent = self.ops.get(sweep_id)
                if parent is None or parent.status.terminal:
                    return
                cid = child_id(sweep_id, index)
                if self.ops.get(cid) is not None:
                    continue
                request = SubmitRequest(type=names.OP_BACKTEST, params=params.child_params(combo),
                                        parent_id=sweep_id, op_id=cid)
                try:
                    await self.dispatcher.submit(request)
                except OperationExists:
                    pass
                except Exception as exc:
                    # The children submitted so far are cancelled through the parent's cascade.
                    await self.ops.mutate(sweep_id, _failed(f"could not submit backtest {cid}: {exc}"))
                    await self._cancel_children(sweep_id, "sweep failed")
                    return
                self._children[sweep_id].add(cid)
                parent = self.ops.get(sweep_id)
                if parent is not None and parent.status is OpStatus.CANCELLED:
                    # Cancelled while this child was being submitted: the cascade may have missed it.
                    await self._cancel(cid, parent.cancel_reason or "sweep cancelled")
            log.info("sweep %s: %d backtests submitted", sweep_id, len(combos))
        finally:
            self._launching.discard(sweep_id)
        await self._refresh(sweep_id)

    # --- aggregation and ranking --------------------------------------------------------------

    def _child_ops(self, sweep_id: str) -> list[Operation]:
        return [op for cid in self._children.get(sweep_id, ()) if (op := self.ops.get(cid)) is not None]

    async def _refresh(self, sweep_id: str) -> None:
        parent = self.ops.get(sweep_id)
        if parent is None or parent.status is not OpStatus.RUNNING:
            return
        total = len(combinations(SweepParams.model_validate(parent.params).grid))
        children = self._child_ops(sweep_id)
        ended = [c for c in children if c.status.terminal]
        if len(children) >= total and len(ended) == len(children) and sweep_id not in self._launching:
            await self._finish(sweep_id, parent, children)
            return
        progress = _aggregate(children, total)

        def update(op: Operation) -> bool | None:
            if op.status is not OpStatus.RUNNING:
                return False
            if op.progress is not None and (op.progress.percentage, op.progress.steps_done, op.progress.message) == (
                    progress.percentage, progress.steps_done, progress.message):
                return False
            op.progress = progress
            return None

        await self.ops.mutate(sweep_id, update)

    async def _finish(self, sweep_id: str, parent: Operation, children: list[Operation]) -> None:
        if sweep_id in self._finishing:
            return
        self._finishing.add(sweep_id)
        try:
            await self._rank_and_complete(sweep_id, parent, children)
        finally:
            self._finishing.discard(sweep_id)

    async def _rank_and_complete(self, sweep_id: str, parent: Operation, children: list[Operation]) -> None:
        params = SweepParams.model_validate(parent.params)
        grid_names = list(params.grid)
        children.sort(key=lambda c: c.op_id)

        def entry(c: Operation) -> dict[str, Any]:
            overrides = c.params.get("parameters", {})
            return {"op_id": c.op_id, "parameters": {k: overrides.get(k) for k in grid_names},
                    "metrics": (c.result or {}).get("metrics", {})}

        completed = [entry(c) for c in children if c.status is OpStatus.COMPLETED]
        ranked = [{"rank": i + 1, **r} for i, r in
                  enumerate(rank(completed, params.metric, descending=params.ranks_descending))]
        failed = [{"op_id": c.op_id, "parameters": entry(c)["parameters"], "error": c.error}
                  for c in children if c.status is OpStatus.FAILED]
        cancelled = sum(c.status is OpStatus.CANCELLED for c in children)
        doc = {"format": RANKING_FORMAT, "sweep": sweep_id, "metric": params.metric,
               "descending": params.ranks_descending, "grid": params.grid, "combinations": len(children),
               "completed": len(completed), "failed": failed, "cancelled": cancelled, "ranking": ranked}
        await put_result(self.js, sweep_id, json.dumps(doc, separators=(",", ":")).encode(),
                         description=f"sweep ranking by {params.metric}")
        top = [{"rank": r["rank"], "op_id": r["op_id"], "parameters": r["parameters"],
                params.metric: r["metrics"].get(params.metric),
                **{k: r["metrics"].get(k) for k in SUMMARY_METRICS if k != params.metric}}
               for r in ranked[: params.top]]
        summary = {"metric": params.metric, "descending": params.ranks_descending,
                   "combinations": len(children), "completed": len(completed), "failed": len(failed),
                   "cancelled": cancelled, "best": top[0] if top else None, "top": top}
        first_error = failed[0]["error"] if failed else "cancelled"

        def complete(op: Operation) -> bool | None:
            if op.status is not OpStatus.RUNNING:
                return False
            now = datetime.now(UTC)
            op.completed_at = now
            op.progress = _aggregate(children, len(children))
            op.progress.percentage = 100.0
            if completed:
                op.status, op.result = OpStatus.COMPLETED, summary
            else:
                op.status = OpStatus.FAILED
                op.error = bounded_text(f"none of the {len(children)} backtests completed; first error: {first_error}",
                                        MAX_ERROR_CHARS)
            return None

        done = await self.ops.mutate(sweep_id, complete)
        if done is not None and done.status.terminal:
            log.info("sweep %s %s: %d of %d completed", sweep_id, done.status.value, len(completed), len(children))

    # --- cancellation -------------------------------------------------------------------------

    async def _cancel_children(self, sweep_id: str, reason: str) -> None:
        pending = [c.op_id for c in self._child_ops(sweep_id) if not c.status.terminal]
        if not pending:
            return
        log.info("sweep %s cancelled: cancelling %d child operation(s)", sweep_id, len(pending))
        limit = asyncio.Semaphore(64)

        async def one(cid: str) -> None:
            async with limit:
                await self._cancel(cid, f"sweep {sweep_id} cancelled: {reason}")

        await asyncio.gather(*(one(cid) for cid in pending))

    async def _cancel(self, op_id: str, reason: str) -> None:
        # The normal path: queued children are claimed by the coordinator, running ones stopped.
        try:
            await self.nc.request(names.ops_cancel(op_id), CancelRequest(reason=reason).encode(), timeout=5.0)
        except Exception as exc:
            log.warning("cancel of sweep child %s got no answer: %s", op_id, exc)


def _started(total: int):  # type: ignore[no-untyped-def]
    def change(op: Operation) -> bool | None:
        if op.status is not OpStatus.PENDING:
            return False
        op.status, op.started_at = OpStatus.RUNNING, datetime.now(UTC)
        op.progress = Progress(percentage=0.0, step="backtests", steps_done=0, steps_total=total,
                               message=f"0 of {total} backtests finished")
        op.info["children"] = total
        return None
    return change


def _failed(error: str):  # type: ignore[no-untyped-def]
    def change(op: Operation) -> bool | None:
        if op.status.terminal:
            return False
        op.status, op.error, op.completed_at = OpStatus.FAILED, error, datetime.now(UTC)
        return None
    return change


def _aggregate(children: list[Operation], total: int) -> Progress:
    """Percentage: the mean over every combination (children not yet submitted count 0)."""
    pct = 0.0
    counts = {s: 0 for s in OpStatus}
    for c in children:
        counts[c.status] += 1
        if c.status.terminal:
            pct += 100.0
        elif c.progress is not None and c.progress.percentage is not None:
            pct += c.progress.percentage
    ended = counts[OpStatus.COMPLETED] + counts[OpStatus.FAILED] + counts[OpStatus.CANCELLED]
    message = f"{ended} of {total} backtests finished"
    if counts[OpStatus.FAILED] or counts[OpStatus.CANCELLED]:
        message += f" ({counts[OpStatus.FAILED]} failed, {counts[OpStatus.CANCELLED]} cancelled)"
    return Progress(percentage=round(pct / max(total, 1), 2), step="backtests", steps_done=ended,
                    steps_total=total, items_done=ended, items_total=total, message=message,
                    context={"running": counts[OpStatus.RUNNING], "pending": counts[OpStatus.PENDING],
                             "completed": counts[OpStatus.COMPLETED], "failed": counts[OpStatus.FAILED],
                             "cancelled": counts[OpStatus.CANCELLED]})
