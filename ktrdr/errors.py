"""One error model for the platform.

- :class:`KtrdrError`, the root: an error ktrdr raises on purpose, with the status it answers a
  request with (``code``: an HTTP status, also the NATS service error code).
- :class:`FieldError`: input refused, naming the field at fault. The domain raises it (an op type's
  admission, the strategy checks, the client before it sends) and it is mapped to an answer once:
  a 422 by ``coordinator.errors.op_error``, exit code 2 by the CLI. ``ktrdr.optypes.Rejected``,
  ``ktrdr.client.Invalid`` and ``ktrdr.backtest.checks.RequestProblem`` are other names of it.
- A handler's failure is recorded with its type and whether another attempt may get past it
  (:func:`failure_of`); an op whose type declares a retry policy (``OpType.retry``) is then retried.
  A failure is retryable when its exception says so (:class:`Retryable`, or ``retryable = True`` on
  any exception class) or when it is JetStream electing a leader; any other is final, since trying
  a bug or a bad input again only fails again.
"""

from __future__ import annotations

from ktrdr.runtime.retry import transient_js_error
from subjects.limits import MAX_ERROR_TYPE_CHARS


class KtrdrError(RuntimeError):
    """The root of the errors ktrdr raises on purpose; ``code``: the status a request is answered with."""

    def __init__(self, message: str, code: int = 400) -> None:
        super().__init__(message)
        self.code = code


class FieldError(KtrdrError, ValueError):
    """Input refused: ``field`` names the part at fault (``strategy``, ``grid.slow``, ``objective.metric``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"invalid {field}: {message}", 422)
        self.field, self.message = field, message


class FieldTooLarge(FieldError):
    """Input over ``subjects.limits``: it would be copied into every offer and the op record."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(field, f"too large: {message}")


class Retryable(KtrdrError):
    """A failure that another attempt may get past (a service busy, a store briefly away): raised by a
    handler, it has its op retried as its type's retry policy allows."""

    retryable = True

    def __init__(self, message: str, code: int = 503) -> None:
        super().__init__(message, code)


def error_type(exc: BaseException) -> str:
    """What a record calls the failure: the class's name, with its module unless a builtin."""
    kind = type(exc)
    name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
    return name[:MAX_ERROR_TYPE_CHARS]


def retryable(exc: BaseException) -> bool:
    """Whether another attempt may get past ``exc``."""
    flag = getattr(exc, "retryable", None)
    if isinstance(flag, bool):
        return flag
    return transient_js_error(exc)


def failure_of(exc: BaseException) -> tuple[str, bool]:
    """A handler's failure as its worker reports it: its type, and whether it is retryable."""
    return error_type(exc), retryable(exc)
