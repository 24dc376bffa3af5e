"""A handle on one operation: wait for it (with a progress bar), cancel it, read its results."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

from ktrdr.client.errors import KtrdrError
from ktrdr.client.progress import ProgressView, view_for
from subjects.models import CancelReply, Operation, OpEvent, OpStatus, ProgressUpdate

if TYPE_CHECKING:
    from ktrdr.client.results import OpResults


class OpClient(Protocol):
    """What a handle asks of its client: ``ktrdr.client.aio.AsyncClient``, which makes handles and so
    is not imported here."""

    async def get(self, op_id: str) -> Operation: ...

    def watch(self, op_id: str) -> AsyncIterator[Operation | ProgressUpdate | OpEvent]: ...

    async def document(self, op: Operation) -> bytes | None: ...

    async def cancel(self, op_id: str, reason: str = ...) -> CancelReply: ...


class OpFailed(KtrdrError):
    """The op ended without completing (failed or cancelled); ``op`` is its final record."""

    def __init__(self, op: Operation) -> None:
        why = op.error if op.status is OpStatus.FAILED else op.cancel_reason
        super().__init__(f"{op.op_id} {op.status.value}" + (f": {why}" if why else ""), 409)
        self.op = op


class NotDone(KtrdrError):
    """Results asked of an op that has not ended; ``wait()`` first."""

    def __init__(self, op: Operation) -> None:
        super().__init__(f"{op.op_id} is {op.status.value}: it has no results yet (wait() for them)", 409)
        self.op = op


class AsyncOp:
    """One operation, by id: ``await op.wait()`` returns its results as pandas-backed objects
    (:mod:`ktrdr.client.results`); ``record`` is its record as last read."""

    def __init__(self, client: OpClient, op: Operation | str) -> None:
        self.client = client
        self.record: Operation | None = op if isinstance(op, Operation) else None
        self.op_id = op.op_id if isinstance(op, Operation) else op

    def __repr__(self) -> str:
        status = self.record.status.value if self.record else "?"
        return f"<op {self.op_id} {status}>"

    async def refresh(self) -> Operation:
        """The op's record, read now."""
        self.record = await self.client.get(self.op_id)
        return self.record

    async def follow(self, *, progress: bool | ProgressView = True) -> Operation:
        """Its record once it has ended (completed, failed or cancelled), drawing ``progress`` on the
        way (True: a bar in this terminal or notebook)."""
        view = view_for(self.op_id, progress)
        final: Operation | None = None
        try:
            async for item in self.client.watch(self.op_id):
                if isinstance(item, Operation):
                    final = self.record = item
                view.update(item)
        finally:
            view.close(final)
        assert final is not None  # watch() always yields the record first
        return final

    async def wait(self, *, progress: bool | ProgressView = True, timeout: float | None = None) -> OpResults:
        """Its results once it completes; :class:`OpFailed` if it fails or is cancelled, TimeoutError
        after ``timeout`` seconds (the op goes on: wait again, or cancel it)."""
        final = await asyncio.wait_for(self.follow(progress=progress), timeout)
        return await self._results(final)

    async def results(self) -> OpResults:
        """The results of an op that has ended; :class:`NotDone` while it runs."""
        op = await self.refresh()
        if not op.status.terminal:
            raise NotDone(op)
        return await self._results(op)

    async def _results(self, op: Operation) -> OpResults:
        from ktrdr.client.results import results_of

        if op.status is not OpStatus.COMPLETED:
            raise OpFailed(op)
        return results_of(op, await self.client.document(op))

    async def cancel(self, reason: str = "cancelled by user") -> CancelReply:
        return await self.client.cancel(self.op_id, reason)
