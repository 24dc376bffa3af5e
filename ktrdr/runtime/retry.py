"""One retry policy for the platform: how long to pause between tries, and for how long in all.

A JetStream leader election (a node lost, quorum regained) makes requests fail for a few seconds
with errors that pass by themselves; :func:`transient_js_error` recognises them and a
:class:`RetryPolicy` says how to wait them out. Every retry loop of the platform is one of these,
so how patient ktrdr is has one answer, written next to each use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, replace
from typing import TypeVar

import nats.errors
from nats.aio.client import Client
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

T = TypeVar("T")

# JetStream's "JetStream system temporarily unavailable": a stream, or the meta group, without a leader.
JS_TEMPORARILY_UNAVAILABLE = 10008
# "duplicate message id is in process" (a 409): an earlier publish with the same Nats-Msg-Id is still
# in flight at a leader that cannot commit it yet. Asked again later, it is stored or deduplicated.
JS_DUPLICATE_IN_PROCESS = 10158
# The stream refused to store a message: over its byte or message limits, or a subject of a
# write-once store written already ("maximum ... exceeded").
JS_STORE_REFUSED = 10077

# What an election looks like from a client: nobody stores the subject (no stream leader), no
# answer in time (a leader that lost its quorum), or the connection moving to another node.
_TRANSIENT: tuple[type[BaseException], ...] = (
    nats.errors.NoRespondersError,
    NoStreamResponseError,  # js.publish's name for no responders
    nats.errors.TimeoutError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.StaleConnectionError,
)


def transient_js_error(exc: BaseException, *, nc: Client | None = None) -> bool:
    """Whether ``exc`` is what JetStream answers while it elects a leader: worth trying again soon.

    ``ConnectionClosedError`` counts only when ``nc`` is given and still open (the publisher fails
    what was in flight across a reconnect with it); a closed client never comes back.
    """
    if isinstance(exc, APIError) and getattr(exc, "err_code", None) == JS_STORE_REFUSED:
        # A full store, or a subject written already (write-once): no election ends that.
        return False
    if isinstance(exc, ServiceUnavailableError):
        return True
    if isinstance(exc, APIError):
        # Some subclasses (the key-value errors) never set the fields.
        code, err_code = getattr(exc, "code", None), getattr(exc, "err_code", None)
        return code == 503 or err_code in (JS_TEMPORARILY_UNAVAILABLE, JS_DUPLICATE_IN_PROCESS)
    if isinstance(exc, nats.errors.ConnectionClosedError):
        return nc is not None and not nc.is_closed
    return isinstance(exc, _TRANSIENT)


def any_error(exc: BaseException) -> bool:
    """``retry_on`` for loops that retry whatever fails (each failure is logged by ``on_retry``)."""
    return True


@dataclass(frozen=True, kw_only=True)
class RetryPolicy:
    """Pauses of ``first_s``, growing by ``multiplier`` up to ``max_s``; at most ``attempts`` tries
    and ``budget_s`` seconds in all (None: no limit of that kind)."""

    first_s: float = 0.1
    max_s: float = 1.0
    multiplier: float = 2.0
    budget_s: float | None = None
    attempts: int | None = None

    def __post_init__(self) -> None:
        if self.first_s < 0 or self.max_s < self.first_s:
            raise ValueError(f"need 0 <= first_s <= max_s, got {self.first_s} and {self.max_s}")
        if self.multiplier < 1:
            raise ValueError(f"multiplier must be at least 1, got {self.multiplier}")
        if self.budget_s is not None and self.budget_s < 0:
            raise ValueError(f"budget_s must not be negative, got {self.budget_s}")
        if self.attempts is not None and self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")

    def delay(self, retry: int) -> float:
        """The pause before retry number ``retry`` (0: the first retry)."""
        try:
            return min(self.max_s, self.first_s * self.multiplier ** retry)
        except OverflowError:
            return self.max_s

    def delays(self) -> Iterator[float]:
        """The pauses between tries, in order: ``attempts - 1`` of them, endless without ``attempts``.

        The budget is time, which only :meth:`run` can count (a try takes time too).
        """
        retry = 0
        while self.attempts is None or retry < self.attempts - 1:
            yield self.delay(retry)
            retry += 1

    def within(self, budget_s: float | None) -> RetryPolicy:
        """This policy with another budget (e.g. what is left of a request's)."""
        return replace(self, budget_s=budget_s)

    async def run(self, fn: Callable[[], Awaitable[T]], *, retry_on: Callable[[BaseException], bool],
                  on_retry: Callable[[BaseException, float], None] | None = None) -> T:
        """``await fn()`` until it succeeds, pausing after each failure that ``retry_on`` accepts.

        Past the tries or the budget, the last error is raised as it was. A try under way when the
        budget runs out is not cut off: abandoned, a write's outcome would be unknown (it may still be
        stored), so the budget bounds when the last try starts. The last pause is shortened so that
        one try starts right at the end of the budget.
        """
        loop = asyncio.get_running_loop()
        deadline = None if self.budget_s is None else loop.time() + self.budget_s
        pauses = self.delays()
        while True:
            try:
                return await fn()
            except Exception as exc:
                if not retry_on(exc):
                    raise
                pause = next(pauses, None)
                if pause is None:
                    raise
                if deadline is not None:
                    left = deadline - loop.time()
                    if left <= 0:
                        raise
                    pause = min(pause, left)
                if on_retry is not None:
                    on_retry(exc, pause)
                await asyncio.sleep(pause)
