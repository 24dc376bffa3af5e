"""What workers publish, folded into op records: progress updates and lifecycle events.

Each message the feed (``coordinator.feed``) delivers is decoded and checked here, then turned into
a transition of ``coordinator.lifecycle`` queued with the store; the commit is handed back so the
feed acknowledges the message once it is stored. Checked, since workers are not trusted:

- the subject's last token is the host whose key published it (nats-server allows a host no
  other); a report naming a worker whose lease another host wrote is refused;
- the artifacts an event names must have been written for its own host, op and attempt;
- the event that makes an attempt someone's (``started``, or an outcome before it) counts only
  from the worker the attempt's claim names;
- texts and documents are bounded here, once, not in the transition (which the store may apply
  again): what is cut is logged and counted.

Refusals of the transitions themselves come back as :class:`~coordinator.lifecycle.NoChange`; a
report from a worker or attempt that no longer owns the op is *fenced*: ignored, logged, counted.
A failure the worker calls retryable (``ktrdr.errors``) is retried as the op type's retry policy
allows (``OpType.retry``, through the dispatcher), which also offers the next attempt.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from nats.aio.msg import Msg

from coordinator import lifecycle
from coordinator.claims import ClaimWatch
from coordinator.lifecycle import Reporter, Retry
from coordinator.metrics import Metrics
from coordinator.operations import Applied, Change, Operations
from subjects import limits, names
from subjects.limits import bounded_text, json_size
from subjects.models import BadPayload, Operation, OpEvent, OpEventKind, OpStatus, Progress, ProgressUpdate, decode

log = logging.getLogger(__name__)

# How long a report waits for its claim to be delivered (ClaimWatch) before the claim is read instead.
CLAIM_WAIT_S = 0.05


class ReportFold:
    def __init__(self, *, ops: Operations, claims: ClaimWatch, host_of: Callable[[str], str | None],
                 read_claim: Callable[[str, int], Awaitable[str | None]], metrics: Metrics,
                 retry_of: Callable[[Operation], Retry | None] = lambda op: None,
                 on_retried: Callable[[Operation], None] = lambda op: None) -> None:
        self.ops = ops
        self.claims = claims
        self.host_of = host_of
        self.read_claim = read_claim
        self.metrics = metrics
        # A retryable failure: how the op's type retries it (the dispatcher's), and who offers the
        # next attempt once it is committed.
        self.retry_of = retry_of
        self.on_retried = on_retried
        # Per op with a claim check under way: resolved once its last change so far is queued.
        self._queued_gates: dict[str, asyncio.Future[None]] = {}

    def apply(self, msg: Msg) -> asyncio.Future[Any] | None:
        """Queue one progress update or event for its op record.

        Returns the commit to wait for, or None when there is nothing to apply (a malformed
        message, or one about another host's worker: logged, counted and acknowledged, never
        retried).
        """
        subject = msg.subject
        kind = names.OPS_PROGRESS_ALL if ".progress." in subject else names.OPS_EVENTS_ALL
        try:
            op_id = names.op_id_from_subject(subject)
            host = names.host_from_subject(subject)
            if kind == names.OPS_PROGRESS_ALL:
                update = decode(ProgressUpdate, msg.data)
                if update.op_id != op_id:
                    raise BadPayload(f"payload op_id {update.op_id} does not match subject")
                if not self._from_host(update.worker_id, host, subject, kind):
                    return None
                return self._in_order(op_id, lambda: self.progress_soon(update))
            event = decode(OpEvent, msg.data)
            if event.op_id != op_id:
                raise BadPayload(f"payload op_id {event.op_id} does not match subject")
            if not self._from_host(event.worker_id, host, subject, kind):
                return None
            if not self._own_artifacts(event, host, subject):
                return None
            current = self.ops.get(op_id)
            if (event.event is OpEventKind.STARTED or (current is not None and current.worker_id is None)) and (
                    self.claims.holder(op_id, event.attempt) != event.worker_id):
                # The event that makes an attempt someone's counts only from its claimant: not seen
                # claiming it (yet), so the claim is read first.
                return self._in_order(op_id, lambda: self.event_soon(event),
                                      check=lambda: self._claimant(event, subject))
            return self._in_order(op_id, lambda: self.event_soon(event))
        except (BadPayload, names.InvalidToken) as exc:
            self.metrics.rejected.labels(subject=kind, reason="invalid").inc()
            log.error("rejected message on %s: %s", bounded_text(subject, 200), bounded_text(str(exc), 500))
            return None

    # --- the transitions ------------------------------------------------------------------------

    def event_soon(self, event: OpEvent) -> asyncio.Future[Applied]:
        """Queue the event's transition of its op record; the future ends once it is committed."""
        change = self._event_change(event)

        def report(future: asyncio.Future[Applied]) -> None:
            if future.cancelled() or future.exception() is not None:
                return
            applied = future.result()
            if applied.record is None:
                self.metrics.rejected.labels(subject=names.OPS_EVENTS_ALL, reason="unknown operation").inc()
                log.warning("event %s for unknown operation %s", event.event, event.op_id)
                return
            refused = applied.refused
            if refused is not None and refused.fenced:
                self.metrics.fenced.labels(kind="event").inc()
                log.warning("fenced %s event of %s from %s attempt %d (owner: %s attempt %d)", event.event,
                            event.op_id, event.worker_id, event.attempt, applied.record.worker_id,
                            applied.record.attempt)
                return
            changed = applied.changed
            if changed is not None and changed.attempt == 1 and _starts(event, changed):
                self.metrics.dispatch_latency.labels(type=changed.type).observe(
                    max(0.0, (datetime.now(UTC) - changed.created_at).total_seconds()))
            elif (event.event is OpEventKind.FAILED and changed is not None and changed.status is OpStatus.PENDING
                  and applied.record.status is OpStatus.PENDING and applied.record.attempt == event.attempt + 1):
                self.on_retried(applied.record)

        future = self.ops.mutate_soon(event.op_id, change)
        future.add_done_callback(report)
        return future

    def _event_change(self, event: OpEvent) -> Change:
        """The event as a transition, its texts and documents bounded once here."""
        by = Reporter(worker_id=event.worker_id, attempt=event.attempt)
        at, kind = event.timestamp, event.event
        where = {"subject": names.OPS_EVENTS_ALL, "op_id": event.op_id}
        error = reason = None
        if kind is OpEventKind.CANCELLED:
            reason = self._bounded(event.error, limits.MAX_REASON_CHARS, what="cancel reason", **where)
        else:
            error = self._bounded(event.error, limits.MAX_ERROR_CHARS, what=f"{kind} error", **where)
        if kind is OpEventKind.COMPLETED and event.result is not None:
            size = json_size(event.result)
            if size > limits.MAX_INLINE_RESULT_BYTES:
                # Kept in the record it would crowd out everything else; a full result has its store.
                self.metrics.rejected.labels(subject=names.OPS_EVENTS_ALL, reason="too large").inc()
                log.error("operation %s: an inline result of %d bytes; failing it", event.op_id, size)
                kind = OpEventKind.FAILED
                error = (f"the worker's result was {size} bytes, over the {limits.MAX_INLINE_RESULT_BYTES} a "
                         "record keeps inline; a full result belongs in the results store")
        if kind is OpEventKind.STARTED:
            return lambda op: lifecycle.start(op, by, at=at)
        if kind is OpEventKind.INFO:
            # A worker's warning (JobContext.warn) rides in an info event's message.
            warning = (self._bounded(event.message, limits.MAX_ERROR_CHARS, what="warning", **where)
                       if event.message else None)
            info = event.context
            if info:
                size = json_size(info)
                if size > limits.MAX_INFO_BYTES:
                    self.metrics.rejected.labels(subject=names.OPS_EVENTS_ALL, reason="too large").inc()
                    log.warning("operation %s: info of %d bytes dropped", event.op_id, size)
                    info = {"dropped_info": bounded_text(
                        f"{size} bytes, over {limits.MAX_INFO_BYTES}: {', '.join(info)}", limits.MAX_ERROR_CHARS)}
            return lambda op: lifecycle.note(op, by, info=info, checkpoint=event.checkpoint, warning=warning)
        if kind is OpEventKind.COMPLETED:
            return lambda op: lifecycle.complete(op, by, at=at, result=event.result, result_object=event.result_object)
        if kind is OpEventKind.CANCELLED:
            return lambda op: lifecycle.cancelled(op, by, at=at, reason=reason)
        if kind is not event.event:  # a result too large: not the handler's failure
            return lambda op: lifecycle.fail(op, by, at=at, error=error)
        error_type = self._bounded(event.error_type, limits.MAX_ERROR_TYPE_CHARS, what="error type", **where)
        retryable = event.retryable
        return lambda op: lifecycle.fail(op, by, at=at, error=error, error_type=error_type, retryable=retryable,
                                         retry=self.retry_of(op) if retryable else None)

    def progress_soon(self, update: ProgressUpdate) -> asyncio.Future[Applied]:
        progress = Progress.model_validate(update.model_dump(include=set(Progress.model_fields)))
        where = {"subject": names.OPS_PROGRESS_ALL, "op_id": update.op_id}
        progress.message = self._bounded(progress.message, limits.MAX_PROGRESS_TEXT_CHARS,
                                         what="progress message", **where)
        progress.step = self._bounded(progress.step, limits.MAX_PROGRESS_TEXT_CHARS, what="progress step", **where)
        if progress.context and json_size(progress.context) > limits.MAX_PROGRESS_CONTEXT_BYTES:
            self.metrics.rejected.labels(subject=names.OPS_PROGRESS_ALL, reason="too large").inc()
            log.warning("operation %s: a progress context over %d bytes dropped", update.op_id,
                        limits.MAX_PROGRESS_CONTEXT_BYTES)
            progress.context = {}
        by = Reporter(worker_id=update.worker_id, attempt=update.attempt)

        def report(future: asyncio.Future[Applied]) -> None:
            if future.cancelled() or future.exception() is not None:
                return
            applied = future.result()
            if applied.record is None:
                self.metrics.rejected.labels(subject=names.OPS_PROGRESS_ALL, reason="unknown operation").inc()
            elif applied.refused is not None and applied.refused.fenced:
                self.metrics.fenced.labels(kind="progress").inc()

        future = self.ops.mutate_soon(update.op_id, lambda op: lifecycle.progress(op, by, progress=progress))
        future.add_done_callback(report)
        return future

    def _bounded(self, text: str | None, limit: int, *, subject: str, op_id: str, what: str) -> str | None:
        """``bounded_text``, logged and counted when it cuts: workers are not trusted to bound."""
        if text is None or len(text) <= limit:
            return text
        self.metrics.rejected.labels(subject=subject, reason="truncated").inc()
        log.warning("operation %s: %s of %d characters cut to %d", op_id, what, len(text), limit)
        return bounded_text(text, limit)

    # --- the checks -----------------------------------------------------------------------------

    def _from_host(self, worker_id: str, host: str, subject: str, kind: str) -> bool:
        owner = self.host_of(worker_id)
        if owner is None or owner == host:
            return True
        self.metrics.rejected.labels(subject=kind, reason="other host").inc()
        log.error("host %s reported on %s for worker %s, which is host %s's: refused", host, subject, worker_id, owner)
        return False

    def _own_artifacts(self, event: OpEvent, host: str, subject: str) -> bool:
        """Whether the artifacts an event names were written for its own host, op and attempt: only
        then is the writer the reporting host (no other key may write under its name)."""
        for name in (event.result_object, event.checkpoint):
            if not name:
                continue
            try:
                owner = names.artifact_owner(name)
            except names.InvalidToken:
                owner = None
            if owner != (host, event.op_id, event.attempt):
                self.metrics.rejected.labels(subject=names.OPS_EVENTS_ALL, reason="foreign artifact").inc()
                log.error("%s event on %s names the artifact %s, not one of host %s for %s attempt %d: refused",
                          event.event, subject, bounded_text(name, 200), host, event.op_id, event.attempt)
                return False
        return True

    def _in_order(self, op_id: str, queue: Callable[[], asyncio.Future[Any] | None], *,
                  check: Callable[[], Awaitable[bool]] | None = None) -> asyncio.Future[Any] | None:
        """Queue an op's change (``queue()`` queues it and returns its commit) in the order its
        messages arrived, behind the op's claim check under way, if any; ``check``: a claim check of
        its own, which the change must pass. A change waits for the one before it to be queued, not
        committed: changes queued together are written together.
        """
        ahead = self._queued_gates.get(op_id)
        if ahead is None and check is None:
            return queue()
        gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued_gates[op_id] = gate

        async def run() -> Any:
            try:
                if ahead is not None:
                    await asyncio.shield(ahead)
                commit = queue() if check is None or await check() else None
            finally:
                gate.set_result(None)
                if self._queued_gates.get(op_id) is gate:
                    del self._queued_gates[op_id]
            return None if commit is None else await commit

        return asyncio.ensure_future(run())

    async def _claimant(self, event: OpEvent, subject: str) -> bool:
        """Whether the event's worker holds the attempt's claim (it counts only from its claimant)."""
        holder = await self.claims.wait(event.op_id, event.attempt, CLAIM_WAIT_S)
        if holder is None:  # claimed before this coordinator started, or not delivered yet: read it
            holder = await self.read_claim(event.op_id, event.attempt)
        if holder == event.worker_id:
            return True
        self.metrics.rejected.labels(subject=names.OPS_EVENTS_ALL, reason="not the claimant").inc()
        log.error("%s event on %s from %s, but the claim of %s attempt %d is %s's: refused", event.event, subject,
                  event.worker_id, event.op_id, event.attempt, holder or "nobody")
        return False


def _starts(event: OpEvent, changed: Operation) -> bool:
    """Whether ``event`` is the one that made its attempt start: a ``started``, or the outcome of an
    attempt that ended within the worker's started delay (no ``started`` came before it)."""
    if event.event is OpEventKind.STARTED:
        return True
    if event.event is OpEventKind.INFO or not changed.status.terminal:
        return False
    attempt = lifecycle.current_attempt(changed)
    return attempt is not None and attempt.started_at is not None and attempt.started_at == attempt.ended_at
