"""What a job handler gets: ``handler(ctx, params) -> result``, where ``ctx`` is a :class:`JobContext`.

The context offers the op's identity, a cancellation token, throttled progress, durable facts and
warnings for the record, a logger that names the op and attempt, and the shared stores as services
(``ktrdr.runtime.services``), never a raw connection. Where its reports go is a :class:`Reporter`:
NATS subjects in a worker (:class:`NatsReporter`), lists in the handler harness
(``ktrdr.runtime.harness``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol, TypeVar

from pydantic import BaseModel

from ktrdr.cancel import CancelToken
from ktrdr.runtime.publish import AckedPublisher
from ktrdr.runtime.services import Datasets, Models, OpBlobs, ResultBlobs, Services
from ktrdr.runtime.stalls import StallWatch, handler_name
from subjects import names
from subjects.models import JobMessage, OpEvent, OpEventKind, ProgressUpdate

log = logging.getLogger(__name__)

T = TypeVar("T")

PROGRESS_INTERVAL_S = 0.1  # at most ~10 progress messages per second per operation


class Reporter(Protocol):
    """Where a context's progress and info events go."""

    async def progress(self, update: ProgressUpdate) -> None: ...

    async def event(self, event: OpEvent) -> None: ...


class NatsReporter:
    """A worker's: ``ops.<id>.progress.<host>`` (best effort) and ``ops.<id>.events.<host>`` (stored,
    acknowledged), under the name of the host whose key it holds."""

    def __init__(self, publisher: AckedPublisher, *, host: str) -> None:
        self.publisher = publisher
        self.host = host

    async def progress(self, update: ProgressUpdate) -> None:
        await self.publisher.publish(names.ops_progress(update.op_id, self.host), update.encode())

    async def event(self, event: OpEvent) -> None:
        await self.publisher.publish(names.ops_events(event.op_id, self.host), event.encode())


class _OpLog(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        return f"[{self.extra['op_id']}#{self.extra['attempt']}] {msg}", kwargs  # type: ignore[index]


# Looked up once: getLogger takes the logging module's lock on every call.
_OP_LOGGER = logging.getLogger("ktrdr.op")


class JobContext:
    """Handed to every handler. Safe to use from the handler's worker thread.

    ``progress(...)`` may be called as often as the handler likes: updates are coalesced and at
    most one is published per ``PROGRESS_INTERVAL_S``; the last one is always published before
    the operation's outcome.
    """

    def __init__(
        self,
        *,
        job: JobMessage,
        worker_id: str,
        reporter: Reporter,
        services: Services,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.job = job
        self.op_id = job.op_id
        self.attempt = job.attempt
        self.worker_id = worker_id
        self.loop = loop
        self.token = CancelToken()
        self.log: logging.LoggerAdapter = _OpLog(  # type: ignore[type-arg]
            _OP_LOGGER, {"op_id": job.op_id, "attempt": job.attempt})
        self.datasets: Datasets = services.datasets
        self.models: Models = services.models
        # Its own results (put, get), and another op's: ``await ctx.results.of(op_id)``.
        self.results = ResultBlobs(services.results, services.records, job.op_id, job.attempt)
        # Each checkpoint is reported as it is written, so a retry elsewhere resumes from it.
        self.checkpoints = OpBlobs(services.checkpoints, job.op_id, job.attempt, latest=job.checkpoint,
                                   on_change=self._checkpointed)
        self._reporter = reporter
        self._pending: ProgressUpdate | None = None
        self._last_sent = 0.0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._publishing: asyncio.Task[None] | None = None
        self._info_tasks: set[asyncio.Future[Any]] = set()
        self._cancelled: asyncio.Event | None = None
        # The worker's ``started`` event, sent only once the handler reports or outlives a short
        # delay (``announce_soon``): an op that ends sooner needs one event, not two.
        self._announce: Callable[[], Awaitable[None]] | None = None
        self._announcing: asyncio.Future[None] | None = None

    @property
    def cancelled(self) -> bool:
        return self.token.cancelled

    def raise_if_cancelled(self) -> None:
        self.token.raise_if_cancelled()

    async def sleep(self, seconds: float) -> bool:
        """For async handlers: sleep up to ``seconds`` on the event loop, waking at once on
        cancellation. Returns whether the operation was cancelled."""
        if self._cancelled is None:
            self._cancelled = asyncio.Event()
            event, loop = self._cancelled, self.loop
            self.token.on_cancel(lambda: loop.call_soon_threadsafe(event.set))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._cancelled.wait(), seconds)
        return self.token.cancelled

    def progress(self, **fields: Any) -> None:
        update = ProgressUpdate(op_id=self.op_id, worker_id=self.worker_id, attempt=self.attempt, **fields)
        if self._on_loop():
            self._offer(update)
        else:
            self.loop.call_soon_threadsafe(self._offer, update)

    def info(self, **facts: Any) -> None:
        """Record facts about this attempt in the op record (``Operation.info``), durably.

        E.g. ``ctx.info(resumed_from_epoch=12)``. Published as an ``info`` event before the outcome.
        """
        self._publish_info(OpEvent(op_id=self.op_id, event=OpEventKind.INFO, worker_id=self.worker_id,
                                   attempt=self.attempt, context=facts))

    def warn(self, message: str) -> None:
        """Add ``message`` to the op record's ``warnings``, durably: something the user should know
        about a result that is still a result (e.g. a backtest on its model's training data).
        Published as an ``info`` event carrying the message, before the outcome."""
        self._publish_info(OpEvent(op_id=self.op_id, event=OpEventKind.INFO, worker_id=self.worker_id,
                                   attempt=self.attempt, message=message))

    def _checkpointed(self, name: str | None) -> None:
        self._publish_info(OpEvent(op_id=self.op_id, event=OpEventKind.INFO, worker_id=self.worker_id,
                                   attempt=self.attempt, checkpoint=name or ""))

    def defer_start(self, announce: Callable[[], Awaitable[None]]) -> None:
        """``announce`` sends the attempt's ``started`` event: called at most once, before any
        progress or info event of this context (the stream keeps an op's events in that order)."""
        self._announce = announce

    def announce_soon(self) -> None:
        """Send the ``started`` event now (the handler has run long enough to be seen running)."""
        if self._announcing is None and self._announce is not None:
            self._announcing = asyncio.ensure_future(self._announce())

    async def _announced(self) -> None:
        self.announce_soon()
        if self._announcing is not None:
            await asyncio.shield(self._announcing)

    async def _report_event(self, event: OpEvent) -> None:
        await self._announced()
        await self._reporter.event(event)

    def _publish_info(self, event: OpEvent) -> None:
        coro = self._report_event(event)
        if self._on_loop():
            future: asyncio.Future[Any] = asyncio.ensure_future(coro)
        else:
            future = asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop), loop=self.loop)
        self._info_tasks.add(future)

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """For blocking handlers (run in a thread): run a coroutine, a service call for instance, on
        the worker's event loop and wait for it."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def _on_loop(self) -> bool:
        try:
            return asyncio.get_running_loop() is self.loop
        except RuntimeError:
            return False

    def _offer(self, update: ProgressUpdate) -> None:
        self._pending = update
        if self._flush_handle is not None:
            return
        delay = max(0.0, self._last_sent + PROGRESS_INTERVAL_S - time.monotonic())
        self._flush_handle = self.loop.call_later(delay, self._start_publish)

    def _start_publish(self) -> None:
        self._flush_handle = None
        if self._publishing is None or self._publishing.done():
            self._publishing = self.loop.create_task(self._publish_pending())

    async def _publish_pending(self) -> None:
        update, self._pending = self._pending, None
        if update is None:
            return
        self._last_sent = time.monotonic()
        try:
            await self._announced()
            await self._reporter.progress(update)
        except Exception as exc:  # progress is best effort; the outcome event is not
            log.warning("progress for %s not published: %s", self.op_id, exc)
        if self._pending is not None and self._flush_handle is None:
            self._offer(self._pending)

    async def flush(self) -> None:
        """Publish what is pending now; called before the outcome event. From here on no
        ``started`` event goes out unless one already has (the outcome says it all)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._publishing is not None:
            await asyncio.shield(self._publishing)
        if self._pending is not None:
            await self._publish_pending()
        if self._info_tasks:
            await asyncio.gather(*self._info_tasks, return_exceptions=True)
            self._info_tasks.clear()
        self._announce = None
        if self._announcing is not None:
            with contextlib.suppress(Exception):  # a started event lost is no reason to lose the outcome
                await asyncio.shield(self._announcing)


Handler = Callable[[JobContext, Any], "BaseModel | dict[str, Any] | None | Awaitable[Any]"]
"""``handler(ctx, params) -> result``: params as the type's model, the result as its result model
(a dict is validated into it). A coroutine function runs on the event loop; any other in a thread."""


# The process's watch on coroutine handlers (``ktrdr.runtime.stalls``): a worker may pass its own.
STALLS = StallWatch()


async def call_handler(handler: Handler, ctx: JobContext, params: Any, *, stalls: StallWatch | None = None) -> Any:
    """Run ``handler``: a coroutine function on the event loop, each of its steps timed (``stalls``,
    else :data:`STALLS`: a step that holds the loop is warned about), any other in a thread."""
    # A handler object (BacktestHandler) is async when its __call__ is.
    if inspect.iscoroutinefunction(handler if inspect.isroutine(handler) else type(handler).__call__):
        watch = stalls if stalls is not None else STALLS
        return await watch.run(handler(ctx, params), name=handler_name(handler))  # type: ignore[arg-type]
    return await asyncio.to_thread(handler, ctx, params)
