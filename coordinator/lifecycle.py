"""Every change an operation's record goes through, as pure functions of the record.

A transition takes the record as committed and answers the record as it should be, or
:class:`NoChange` saying why it stays as it is. None of them reads a clock, a bucket or the worker
registry itself (the caller passes the time, and what it chose or, for a retry, how to choose where
the next attempt is offered) and none changes the record it is given:
the committed record is shared with every reader of the mirror, and the store may apply the same
change again to a newer record when another writer won a compare-and-set.

:data:`TRANSITIONS` is the one table of the statuses each transition starts from and the status it
leads to; every transition checks it before its own guards (the attempt it is about, the worker
that reports). Who asks for which:

- a worker's reports (``coordinator.fold``): :func:`start`, :func:`note`, :func:`progress`,
  :func:`complete`, :func:`fail` (a retryable failure retried as the type's policy allows),
  :func:`cancelled`, all fenced to the attempt that owns the op;
- the dispatcher: :func:`lose_worker` (retry, or cancel or fail when no retry is due),
  :func:`undeliverable`, :func:`renew_offer`, :func:`widen_offer`;
- ``coordinator.cancel``: :func:`request_cancel`, :func:`cancel`;
- ``coordinator.parents``: :func:`start_parent`, :func:`parent_progress`, :func:`conclude`,
  :func:`fail_parent`;
- a refused submission (``coordinator.store``): :func:`withdraw`.

A record never leaves a terminal status here. The one change outside this table is the store's
last resort for a record too large to write (``coordinator.fit``), which may fail it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from subjects.limits import MAX_ERROR_CHARS, bounded_text
from subjects.models import AttemptRecord, Operation, OpStatus, Progress

PENDING, RUNNING = OpStatus.PENDING, OpStatus.RUNNING
COMPLETED, FAILED, CANCELLED = OpStatus.COMPLETED, OpStatus.FAILED, OpStatus.CANCELLED


class Transition(StrEnum):
    START = "start"
    NOTE = "note"  # info, a checkpoint or a warning from the worker; the status stays
    PROGRESS = "progress"
    COMPLETE = "complete"
    FAIL = "fail"
    UNDELIVERABLE = "undeliverable"  # its job reached MaxDeliver unclaimed, renewals used up
    REQUEST_CANCEL = "request_cancel"  # recorded for the worker that runs it; the status stays
    CANCEL = "cancel"
    RETRY = "retry"  # the next attempt, offered afresh: its worker was lost, or it failed retryably
    REOFFER = "reoffer"  # the same attempt offered again, or on more capabilities
    WITHDRAW = "withdraw"  # a refused submission's record, deleted


# Where each transition may start from, and where it leads (None: the record is deleted).
TRANSITIONS: Mapping[Transition, Mapping[OpStatus, OpStatus | None]] = MappingProxyType({
    Transition.START: {PENDING: RUNNING},
    Transition.NOTE: {PENDING: PENDING, RUNNING: RUNNING},
    Transition.PROGRESS: {RUNNING: RUNNING},
    # From pending too: a worker's outcome may be the first of its reports to count.
    Transition.COMPLETE: {PENDING: COMPLETED, RUNNING: COMPLETED},
    Transition.FAIL: {PENDING: FAILED, RUNNING: FAILED},
    # Not from running: a claimed job's copy reaching MaxDeliver says nothing about the attempt.
    Transition.UNDELIVERABLE: {PENDING: FAILED},
    Transition.REQUEST_CANCEL: {PENDING: PENDING, RUNNING: RUNNING},
    Transition.CANCEL: {PENDING: CANCELLED, RUNNING: CANCELLED},
    Transition.RETRY: {PENDING: PENDING, RUNNING: PENDING},
    Transition.REOFFER: {PENDING: PENDING},
    Transition.WITHDRAW: {PENDING: None},
})


@dataclass(frozen=True, slots=True)
class NoChange:
    """A transition refused: the record stays as it is, for the reason given.

    ``fenced``: the report came from a worker or an attempt that does not own the op (a frozen
    worker that woke up, an attempt since retried); counted and logged by whoever folds reports.
    """

    why: str
    fenced: bool = False


@dataclass(frozen=True, slots=True)
class Withdrawn:
    """The record goes: the store deletes it, expecting the revision it read."""

    op: Operation


@dataclass(frozen=True, slots=True, kw_only=True)
class Reporter:
    """Who a worker's report comes from: the worker and the attempt it was given."""

    worker_id: str
    attempt: int


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """How a retryable failure may be retried, as its type's policy says: while the op has attempts
    left, and at most ``tries`` attempts in all (None: no bound of the type's), on what ``offer()``
    chooses (asked only then)."""

    tries: int | None
    offer: Callable[[], Offer]


@dataclass(frozen=True, slots=True, kw_only=True)
class Offer:
    """Where an attempt is offered, as the dispatcher chose it from the type's route."""

    capability: str
    route: str
    reason: str
    at: datetime


def allowed(transition: Transition, status: OpStatus) -> bool:
    return status in TRANSITIONS[transition]


def leads_to(transition: Transition, status: OpStatus) -> OpStatus | None:
    """The status ``transition`` leads to from ``status`` (KeyError where it is not allowed)."""
    return TRANSITIONS[transition][status]


def _refused(transition: Transition, op: Operation, *, fenced: bool = False) -> NoChange | None:
    if allowed(transition, op.status):
        return None
    return NoChange(f"{transition.value} is not allowed from {op.status.value}", fenced=fenced)


def _stale(op: Operation, attempt: int) -> NoChange | None:
    if op.attempt == attempt:
        return None
    return NoChange(f"about attempt {attempt}, the op is at attempt {op.attempt}")


def current_attempt(op: Operation) -> AttemptRecord | None:
    """The record of the op's current attempt, if it has one yet."""
    for record in op.attempts:
        if record.attempt == op.attempt:
            return record
    return None


def attempts_with(op: Operation, *, add: bool = True, **changes: Any) -> list[AttemptRecord]:
    """``op.attempts`` with the current attempt's record changed (added first if it has none and
    ``add``); the records of ``op`` itself are left alone."""
    records = list(op.attempts)
    for i, record in enumerate(records):
        if record.attempt == op.attempt:
            records[i] = record.model_copy(update=changes)
            return records
    if add:
        records.append(AttemptRecord(attempt=op.attempt, route=op.route, **changes))
    return records


def with_offer(op: Operation, offer: Offer) -> Operation:
    """``op`` offered afresh on ``offer``'s capability alone."""
    return op.model_copy(update={"capability": offer.capability, "route": offer.route,
                                 "route_reason": offer.reason, "offered": [offer.capability],
                                 "offered_at": offer.at})


# --- a worker's reports ---------------------------------------------------------------------------


def _fenced(op: Operation, by: Reporter) -> NoChange | None:
    """Refused unless ``by`` owns the op: its attempt, and its worker or none yet."""
    if op.attempt == by.attempt and op.worker_id in (None, by.worker_id) and not op.status.terminal:
        return None
    # A redelivered copy of an outcome already applied is not a fencing case.
    again = op.status.terminal and op.worker_id == by.worker_id and op.attempt == by.attempt
    if again:
        return NoChange(f"already {op.status.value}")
    return NoChange(f"{by.worker_id} attempt {by.attempt} does not own the op "
                    f"({op.worker_id or 'no worker'} attempt {op.attempt}, {op.status.value})", fenced=True)


def start(op: Operation, by: Reporter, *, at: datetime) -> Operation | NoChange:
    """The worker started the attempt (``at``: when it says it did)."""
    refused = _fenced(op, by) or _refused(Transition.START, op)
    if refused is not None:
        return refused
    return op.model_copy(update={
        "status": RUNNING, "worker_id": by.worker_id, "started_at": op.started_at or at,
        "attempts": attempts_with(op, worker_id=by.worker_id, started_at=at)})


def note(op: Operation, by: Reporter, *, info: Mapping[str, Any], checkpoint: str | None = None,
         warning: str | None = None) -> Operation | NoChange:
    """What the worker reports beside progress: ``info`` merged into the record's, the checkpoint
    the next attempt resumes from (``""``: none any more), a warning (kept once, however often it
    is delivered)."""
    refused = _fenced(op, by) or _refused(Transition.NOTE, op)
    if refused is not None:
        return refused
    # The attempt has its record from its first report that counts, whichever that is.
    update: dict[str, Any] = {"info": {**op.info, **info}, "attempts": attempts_with(op)}
    if checkpoint is not None:
        update["checkpoint"] = checkpoint or None
    if warning and warning not in op.warnings:
        update["warnings"] = [*op.warnings, warning]
    return op.model_copy(update=update)


def progress(op: Operation, by: Reporter, *, progress: Progress) -> Operation | NoChange:
    """The worker's progress report. Any refusal is fenced: only a running attempt reports progress."""
    refused = _refused(Transition.PROGRESS, op, fenced=True)
    if refused is not None:
        return refused
    if op.attempt != by.attempt or op.worker_id not in (None, by.worker_id):
        return NoChange(f"{by.worker_id} attempt {by.attempt} does not own the op", fenced=True)
    return op.model_copy(update={"progress": progress.model_copy()})


def _ended(op: Operation, by: Reporter, status: OpStatus, at: datetime, **update: Any) -> Operation:
    # An attempt that ended within the worker's started delay reports its outcome alone: the
    # outcome then says who ran it, and when (its start is its end, as far as the record knows).
    current = current_attempt(op)
    started_at = current.started_at if current is not None and current.started_at is not None else at
    return op.model_copy(update={
        "status": status, "worker_id": by.worker_id, "completed_at": at, "started_at": op.started_at or at,
        "attempts": attempts_with(op, ended_at=at, outcome=status.value, worker_id=by.worker_id,
                                  started_at=started_at),
        **update})


def complete(op: Operation, by: Reporter, *, at: datetime, result: dict[str, Any] | None,
             result_object: str | None) -> Operation | NoChange:
    refused = _fenced(op, by) or _refused(Transition.COMPLETE, op)
    if refused is not None:
        return refused
    shown = None if op.progress is None else op.progress.model_copy(update={"percentage": 100.0})
    return _ended(op, by, COMPLETED, at, result=result, result_object=result_object, progress=shown)


def fail(op: Operation, by: Reporter, *, at: datetime, error: str | None, error_type: str | None = None,
         retryable: bool = False, retry: Retry | None = None) -> Operation | NoChange:
    """The handler failed. Retried when the failure is ``retryable``, its type has a ``retry`` policy
    that allows another attempt and no cancel was requested; else the op fails, keeping the error's
    type and whether it was retryable (when the worker said: ``error_type``)."""
    refused = _fenced(op, by)
    if refused is not None:
        return refused
    if retryable and retry is not None and _retry_due(op, retry.tries):
        refused = _refused(Transition.RETRY, op)
        if refused is not None:
            return refused
        failed = f"attempt {op.attempt} failed: {error or 'failed'}; retrying as attempt {op.attempt + 1}"
        retried = op.model_copy(update={
            "status": PENDING, "worker_id": None, "progress": None, "attempt": op.attempt + 1,
            "attempts": attempts_with(op, ended_at=at, outcome=FAILED.value),
            "warnings": [*op.warnings, bounded_text(failed, MAX_ERROR_CHARS)]})
        return with_offer(retried, retry.offer())
    refused = _refused(Transition.FAIL, op)
    if refused is not None:
        return refused
    return _ended(op, by, FAILED, at, error=error or "failed", error_type=error_type,
                  retryable=retryable if error_type is not None else None)


def _retry_due(op: Operation, tries: int | None) -> bool:
    return not op.cancel_reason and op.attempt < op.max_attempts and (tries is None or op.attempt < tries)


def cancelled(op: Operation, by: Reporter, *, at: datetime, reason: str | None) -> Operation | NoChange:
    """The worker stopped the attempt on a cancel request: the reason recorded first is kept."""
    refused = _fenced(op, by) or _refused(Transition.CANCEL, op)
    if refused is not None:
        return refused
    return _ended(op, by, CANCELLED, at, cancel_reason=op.cancel_reason or reason or "cancelled", error=None)


# --- the dispatcher's -----------------------------------------------------------------------------


def lose_worker(op: Operation, *, attempt: int, worker_id: str, reason: str, at: datetime,
                offer: Callable[[], Offer]) -> Operation | NoChange:
    """``worker_id`` was lost during ``attempt``: retried while attempts are left, on what ``offer()``
    chooses (asked only then: the choice reads the live workers), unless a cancel was requested
    (then cancelled); failed once no attempts are left."""
    refused = (NoChange(f"already {op.status.value}") if op.status.terminal else None) or _stale(op, attempt)
    if refused is not None:
        return refused
    lost = f"worker {worker_id} lost ({reason}) during attempt {attempt}"
    # The lost attempt's record, if it has one (not added: a record says the attempt was started).
    attempts = attempts_with(op, add=False, outcome=f"lost: {reason}", ended_at=at)
    if op.cancel_reason:
        refused = _refused(Transition.CANCEL, op)
        return refused or op.model_copy(update={"status": CANCELLED, "completed_at": at, "attempts": attempts,
                                                "warnings": [*op.warnings, lost]})
    if op.attempt < op.max_attempts:
        refused = _refused(Transition.RETRY, op)
        if refused is not None:
            return refused
        retried = op.model_copy(update={"status": PENDING, "worker_id": None, "progress": None,
                                        "attempt": op.attempt + 1, "attempts": attempts,
                                        "warnings": [*op.warnings, lost]})
        return with_offer(retried, offer())
    refused = _refused(Transition.FAIL, op)
    return refused or op.model_copy(update={"status": FAILED, "completed_at": at, "attempts": attempts,
                                            "error": f"{lost}; no attempts left (max {op.max_attempts})"})


def undeliverable(op: Operation, *, attempt: int, error: str, at: datetime) -> Operation | NoChange:
    refused = _refused(Transition.UNDELIVERABLE, op) or _stale(op, attempt)
    if refused is not None:
        return refused
    return op.model_copy(update={"status": FAILED, "error": error, "completed_at": at})


def renew_offer(op: Operation, *, attempt: int, capability: str, deliveries: int | None,
                limit: int) -> Operation | NoChange:
    """The attempt's offer on ``capability`` renewed after MaxDeliver deliveries that no worker
    claimed (hand-backs), at most ``limit`` times an attempt."""
    refused = _refused(Transition.REOFFER, op) or _stale(op, attempt)
    if refused is not None:
        return refused
    record = current_attempt(op)
    renewed = record.reoffers if record is not None else 0
    if renewed >= limit:
        return NoChange(f"offer already renewed {renewed} times")
    return op.model_copy(update={
        "attempts": attempts_with(op, reoffers=renewed + 1),
        "warnings": [*op.warnings, f"offer on {capability} renewed after {deliveries or 'max'} deliveries "
                                   "that no worker claimed"]})


def widen_offer(op: Operation, *, attempt: int, capabilities: Sequence[str], route: str,
                reason: str) -> Operation | NoChange:
    """The attempt offered on ``capabilities`` too (the GPU fallback), the last of them its route now."""
    refused = _refused(Transition.REOFFER, op) or _stale(op, attempt)
    if refused is not None:
        return refused
    if all(c in op.offered for c in capabilities):
        return NoChange("already offered there")
    offered = list(op.offered)
    offered.extend(c for c in capabilities if c not in offered)
    return op.model_copy(update={
        "offered": offered, "capability": capabilities[-1], "route": route, "route_reason": reason})


# --- cancelling -----------------------------------------------------------------------------------


def request_cancel(op: Operation, *, reason: str) -> Operation | NoChange:
    """A cancel request recorded for the worker that holds the op: a lost worker's op then ends
    cancelled instead of being retried. The first request's reason is kept."""
    refused = _refused(Transition.REQUEST_CANCEL, op)
    if refused is not None:
        return refused
    if op.cancel_reason:
        return NoChange("cancel already requested")
    return op.model_copy(update={"cancel_reason": reason})


def cancel(op: Operation, *, attempt: int, reason: str, at: datetime,
           holder: str | None = None) -> Operation | NoChange:
    """Cancelled by the coordinator: queued (its claim taken), a parent, or held by ``holder``, a
    worker with no lease left to stop it."""
    refused = _refused(Transition.CANCEL, op) or _stale(op, attempt)
    if refused is not None:
        return refused
    update: dict[str, Any] = {"status": CANCELLED, "cancel_reason": reason, "completed_at": at}
    if holder:
        update["warnings"] = [*op.warnings, f"cancelled while its worker {holder} held no lease"]
    return op.model_copy(update=update)


# --- parents (run by the coordinator) -------------------------------------------------------------


def start_parent(op: Operation, *, plan: Mapping[str, Any], at: datetime) -> Operation | NoChange:
    """The parent runner prepared its plan (kept in the record, so a restart plans from it again)."""
    refused = _refused(Transition.START, op)
    if refused is not None:
        return refused
    update: dict[str, Any] = {"status": RUNNING, "started_at": at,
                              "progress": Progress(percentage=0.0, step="planning", message="planning", timestamp=at)}
    if plan:
        update["info"] = {**op.info, "plan": dict(plan)}
    return op.model_copy(update=update)


def _same_progress(a: Progress | None, b: Progress) -> bool:
    return a is not None and (a.percentage, a.steps_done, a.steps_total, a.message, a.step) == (
        b.percentage, b.steps_done, b.steps_total, b.message, b.step)


def parent_progress(op: Operation, *, progress: Progress, children: int) -> Operation | NoChange:
    """The children's progress folded into the parent, with the number of children it expects
    (left alone when neither changed: a timestamp alone is not worth a write)."""
    refused = _refused(Transition.PROGRESS, op)
    if refused is not None:
        return refused
    if _same_progress(op.progress, progress) and op.info.get("children") == children:
        return NoChange("unchanged")
    return op.model_copy(update={"progress": progress, "info": {**op.info, "children": children}})


def conclude(op: Operation, *, at: datetime, progress: Progress, result: dict[str, Any] | None,
             result_object: str | None, error: str | None) -> Operation | NoChange:
    """The parent's children reduced: completed with ``result``, or failed with the ``error`` the
    reduction gave."""
    refused = _refused(Transition.COMPLETE if error is None else Transition.FAIL, op)
    if refused is not None:
        return refused
    update: dict[str, Any] = {"completed_at": at, "progress": progress.model_copy(update={"percentage": 100.0})}
    if error is None:
        update.update(status=COMPLETED, result=result, result_object=result_object)
    else:
        update.update(status=FAILED, error=bounded_text(error, MAX_ERROR_CHARS))
    return op.model_copy(update=update)


def fail_parent(op: Operation, *, error: str, at: datetime) -> Operation | NoChange:
    """The parent's planning failed, or its plan gave up."""
    refused = _refused(Transition.FAIL, op)
    if refused is not None:
        return refused
    return op.model_copy(update={"status": FAILED, "completed_at": at, "error": bounded_text(error, MAX_ERROR_CHARS)})


# --- a refused submission -------------------------------------------------------------------------


def withdraw(op: Operation, *, refused: Operation) -> Withdrawn | NoChange:
    """The stored record ``op`` is deleted if it is the refused submission's, ``refused``, as written:
    its client was told no and may submit it again. A record submitted again since (another
    ``created_at``), or one that has moved on, stays."""
    no = _refused(Transition.WITHDRAW, op)
    if no is not None:
        return no
    if op != refused:
        return NoChange("another record under that id")
    return Withdrawn(op)
