"""Running a process's main coroutine, on uvloop where it is installed (it is a dependency on
Linux and macOS: the NATS client and the status API spend much of their time in the event loop)."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# Container allocations between young-generation collections (CPython's default is 700).
GEN0_THRESHOLD = 10_000


def tune_gc() -> None:
    """Keep the cyclic garbage collector off the hot path of a long-running process.

    Everything imported by now (pandas and numpy included: ~80,000 objects) lives as long as the
    process, yet every full collection walked it again: 45-60 ms each, and with young collections
    every 700 allocations the coordinator spent ~60 µs of CPU per operation in the collector.
    Freezing the start-up heap and collecting the young generation less often cut that tenfold
    (bench/README.md). Garbage without cycles is still freed at once by reference counting.
    """
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, GEN0_THRESHOLD), gen1, gen2)


def run(main: Coroutine[Any, Any, T]) -> T:
    tune_gc()
    try:
        import uvloop
    except ImportError:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        # A runner with a loop factory does not make its loop the thread's current one, so code
        # that asks the policy for the loop (ib_insync does, everywhere) would get a second one
        # and fail with "attached to a different loop".
        asyncio.set_event_loop(runner.get_loop())
        try:
            return runner.run(main)
        finally:
            asyncio.set_event_loop(None)
