"""Fitting a record that grew too large to write (coordinator.fit), without NATS."""

from __future__ import annotations

from datetime import UTC, datetime

from coordinator.fit import FITTED_WARNINGS, fit
from subjects.models import AttemptRecord, Operation, OpStatus, Progress

AT = datetime(2024, 1, 2, tzinfo=UTC)


def running(**fields: object) -> Operation:
    return Operation.model_validate({"op_id": "dummy-1", "type": "dummy", "status": OpStatus.RUNNING,
                                     "worker_id": "w1", "attempts": [AttemptRecord(attempt=1, worker_id="w1")],
                                     **fields})


def test_what_piles_up_goes_first_and_the_op_carries_on_saying_what_was_dropped() -> None:
    op = running(info={"big": "x" * 5000}, progress=Progress(percentage=10.0, context={"c": "y" * 500}),
                 warnings=[f"w{i}" for i in range(FITTED_WARNINGS + 5)], params={"p": 1})
    fitted = fit(op, size=9000, limit=2000, at=AT)
    assert fitted.op.status is OpStatus.RUNNING
    assert fitted.op.info == {} and fitted.op.progress is not None and fitted.op.progress.context == {}
    assert fitted.op.params == {"p": 1}
    assert fitted.op.warnings[-1].startswith("the record would have been 9000 bytes, over the 2000")
    assert len(fitted.op.warnings) == FITTED_WARNINGS + 1
    assert len(fitted.payload) <= 2000 and fitted.payload == fitted.op.encode()
    assert op.info and op.progress is not None and op.progress.context, "the record given was changed"


def test_a_record_still_too_large_loses_its_result_and_params_and_fails() -> None:
    op = running(params={"p": "z" * 5000}, info={"i": 1})
    fitted = fit(op, size=9000, limit=1000, at=AT)
    assert fitted.op.status is OpStatus.FAILED and fitted.op.params == {}
    assert fitted.op.completed_at == AT
    assert (fitted.op.attempts[0].ended_at, fitted.op.attempts[0].outcome) == (AT, "failed")
    assert fitted.op.error is not None and "dropped info" in fitted.op.error and "params (" in fitted.op.error
    assert op.status is OpStatus.RUNNING and op.params, "the record given was changed"


def test_a_cancelled_record_too_large_stays_cancelled() -> None:
    op = running(status=OpStatus.CANCELLED, params={"p": "z" * 5000}, cancel_reason="stop")
    fitted = fit(op, size=9000, limit=1000, at=AT)
    assert fitted.op.status is OpStatus.CANCELLED and fitted.op.cancel_reason == "stop"
