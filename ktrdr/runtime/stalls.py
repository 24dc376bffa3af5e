"""Coroutine handlers that hold the event loop: each step timed, the first stall of a handler warned about.

A coroutine handler (``async def``) runs on the worker's event loop, beside its heartbeat, the
progress it publishes and every other slot's job. CPU work between two of its awaits holds all of
them up: a step of a few seconds misses heartbeats, one past the lease's TTL loses the worker. So
:meth:`StallWatch.run` drives a handler's coroutine a step at a time (a step: from one await to the
next) and times each. A step longer than ``threshold_s`` is a stall: counted per handler, and the
first of each handler is logged as a warning that names it and says what to do instead (a plain
``def`` handler runs in a thread; ``await asyncio.to_thread(...)`` moves one piece off the loop).
With ``refuse``, a stall also fails the handler (:class:`BlockingHandler`), as the handler harness
may ask for in tests.

Timing a step costs two clock reads, and blames the handler that held the loop: not whichever
coroutine happened to be waiting when the loop woke up late.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

STALL_S = 0.25  # a quarter of the default heartbeat interval (KTRDR_HEARTBEAT_S)


@dataclass(frozen=True)
class Stall:
    handler: str
    seconds: float


class BlockingHandler(RuntimeError):
    """A coroutine handler held the event loop past the threshold of a watch that refuses stalls."""


class StallWatch:
    def __init__(self, *, threshold_s: float = STALL_S, refuse: bool = False,
                 on_stall: Callable[[Stall], None] | None = None) -> None:
        self.threshold_s = threshold_s
        self.refuse = refuse
        self.on_stall = on_stall
        self.counts: Counter[str] = Counter()  # stalls by handler name
        self.longest: dict[str, float] = {}  # each handler's longest step that stalled, in seconds

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    async def run(self, coro: Coroutine[Any, Any, T], *, name: str) -> T:
        """Await ``coro`` (a handler's), timing each of its steps."""
        return await _Stepped(coro, lambda seconds: self._timed(name, seconds))

    def _timed(self, name: str, seconds: float) -> BlockingHandler | None:
        if seconds <= self.threshold_s:
            return None
        self.counts[name] += 1
        self.longest[name] = max(seconds, self.longest.get(name, 0.0))
        message = (f"coroutine handler {name} held the event loop for {seconds:.2f} s without awaiting "
                   f"(threshold {self.threshold_s:g} s): heartbeats, progress and other jobs waited. Do CPU or "
                   "blocking work in a plain `def` handler (it runs in a thread) or under "
                   "`await asyncio.to_thread(...)`")
        if self.counts[name] == 1:
            log.warning("%s", message)
        if self.on_stall is not None:
            self.on_stall(Stall(handler=name, seconds=seconds))
        return BlockingHandler(message) if self.refuse else None


def handler_name(handler: Any) -> str:
    """``worker_x.handler.run_montecarlo``, or the class of a handler object."""
    target = handler if hasattr(handler, "__qualname__") else type(handler)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"


class _Stepped(Awaitable[T]):
    """Awaits a coroutine as ``await coro`` would, passing what it awaits up to the task unchanged,
    and calling ``timed(seconds)`` after each of its steps; an exception ``timed`` returns is thrown
    into the coroutine at that point (or raised, when the coroutine has just ended)."""

    __slots__ = ("coro", "timed")

    def __init__(self, coro: Coroutine[Any, Any, T], timed: Callable[[float], BaseException | None]) -> None:
        self.coro = coro
        self.timed = timed

    def __await__(self) -> Generator[Any, Any, T]:
        coro = self.coro
        value: Any = None
        error: BaseException | None = None
        while True:
            began = time.perf_counter()
            try:
                awaited = coro.throw(error) if error is not None else coro.send(value)
            except StopIteration as done:
                refused = self.timed(time.perf_counter() - began)
                if refused is not None:
                    raise refused from None
                return done.value  # type: ignore[no-any-return]
            except BaseException:
                self.timed(time.perf_counter() - began)  # counted; the handler's own error goes on
                raise
            refused = self.timed(time.perf_counter() - began)
            if refused is not None:
                value, error = None, refused
                continue
            try:
                value, error = (yield awaited), None
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # a cancellation, or the awaited future's error
                value, error = None, exc
