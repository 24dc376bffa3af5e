"""One error model (ktrdr.errors): a root, one field error under every old name, failures typed."""

from __future__ import annotations

import nats.errors
import pytest

from ktrdr import errors
from ktrdr.errors import FieldError, FieldTooLarge, KtrdrError, Retryable, failure_of
from subjects.limits import MAX_ERROR_TYPE_CHARS


def test_every_field_error_of_the_platform_is_one_class_under_its_old_names() -> None:
    from coordinator.admission import TooLarge
    from ktrdr.backtest.checks import RequestProblem
    from ktrdr.client import Invalid
    from ktrdr.client import KtrdrError as ClientError
    from ktrdr.optypes import Rejected

    assert Invalid is Rejected is RequestProblem is FieldError
    assert TooLarge is FieldTooLarge and ClientError is KtrdrError


def test_a_field_error_names_its_field_answers_422_and_is_caught_as_before() -> None:
    refused = FieldError("grid.slow", "must be above fast")
    assert (str(refused), refused.field, refused.message, refused.code) == (
        "invalid grid.slow: must be above fast", "grid.slow", "must be above fast", 422)
    # Caught where the three copies were: as a ValueError (the domain's), a RuntimeError (the client's).
    assert isinstance(refused, KtrdrError) and isinstance(refused, ValueError) and isinstance(refused, RuntimeError)


def test_params_too_large_is_a_field_error_saying_so() -> None:
    too_large = FieldTooLarge("params.strategy", "70000 characters")
    assert str(too_large) == "invalid params.strategy: too large: 70000 characters"


def test_the_coordinator_answers_a_field_error_once_as_a_422_naming_the_field() -> None:
    from coordinator.errors import InvalidRequest, TooLarge, op_error

    answer = op_error(FieldError("strategy", "no such strategy"))
    assert isinstance(answer, InvalidRequest) and not isinstance(answer, TooLarge)
    assert answer.detail == [{"field": "strategy", "message": "no such strategy"}]
    assert isinstance(op_error(FieldTooLarge("params", "big")), TooLarge)


class Busy(Exception):
    retryable = True


class NotAgain(Retryable):
    retryable = False


@pytest.mark.parametrize(("exc", "expected"), [
    (ValueError("bad"), ("ValueError", False)),
    (Retryable("the store is away"), ("ktrdr.errors.Retryable", True)),
    (Busy(), (f"{__name__}.Busy", True)),
    (NotAgain("no"), (f"{__name__}.NotAgain", False)),
    (nats.errors.TimeoutError(), ("nats.errors.TimeoutError", True)),
    (FieldError("x", "y"), ("ktrdr.errors.FieldError", False)),
], ids=["a bug is final", "Retryable is retryable", "a retryable attribute says so",
        "a subclass may say not", "JetStream electing a leader is retryable", "bad input is final"])
def test_a_handler_failure_is_reported_with_its_type_and_whether_it_is_retryable(
        exc: BaseException, expected: tuple[str, bool]) -> None:
    assert failure_of(exc) == expected


def test_an_error_type_is_bounded() -> None:
    long = type("E" * 500, (Exception,), {})
    assert len(errors.error_type(long())) == MAX_ERROR_TYPE_CHARS
