"""A handler's failure, recorded with its type and whether it is retryable, and retried when its
op type's retry policy allows (ktrdr.errors, OpType.retry): with a real nats-server and workers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from pydantic import BaseModel, ConfigDict

from coordinator.app import Coordinator
from ktrdr.errors import Retryable
from ktrdr.optypes import OpType, declare, on, retract
from ktrdr.runtime.context import JobContext
from ktrdr.runtime.retry import RetryPolicy
from subjects import names
from subjects.models import OpStatus, SubmitRequest
from tests.conftest import MakeWorker
from tests.support import wait_status


class FlakyParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fail_attempts: int = 1  # the first attempts that fail
    retryable: bool = True


class FlakyResult(BaseModel):
    attempt: int


async def flaky(ctx: JobContext, params: FlakyParams) -> FlakyResult:
    if ctx.attempt <= params.fail_attempts:
        if params.retryable:
            raise Retryable(f"the store is away (attempt {ctx.attempt})")
        raise ValueError(f"bad input (attempt {ctx.attempt})")
    return FlakyResult(attempt=ctx.attempt)


PATIENT = OpType(name="test_patient", params=FlakyParams, result=FlakyResult, runs=on(names.CAP_DUMMY_ANY),
                 summary="fails retryably, then works (declared by a test)",
                 retry=RetryPolicy(first_s=0.05, max_s=0.05, attempts=3))
IMPATIENT = OpType(name="test_impatient", params=FlakyParams, result=FlakyResult, runs=on(names.CAP_DUMMY_ANY),
                   summary="the same without a retry policy (declared by a test)")


@pytest.fixture(autouse=True)
def declared() -> Iterator[None]:
    declare(PATIENT)
    declare(IMPATIENT)
    yield
    retract(PATIENT)
    retract(IMPATIENT)


async def submit(coordinator: Coordinator, make_worker: MakeWorker, op_type: str, **params: object) -> str:
    await make_worker("w1", handlers={PATIENT: flaky, IMPATIENT: flaky})
    op = await coordinator.layer.submit(SubmitRequest(type=op_type, params=params, max_attempts=3))
    return op.op_id


async def test_a_retryable_failure_is_retried_as_its_types_policy_allows_and_completes(
        coordinator: Coordinator, make_worker: MakeWorker) -> None:
    op_id = await submit(coordinator, make_worker, "test_patient", fail_attempts=2)
    done = await wait_status(coordinator, op_id, OpStatus.COMPLETED, OpStatus.FAILED)
    assert done.status is OpStatus.COMPLETED, done.error
    assert (done.attempt, done.result) == (3, {"attempt": 3})
    assert [a.outcome for a in done.attempts] == ["failed", "failed", "completed"]
    assert done.warnings[0] == ("attempt 1 failed: Retryable: the store is away (attempt 1); "
                                "retrying as attempt 2")
    assert coordinator.metrics.retries.labels(type="test_patient")._value.get() == 2


async def test_a_retryable_failure_past_the_policys_tries_fails_saying_it_was_retryable(
        coordinator: Coordinator, make_worker: MakeWorker) -> None:
    op_id = await submit(coordinator, make_worker, "test_patient", fail_attempts=5)
    failed = await wait_status(coordinator, op_id, OpStatus.FAILED, OpStatus.COMPLETED)
    assert (failed.status, failed.attempt) == (OpStatus.FAILED, 3)
    assert (failed.error_type, failed.retryable) == ("ktrdr.errors.Retryable", True)
    assert failed.error == "Retryable: the store is away (attempt 3)"


async def test_a_failure_that_is_not_retryable_fails_at_once_whatever_the_policy(
        coordinator: Coordinator, make_worker: MakeWorker) -> None:
    op_id = await submit(coordinator, make_worker, "test_patient", retryable=False)
    failed = await wait_status(coordinator, op_id, OpStatus.FAILED, OpStatus.COMPLETED)
    assert (failed.attempt, failed.error_type, failed.retryable) == (1, "ValueError", False)


async def test_a_type_without_a_retry_policy_fails_at_the_first_retryable_failure(
        coordinator: Coordinator, make_worker: MakeWorker) -> None:
    op_id = await submit(coordinator, make_worker, "test_impatient")
    failed = await wait_status(coordinator, op_id, OpStatus.FAILED, OpStatus.COMPLETED)
    assert (failed.attempt, failed.error_type, failed.retryable) == (1, "ktrdr.errors.Retryable", True)
