"""Stopping background tasks within a bound."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterable

log = logging.getLogger(__name__)


async def cancel_and_wait(tasks: Iterable[asyncio.Future[object]], *, timeout: float = 5.0,
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
