"""The coordinator's side of ``ops.<id>.cancel``.

Only the coordinator subscribes to ``ops.*.cancel``. It answers unknown ids and finished ops, and
cancels queued ops by taking their claim so no worker ever starts them. A claimed op's request
goes on to the one worker that holds the claim, on that worker's own subject
(``worker.cancel.<host>.<worker>.<op>``) with the requester's reply subject, so the worker answers
the requester directly; a fleet of N workers costs one delivery per cancel, not N. The request is
also recorded (so a lost worker's op ends cancelled instead of being retried), and the coordinator
answers itself only if the worker has not within ``cancel_fallback_reply_s``: the first reply is
the one a requester sees.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from coordinator import lifecycle
from coordinator.dispatcher import Dispatcher
from coordinator.metrics import Metrics
from coordinator.operations import Change, Operations
from coordinator.parents import parent_type
from coordinator.registry import WorkerRegistry
from subjects import names
from subjects.models import BadPayload, CancelReply, CancelRequest, Operation, OpStatus, decode

log = logging.getLogger(__name__)


class CancelResponder:
    def __init__(self, *, nc: Client, ops: Operations, dispatcher: Dispatcher, registry: WorkerRegistry,
                 metrics: Metrics, fallback_reply_s: float) -> None:
        self.nc = nc
        self.ops = ops
        self.dispatcher = dispatcher
        self.registry = registry
        self.metrics = metrics
        self.fallback_reply_s = fallback_reply_s
        self._sub: Subscription | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(names.OPS_CANCEL_ALL, cb=self._on_msg)

    async def stop(self) -> None:
        if self._sub is not None:
            await self._sub.unsubscribe()
            self._sub = None
        for task in list(self._tasks):
            task.cancel()

    async def _on_msg(self, msg: Msg) -> None:
        task = asyncio.create_task(self._handle_logged(msg))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handle_logged(self, msg: Msg) -> None:
        try:
            await self._handle(msg)
        except Exception as exc:
            # JetStream did not answer in time (an election, a server overloaded): one line, not a task's
            # traceback. No reply: the op's worker may yet answer, and a requester's retry is safe.
            log.warning("cancel request on %s not handled: %s", msg.subject[:200], str(exc) or type(exc).__name__)

    async def _reply(self, msg: Msg, reply: CancelReply) -> None:
        if msg.reply:
            await msg.respond(reply.encode())

    async def _handle(self, msg: Msg) -> None:
        try:
            op_id = names.op_id_from_subject(msg.subject)
            request = decode(CancelRequest, msg.data) if msg.data.strip() else CancelRequest()
        except (BadPayload, names.InvalidToken) as exc:
            self.metrics.rejected.labels(subject=names.OPS_CANCEL_ALL, reason="invalid").inc()
            log.error("rejected cancel request on %s: %s", msg.subject, exc)
            op_id = msg.subject.split(".")[1] if msg.subject.count(".") == 2 else "?"
            await self._reply(msg, CancelReply(op_id=op_id, accepted=False,
                                               message=f"invalid cancel request: {exc}"))
            return
        if request.truncated_from is not None:
            # Cut on decoding (CancelRequest): a reason of any length fits a request, not a record.
            self.metrics.rejected.labels(subject=names.OPS_CANCEL_ALL, reason="truncated").inc()
            log.warning("cancel request for %s: a reason of %d characters cut to %d", op_id,
                        request.truncated_from, len(request.reason))
        op = self.ops.get(op_id)
        if op is None:
            await self._reply(msg, CancelReply(op_id=op_id, accepted=False,
                                               message=f"unknown operation {op_id}"))
            return
        if op.status.terminal:
            await self._reply(msg, self._finished(op))
            return
        if parent_type(op) is not None:
            # No worker runs it: the coordinator ends it here, and its runner (coordinator.parents)
            # cancels the children through this same subject.
            done = (await self.ops.mutate(op_id, _cancel(request.reason, op.attempt))).record
            await self._reply(msg, CancelReply(
                op_id=op_id, accepted=True, status=done.status if done else OpStatus.CANCELLED,
                message="cancelled; its child operations are being cancelled"))
            return
        if op.status is OpStatus.PENDING and (done := await self._cancel_queued(op, request.reason)):
            await self._reply(msg, CancelReply(
                op_id=op_id, accepted=True, status=done.status, message="cancelled before any worker started it"))
            return
        # A worker holds the claim. Record the request; the worker answers and stops the work.
        holder = op.worker_id or await self.dispatcher.claim_holder(op_id, op.attempt)
        if not self.registry.alive(holder):
            done = (await self.ops.mutate(op_id, _cancel(request.reason, op.attempt, holder))).record
            await self._reply(msg, CancelReply(
                op_id=op_id, accepted=True, status=done.status if done else OpStatus.CANCELLED,
                message=f"cancelled; its worker {holder} holds no lease"))
            return

        host = self.registry.host_of(holder) if holder else None
        if holder and host:
            # The worker decodes the request again: the request as sent, not as decoded here.
            await self.nc.publish(names.worker_cancel(host, holder, op_id), msg.data, reply=msg.reply or "")
            self.metrics.cancels_forwarded.inc()

        await self.ops.mutate(op_id, lambda o: lifecycle.request_cancel(o, reason=request.reason))
        await asyncio.sleep(self.fallback_reply_s)
        now = self.ops.get(op_id) or op
        if now.status.terminal:
            await self._reply(msg, self._finished(now))
        else:
            await self._reply(msg, CancelReply(
                op_id=op_id, accepted=True, status=now.status,
                message=f"cancel recorded; waiting for worker {holder} to stop the operation"))

    async def cancel_queued(self, op_id: str, reason: str) -> bool:
        """Cancel ``op_id`` here, with no request on ``ops.<id>.cancel``, if it is queued: what the
        parent runner does for a parent's children. A request there reaches every worker (each holds
        a plain subscription on ``ops.*.cancel``), so a sweep's queued blocks cancelled that way cost
        a message to every worker of the fleet each, for an answer the coordinator gives itself
        (``bench/fleet.py``). False, and nothing done, for anything else: an op a worker has claimed
        (its worker must be told), a parent, an unknown or ended op."""
        op = self.ops.get(op_id)
        if op is None or op.status is not OpStatus.PENDING or parent_type(op) is not None:
            return False
        return await self._cancel_queued(op, reason) is not None

    async def _cancel_queued(self, op: Operation, reason: str) -> Operation | None:
        """Take the queued attempt's claim, so that no worker ever starts it, and end its record;
        None if a worker has claimed it first."""
        if not await self.dispatcher.claim_for_coordinator(op.op_id, op.attempt):
            return None
        done = (await self.ops.mutate(op.op_id, _cancel(reason, op.attempt))).record
        log.info("cancelled queued operation %s: %s", op.op_id, reason)
        return done or op.model_copy(update={"status": OpStatus.CANCELLED})

    @staticmethod
    def _finished(op: Operation) -> CancelReply:
        return CancelReply(op_id=op.op_id, accepted=False, status=op.status,
                           message=f"operation {op.op_id} already {op.status.value}")


def _cancel(reason: str, attempt: int, holder: str | None = None) -> Change:
    return lambda op: lifecycle.cancel(op, attempt=attempt, reason=reason, at=datetime.now(UTC), holder=holder)
