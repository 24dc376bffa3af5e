"""The client for code that is not async: a notebook cell, a script.

:class:`Client` runs an :class:`~ktrdr.client.aio.AsyncClient` on an event loop of its own, in a
daemon thread, and waits for each call. A notebook's kernel already runs a loop in the main thread
(``asyncio.run`` refuses to start another there), so the client's loop cannot be that thread's.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from ktrdr.client.aio import AsyncClient
from ktrdr.client.handles import AsyncOp
from ktrdr.client.progress import ProgressView

if TYPE_CHECKING:
    import os

    import pandas as pd

    from ktrdr.client.results import OpResults
    from subjects.models import CancelReply, Operation, WorkerLease

T = TypeVar("T")


class _Loop:
    """An event loop on a daemon thread; ``run`` waits for a coroutine on it. An interrupt (Ctrl-C,
    a notebook's stop button) cancels the coroutine and is raised in the caller."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="ktrdr-client", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self.loop.is_closed():
            coro.close()
            raise RuntimeError("this client is closed")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()
            raise

    def close(self) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()


class Op:
    """One operation, by id: ``op.wait(progress=True)`` returns its results (series and tables as
    pandas objects); ``op.cancel()``; ``op.record`` is its record as last read."""

    def __init__(self, runner: _Loop, handle: AsyncOp) -> None:
        self._run, self._handle = runner.run, handle

    @property
    def op_id(self) -> str:
        return self._handle.op_id

    @property
    def record(self) -> Operation | None:
        return self._handle.record

    def __repr__(self) -> str:
        return repr(self._handle)

    def refresh(self) -> Operation:
        return self._run(self._handle.refresh())

    @property
    def status(self) -> str:
        """Its status, read now (``pending``, ``running``, ``completed``...)."""
        return self.refresh().status.value

    def wait(self, *, progress: bool | ProgressView = True, timeout: float | None = None) -> OpResults:
        """Its results once it completes, with a progress bar in this notebook or terminal (``progress=False``:
        none); ``OpFailed`` if it fails or is cancelled; ``TimeoutError`` after ``timeout`` seconds.
        Interrupting the wait leaves the op running: ``cancel()`` stops it."""
        return self._run(self._handle.wait(progress=progress, timeout=timeout))

    def follow(self, *, progress: bool | ProgressView = True) -> Operation:
        """Its final record, whatever the outcome (no exception for a failed op)."""
        return self._run(self._handle.follow(progress=progress))

    def results(self) -> OpResults:
        return self._run(self._handle.results())

    def cancel(self, reason: str = "cancelled by user") -> CancelReply:
        return self._run(self._handle.cancel(reason))


class Client:
    """A connection to a ktrdr platform, found as the CLI finds it (``KTRDR_*`` variables, else the
    context ``ktrdr up`` wrote; ``context=`` another one by name or path)::

        from ktrdr import Client
        c = Client()
        run = c.backtest("sma_crossover", symbol="SYN", parameters={"fast": 10})
        results = run.wait()            # a progress bar, then the results
        results.equity.plot()

    Closed by ``close()`` or as a context manager; a process that ends closes it too.
    """

    def __init__(self, *, context: str | None = None, **options: Any) -> None:
        self._loop = _Loop()
        try:
            self.aio = self._loop.run(AsyncClient.open(context=context, **options))
        except BaseException:
            self._loop.close()
            raise

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<ktrdr.Client {self.aio.nats_url} ({self.aio.source or 'given'})>"

    def close(self) -> None:
        if not self._loop.loop.is_closed():
            try:
                self._loop.run(self.aio.close())
            finally:
                self._loop.close()

    def _op(self, handle: AsyncOp) -> Op:
        return Op(self._loop, handle)

    def backtest(self, strategy: str | os.PathLike[str], *, symbol: str, timeframe: str = "1h",
                 op_id: str | None = None, **fields: Any) -> Op:
        """A backtest; see :meth:`AsyncClient.backtest`."""
        return self._op(self._loop.run(self.aio.backtest(strategy, symbol=symbol, timeframe=timeframe, op_id=op_id,
                                                         **fields)))

    def sweep(self, strategy: str | os.PathLike[str], *, grid: dict[str, Any], symbol: str, timeframe: str = "1h",
              objective: str | dict[str, Any] | None = None, op_id: str | None = None, **fields: Any) -> Op:
        """A parameter sweep; see :meth:`AsyncClient.sweep`."""
        return self._op(self._loop.run(self.aio.sweep(strategy, grid=grid, symbol=symbol, timeframe=timeframe,
                                                      objective=objective, op_id=op_id, **fields)))

    def walkforward(self, strategy: str | os.PathLike[str], *, symbol: str, timeframe: str = "1h",
                    grid: dict[str, Any] | None = None, objective: str | dict[str, Any] | None = None,
                    op_id: str | None = None, **fields: Any) -> Op:
        """A walk-forward analysis; see :meth:`AsyncClient.walkforward`."""
        return self._op(self._loop.run(self.aio.walkforward(strategy, symbol=symbol, timeframe=timeframe, grid=grid,
                                                            objective=objective, op_id=op_id, **fields)))

    def train(self, strategy: str | os.PathLike[str], *, symbol: str | None = None, op_id: str | None = None,
              **fields: Any) -> Op:
        """A neuro-fuzzy training; see :meth:`AsyncClient.train`."""
        return self._op(self._loop.run(self.aio.train(strategy, symbol=symbol, op_id=op_id, **fields)))

    def start(self, op_type: str, params: Any = None, *, op_id: str | None = None, **fields: Any) -> Op:
        """An op of any declared type; see :meth:`AsyncClient.start`."""
        return self._op(self._loop.run(self.aio.start(op_type, params, op_id=op_id, **fields)))

    def op(self, op_id: str) -> Op:
        """A handle on an op that exists already."""
        return self._op(self.aio.op(op_id))

    def ops(self, **query: Any) -> pd.DataFrame:
        """Operations as a DataFrame; see :meth:`AsyncClient.ops`."""
        return self._loop.run(self.aio.ops(**query))

    def results(self, op_id: str) -> OpResults:
        return self._loop.run(self.aio.results(op_id))

    def cancel(self, op_id: str, reason: str = "cancelled by user") -> CancelReply:
        return self._loop.run(self.aio.cancel(op_id, reason))

    def workers(self) -> list[WorkerLease]:
        return self._loop.run(self.aio.workers())
