"""The op record's transitions (coordinator.lifecycle): pure functions, checked here without NATS.

Every cell of the table is tried with every function that makes that transition, from every
status: allowed where the table says so (leading where it says), refused everywhere else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from coordinator import lifecycle
from coordinator.lifecycle import TRANSITIONS, NoChange, Offer, Reporter, Retry, Transition, Withdrawn
from subjects.models import AttemptRecord, Operation, OpStatus, Progress

T0 = datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)
AT = T0 + timedelta(seconds=30)
W1 = Reporter(worker_id="w1", attempt=1)
CPU = Offer(capability="jobs.training.cpu", route="training.cpu", reason="retried", at=AT)
DONE = Progress(percentage=40.0, step="done", message="4 of 4 children finished")
RETRY = Retry(tries=None, offer=lambda: CPU)


def record(status: OpStatus, **fields: object) -> Operation:
    """An op at attempt 1 of 2, in ``status``; held by worker w1 once it has started."""
    worker = None if status is OpStatus.PENDING else "w1"
    attempts = [] if status is OpStatus.PENDING else [AttemptRecord(attempt=1, worker_id="w1", started_at=T0)]
    base: dict[str, object] = {
        "op_id": "dummy-1", "type": "dummy", "status": status, "worker_id": worker, "created_at": T0,
        "capability": "jobs.training.gpu", "route": "training.gpu", "offered": ["jobs.training.gpu"],
        "attempts": attempts, "info": {"seen": 1}}
    return Operation.model_validate({**base, **fields})


@dataclass(frozen=True)
class Case:
    """One function making ``transition``, with the record arranged so that only its status decides."""

    name: str
    transition: Transition
    apply: Callable[[Operation], Operation | NoChange | Withdrawn]
    arrange: Callable[[Operation], Operation] = lambda op: op


def never() -> Offer:
    raise AssertionError("the offer is chosen only for a retry")


CASES = [
    Case("a worker's started event", Transition.START, lambda op: lifecycle.start(op, W1, at=AT)),
    Case("the parent runner's plan", Transition.START,
         lambda op: lifecycle.start_parent(op, plan={"folds": 3}, at=AT)),
    Case("a worker's info event", Transition.NOTE, lambda op: lifecycle.note(op, W1, info={"epoch": 3})),
    Case("a worker's progress", Transition.PROGRESS,
         lambda op: lifecycle.progress(op, W1, progress=Progress(percentage=50.0))),
    Case("the children's progress of a parent", Transition.PROGRESS,
         lambda op: lifecycle.parent_progress(op, progress=DONE, children=4)),
    Case("a worker's completed event", Transition.COMPLETE,
         lambda op: lifecycle.complete(op, W1, at=AT, result={"n": 1}, result_object=None)),
    Case("a parent's reduced result", Transition.COMPLETE,
         lambda op: lifecycle.conclude(op, at=AT, progress=DONE, result={"n": 1}, result_object=None, error=None)),
    Case("a worker's failed event", Transition.FAIL, lambda op: lifecycle.fail(op, W1, at=AT, error="boom")),
    Case("a parent's plan giving up", Transition.FAIL, lambda op: lifecycle.fail_parent(op, error="boom", at=AT)),
    Case("a parent's reduction failing", Transition.FAIL,
         lambda op: lifecycle.conclude(op, at=AT, progress=DONE, result=None, result_object=None, error="boom")),
    Case("a lost worker with no attempts left", Transition.FAIL,
         lambda op: lifecycle.lose_worker(op, attempt=1, worker_id="w1", reason="no lease", at=AT, offer=never),
         arrange=lambda op: op.model_copy(update={"max_attempts": 1})),
    Case("a job no worker claimed", Transition.UNDELIVERABLE,
         lambda op: lifecycle.undeliverable(op, attempt=1, error="undeliverable", at=AT)),
    Case("a cancel request", Transition.REQUEST_CANCEL, lambda op: lifecycle.request_cancel(op, reason="stop")),
    Case("a cancel by the coordinator", Transition.CANCEL,
         lambda op: lifecycle.cancel(op, attempt=1, reason="stop", at=AT)),
    Case("a worker's cancelled event", Transition.CANCEL,
         lambda op: lifecycle.cancelled(op, W1, at=AT, reason="stop")),
    Case("a lost worker after a cancel request", Transition.CANCEL,
         lambda op: lifecycle.lose_worker(op, attempt=1, worker_id="w1", reason="no lease", at=AT, offer=never),
         arrange=lambda op: op.model_copy(update={"cancel_reason": "stop"})),
    Case("a worker's retryable failure", Transition.RETRY,
         lambda op: lifecycle.fail(op, W1, at=AT, error="busy", error_type="ktrdr.errors.Retryable", retryable=True,
                                   retry=RETRY)),
    Case("a lost worker with attempts left", Transition.RETRY,
         lambda op: lifecycle.lose_worker(op, attempt=1, worker_id="w1", reason="no lease", at=AT,
                                          offer=lambda: CPU)),
    Case("an offer renewed", Transition.REOFFER,
         lambda op: lifecycle.renew_offer(op, attempt=1, capability="jobs.training.gpu", deliveries=5, limit=3)),
    Case("an offer widened to the fallback", Transition.REOFFER,
         lambda op: lifecycle.widen_offer(op, attempt=1, capabilities=["jobs.training.cpu"], route="training.cpu",
                                          reason="cpu: gpu timeout after 5 s")),
    Case("a refused submission withdrawn", Transition.WITHDRAW, lambda op: lifecycle.withdraw(op, refused=op)),
]


def _cell(case: Case, status: OpStatus) -> str:
    verdict = "is allowed" if lifecycle.allowed(case.transition, status) else "is refused"
    return f"{case.transition.value}: {case.name} from {status.value} {verdict}"


CELLS = [pytest.param(case, status, id=_cell(case, status)) for case in CASES for status in OpStatus]


@pytest.mark.parametrize(("case", "status"), CELLS)
def test_each_transition_is_allowed_exactly_where_the_table_says_and_leads_where_it_says(
        case: Case, status: OpStatus) -> None:
    given = case.arrange(record(status))
    as_given = given.model_dump()
    answer = case.apply(given)
    assert given.model_dump() == as_given, "a transition changed the record it was given"
    if not lifecycle.allowed(case.transition, status):
        assert isinstance(answer, NoChange), answer
        return
    expected = lifecycle.leads_to(case.transition, status)
    if expected is None:
        assert answer == Withdrawn(given)
    else:
        assert isinstance(answer, Operation), answer
        assert answer.status is expected


def test_every_transition_has_a_function_and_every_function_a_transition() -> None:
    assert {case.transition for case in CASES} == set(Transition) == set(TRANSITIONS)


def test_no_transition_leads_out_of_an_ended_status() -> None:
    for transition, moves in TRANSITIONS.items():
        assert not any(status.terminal for status in moves), transition


# --- a worker's reports: fenced to the attempt that owns the op -------------------------------------


def test_a_report_from_an_attempt_since_retried_is_fenced() -> None:
    running = record(OpStatus.RUNNING, attempt=2, attempts=[AttemptRecord(attempt=2, worker_id="w1")])
    for answer in (lifecycle.start(running, W1, at=AT), lifecycle.note(running, W1, info={}),
                   lifecycle.progress(running, W1, progress=Progress()),
                   lifecycle.complete(running, W1, at=AT, result=None, result_object=None),
                   lifecycle.fail(running, W1, at=AT, error="x"), lifecycle.cancelled(running, W1, at=AT, reason="x")):
        assert isinstance(answer, NoChange) and answer.fenced, answer


def test_a_report_from_a_worker_that_does_not_hold_the_op_is_fenced() -> None:
    other = Reporter(worker_id="w2", attempt=1)
    answer = lifecycle.complete(record(OpStatus.RUNNING), other, at=AT, result={}, result_object=None)
    assert isinstance(answer, NoChange) and answer.fenced


def test_an_outcome_delivered_again_is_ignored_without_being_fenced() -> None:
    done = record(OpStatus.COMPLETED)
    answer = lifecycle.complete(done, W1, at=AT, result={}, result_object=None)
    assert answer == NoChange("already completed")


def test_a_started_event_for_an_op_already_running_changes_nothing_and_is_not_fenced() -> None:
    answer = lifecycle.start(record(OpStatus.RUNNING), W1, at=AT)
    assert isinstance(answer, NoChange) and not answer.fenced


def test_progress_before_the_op_started_is_fenced() -> None:
    answer = lifecycle.progress(record(OpStatus.PENDING), W1, progress=Progress(percentage=1.0))
    assert isinstance(answer, NoChange) and answer.fenced


def test_a_start_records_the_worker_on_the_op_and_on_its_attempt() -> None:
    started = lifecycle.start(record(OpStatus.PENDING), W1, at=AT)
    assert isinstance(started, Operation)
    assert (started.worker_id, started.started_at) == ("w1", AT)
    assert started.attempts == [AttemptRecord(attempt=1, worker_id="w1", route="training.gpu", started_at=AT)]


def test_a_completion_keeps_the_result_closes_the_attempt_and_shows_full_progress() -> None:
    running = record(OpStatus.RUNNING, progress=Progress(percentage=70.0))
    done = lifecycle.complete(running, W1, at=AT, result={"n": 1}, result_object="h.dummy-1.1.result")
    assert isinstance(done, Operation)
    assert (done.result, done.result_object, done.completed_at) == ({"n": 1}, "h.dummy-1.1.result", AT)
    assert done.progress is not None and done.progress.percentage == 100.0
    assert (done.attempts[0].ended_at, done.attempts[0].outcome) == (AT, "completed")


def test_a_failure_without_a_message_says_failed() -> None:
    failed = lifecycle.fail(record(OpStatus.RUNNING), W1, at=AT, error=None)
    assert isinstance(failed, Operation) and failed.error == "failed"


def test_a_worker_cancel_keeps_the_reason_recorded_first() -> None:
    asked = record(OpStatus.RUNNING, cancel_reason="asked first")
    ended = lifecycle.cancelled(asked, W1, at=AT, reason="the worker's")
    assert isinstance(ended, Operation) and (ended.cancel_reason, ended.error) == ("asked first", None)


def test_info_is_merged_a_warning_kept_once_and_an_empty_checkpoint_clears_it() -> None:
    running = record(OpStatus.RUNNING, checkpoint="h.dummy-1.1.ckpt", warnings=["slow"])
    noted = lifecycle.note(running, W1, info={"epoch": 3}, checkpoint="", warning="slow")
    assert isinstance(noted, Operation)
    assert (noted.info, noted.checkpoint, noted.warnings) == ({"seen": 1, "epoch": 3}, None, ["slow"])


# --- a handler's failure: final, or retried as its type's policy allows -----------------------------


def test_a_failure_keeps_its_type_and_whether_it_was_retryable() -> None:
    failed = lifecycle.fail(record(OpStatus.RUNNING), W1, at=AT, error="ValueError: bad", error_type="ValueError")
    assert isinstance(failed, Operation)
    assert (failed.error, failed.error_type, failed.retryable) == ("ValueError: bad", "ValueError", False)


def test_a_failure_from_a_worker_that_says_nothing_of_its_type_is_neither_retryable_nor_not() -> None:
    failed = lifecycle.fail(record(OpStatus.RUNNING), W1, at=AT, error="boom")
    assert isinstance(failed, Operation) and (failed.error_type, failed.retryable) == (None, None)


def test_a_retryable_failure_is_retried_on_the_next_attempt_resuming_from_its_checkpoint() -> None:
    running = record(OpStatus.RUNNING, checkpoint="h.dummy-1.1.ckpt")
    retried = lifecycle.fail(running, W1, at=AT, error="Retryable: busy", error_type="ktrdr.errors.Retryable",
                             retryable=True, retry=RETRY)
    assert isinstance(retried, Operation)
    assert (retried.status, retried.attempt, retried.worker_id, retried.error) == (OpStatus.PENDING, 2, None, None)
    assert (retried.capability, retried.checkpoint) == (CPU.capability, "h.dummy-1.1.ckpt")
    assert (retried.attempts[0].outcome, retried.attempts[0].ended_at) == ("failed", AT)
    assert retried.warnings == ["attempt 1 failed: Retryable: busy; retrying as attempt 2"]


@pytest.mark.parametrize(("why", "arranged", "retry"), [
    ("its type has no retry policy", {}, None),
    ("the op has no attempts left", {"max_attempts": 1}, RETRY),
    ("its type's policy allows no more tries", {"max_attempts": 5}, Retry(tries=1, offer=never)),
    ("a cancel was requested", {"cancel_reason": "stop"}, RETRY),
], ids=lambda v: v if isinstance(v, str) else "")
def test_a_retryable_failure_fails_the_op_when(why: str, arranged: dict[str, object], retry: Retry | None) -> None:
    failed = lifecycle.fail(record(OpStatus.RUNNING, **arranged), W1, at=AT, error="busy", error_type="E",
                            retryable=True, retry=retry)
    assert isinstance(failed, Operation), why
    assert (failed.status, failed.retryable) == (OpStatus.FAILED, True)


def test_a_failure_that_is_not_retryable_is_never_retried() -> None:
    failed = lifecycle.fail(record(OpStatus.RUNNING), W1, at=AT, error="bad", error_type="ValueError",
                            retry=Retry(tries=None, offer=never))
    assert isinstance(failed, Operation) and failed.status is OpStatus.FAILED


# --- the dispatcher's -------------------------------------------------------------------------------


def test_a_retry_moves_to_the_next_attempt_on_the_new_offer_and_closes_the_lost_one() -> None:
    retried = lifecycle.lose_worker(record(OpStatus.RUNNING, progress=Progress(percentage=5.0)), attempt=1,
                                    worker_id="w1", reason="no lease", at=AT, offer=lambda: CPU)
    assert isinstance(retried, Operation)
    assert (retried.status, retried.attempt, retried.worker_id, retried.progress) == (OpStatus.PENDING, 2, None, None)
    assert (retried.capability, retried.offered, retried.offered_at) == (CPU.capability, [CPU.capability], AT)
    assert (retried.attempts[0].outcome, retried.attempts[0].ended_at) == ("lost: no lease", AT)
    assert retried.warnings == ["worker w1 lost (no lease) during attempt 1"]


def test_a_lost_worker_with_no_attempts_left_fails_the_op_saying_so() -> None:
    failed = lifecycle.lose_worker(record(OpStatus.RUNNING, max_attempts=1), attempt=1, worker_id="w1",
                                   reason="no lease", at=AT, offer=never)
    assert isinstance(failed, Operation)
    assert failed.error == "worker w1 lost (no lease) during attempt 1; no attempts left (max 1)"


def test_a_lost_attempt_that_never_started_gets_no_attempt_record() -> None:
    retried = lifecycle.lose_worker(record(OpStatus.PENDING), attempt=1, worker_id="w1", reason="no lease", at=AT,
                                    offer=lambda: CPU)
    assert isinstance(retried, Operation) and retried.attempts == []


def test_a_change_about_an_older_attempt_is_refused() -> None:
    later = record(OpStatus.PENDING, attempt=2)
    for answer in (
            lifecycle.lose_worker(later, attempt=1, worker_id="w1", reason="x", at=AT, offer=never),
            lifecycle.undeliverable(later, attempt=1, error="x", at=AT),
            lifecycle.renew_offer(later, attempt=1, capability="c", deliveries=None, limit=3),
            lifecycle.widen_offer(later, attempt=1, capabilities=["c"], route="r", reason="x"),
            lifecycle.cancel(later, attempt=1, reason="x", at=AT)):
        assert isinstance(answer, NoChange), answer


def test_an_offer_is_renewed_at_most_limit_times_each_saying_so() -> None:
    op: Operation | NoChange = record(OpStatus.PENDING)
    for _ in range(2):
        assert isinstance(op, Operation)
        op = lifecycle.renew_offer(op, attempt=1, capability="jobs.backtest.cpu", deliveries=None, limit=2)
    assert isinstance(op, Operation)
    current = lifecycle.current_attempt(op)
    assert current is not None and current.reoffers == 2
    assert op.warnings[-1] == "offer on jobs.backtest.cpu renewed after max deliveries that no worker claimed"
    assert isinstance(lifecycle.renew_offer(op, attempt=1, capability="c", deliveries=None, limit=2), NoChange)


def test_widening_an_offer_adds_each_capability_once_and_routes_to_the_last() -> None:
    wider = lifecycle.widen_offer(record(OpStatus.PENDING), attempt=1, route="training.cpu", reason="timeout",
                                  capabilities=["jobs.training.gpu", "jobs.training.cpu"])
    assert isinstance(wider, Operation)
    assert wider.offered == ["jobs.training.gpu", "jobs.training.cpu"]
    assert (wider.capability, wider.route, wider.route_reason) == ("jobs.training.cpu", "training.cpu", "timeout")
    again = lifecycle.widen_offer(wider, attempt=1, capabilities=["jobs.training.cpu"], route="r", reason="x")
    assert isinstance(again, NoChange)


# --- cancelling -------------------------------------------------------------------------------------


def test_a_second_cancel_request_keeps_the_first_reason() -> None:
    asked = lifecycle.request_cancel(record(OpStatus.RUNNING), reason="first")
    assert isinstance(asked, Operation) and asked.status is OpStatus.RUNNING
    assert isinstance(lifecycle.request_cancel(asked, reason="second"), NoChange)


def test_a_cancel_for_a_worker_without_a_lease_says_so_in_a_warning() -> None:
    ended = lifecycle.cancel(record(OpStatus.RUNNING), attempt=1, reason="stop", at=AT, holder="w1")
    assert isinstance(ended, Operation)
    assert (ended.cancel_reason, ended.completed_at) == ("stop", AT)
    assert ended.warnings == ["cancelled while its worker w1 held no lease"]


# --- parents ----------------------------------------------------------------------------------------


def test_a_parent_starts_planning_with_its_plan_kept_in_the_record() -> None:
    started = lifecycle.start_parent(record(OpStatus.PENDING), plan={"folds": 3}, at=AT)
    assert isinstance(started, Operation)
    assert started.info == {"seen": 1, "plan": {"folds": 3}}
    assert started.progress is not None and started.progress.step == "planning"


def test_a_parent_progress_that_says_nothing_new_writes_nothing() -> None:
    shown = lifecycle.parent_progress(record(OpStatus.RUNNING), progress=DONE, children=4)
    assert isinstance(shown, Operation) and shown.info["children"] == 4
    later = DONE.model_copy(update={"timestamp": AT + timedelta(seconds=1)})
    assert lifecycle.parent_progress(shown, progress=later, children=4) == NoChange("unchanged")


def test_a_parent_concludes_with_full_progress_and_its_result_or_its_bounded_error() -> None:
    running = record(OpStatus.RUNNING)
    done = lifecycle.conclude(running, at=AT, progress=DONE, result={"n": 2}, result_object="r", error=None)
    assert isinstance(done, Operation) and done.progress is not None
    assert (done.result, done.result_object, done.progress.percentage) == ({"n": 2}, "r", 100.0)
    failed = lifecycle.conclude(running, at=AT, progress=DONE, result=None, result_object=None, error="x" * 10_000)
    assert isinstance(failed, Operation) and failed.error is not None and len(failed.error) <= 4_000


# --- a refused submission ---------------------------------------------------------------------------


def test_a_record_submitted_again_since_is_not_withdrawn() -> None:
    refused = record(OpStatus.PENDING)
    again = refused.model_copy(update={"created_at": T0 + timedelta(seconds=1)})
    assert isinstance(lifecycle.withdraw(again, refused=refused), NoChange)
