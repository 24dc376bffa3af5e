"""Background tasks: kept, run periodically, and stopped within a bound."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

log = logging.getLogger(__name__)


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]], *, timeout: float = 5.0,
                          what: str = "task") -> None:
    """Cancel ``tasks`` and wait for them at most ``timeout`` seconds.

    A task that ignores its cancellation must not hang a shutdown: it is logged with its stack
    (the clue to fix it) and left behind.
    """
    tasks = [t for t in tasks if not t.done()]
    for task in tasks:
        task.cancel()
    if not tasks:
        return
    _, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        stack = io.StringIO()
        if isinstance(task, asyncio.Task):
            task.print_stack(file=stack)
        log.error("%s %r did not stop within %.1f s after cancel:\n%s", what, task, timeout, stack.getvalue())


async def every(interval_s: float, step: Callable[[], Awaitable[object]], *, what: str) -> None:
    """Run ``step`` now and then every ``interval_s`` until cancelled. A step that fails (an election,
    a reconnect) is logged, and the next one tries again."""
    while True:
        try:
            await step()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("%s failed: %s: %s", what, type(exc).__name__, exc)
        await asyncio.sleep(interval_s)


class TaskSet:
    """Background tasks an owner starts from callbacks and must not lose: each is kept until done
    (the loop holds only weak references), and all are cancelled and awaited on :meth:`stop`."""

    def __init__(self, *, what: str) -> None:
        self.what = what
        self.stopped = False
        self._tasks: set[asyncio.Task[None]] = set()

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        if self.stopped:
            coro.close()
            return
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        self.stopped = True
        await cancel_and_wait(self._tasks, what=self.what)
