"""The operations service: the ``ops`` bucket as the rest of the coordinator sees it.

One object for the parts that share it: the mirror (``coordinator.mirror``: records held in memory
and the index kept in step), the store (``coordinator.store``: the only writer, by compare-and-set)
and, beneath both, the lifecycle (``coordinator.lifecycle``: every change a record goes through, as
pure functions). What workers publish is folded in by ``coordinator.fold``.
"""

from __future__ import annotations

import asyncio
import builtins
from collections.abc import Iterable

from nats.js.kv import KeyValue

from coordinator.history import OpsIndex
from coordinator.metrics import Metrics
from coordinator.mirror import INDEX_FLUSH_S, OpsMirror
from coordinator.store import (
    Applied,
    Change,
    ConcurrentWriters,
    Listener,
    OperationExists,
    OpsStore,
    RecordMayYetBeStored,
)
from ktrdr.runtime.publish import AckedPublisher
from ktrdr.runtime.retry import RetryPolicy
from subjects import limits
from subjects.models import ListRequest, Operation, OpList

__all__ = ["Applied", "Change", "ConcurrentWriters", "OperationExists", "Operations", "RecordMayYetBeStored"]


class Operations:
    """Reads from the mirror, writes through the store."""

    def __init__(self, *, bucket: KeyValue, publisher: AckedPublisher, metrics: Metrics, index: OpsIndex,
                 recent: int = 5000, index_flush_s: float = INDEX_FLUSH_S) -> None:
        self.bucket = bucket
        self.publisher = publisher
        self.metrics = metrics
        self.index = index
        self.mirror = OpsMirror(index=index, metrics=metrics, recent=recent, index_flush_s=index_flush_s)
        self.store = OpsStore(bucket=bucket, publisher=publisher, metrics=metrics, mirror=self.mirror)

    # --- reading (the mirror) -----------------------------------------------------------------

    async def load(self) -> int:
        return await self.mirror.load(self.publisher.nc.jetstream(timeout=10.0))

    def get(self, op_id: str) -> Operation | None:
        return self.mirror.get(op_id)

    def all(self) -> Iterable[Operation]:
        return self.mirror.all()

    def children(self, parent_id: str) -> list[Operation]:
        return self.mirror.children(parent_id)

    def list(self, query: ListRequest) -> tuple[int, list[Operation]]:
        return self.mirror.list(query)

    def page(self, query: ListRequest, *, max_bytes: int = limits.MAX_LIST_PAGE_BYTES) -> OpList:
        return self.mirror.page(query, max_bytes=max_bytes)

    def total(self) -> int:
        return self.mirror.total()

    def status_counts(self) -> dict[str, int]:
        return self.mirror.status_counts()

    def collect(self) -> None:
        self.mirror.collect()

    def flush_index(self) -> None:
        self.mirror.flush_index()

    def forget(self, op_ids: builtins.list[str], *, archived: bool) -> None:
        self.mirror.forget(op_ids, archived=archived)

    async def stop(self) -> None:
        await self.mirror.stop()

    # --- writing (the store) ------------------------------------------------------------------

    @property
    def withdrawing(self) -> set[str]:
        return self.store.withdrawing

    def subscribe(self, listener: Listener) -> None:
        self.store.subscribe(listener)

    async def create(self, op: Operation, *, retry: RetryPolicy | None = None) -> Operation:
        return await self.store.create(op, retry=retry)

    async def withdraw(self, op_id: str, payload: bytes) -> None:
        await self.store.withdraw(op_id, payload)

    async def mutate(self, op_id: str, change: Change) -> Applied:
        return await self.store.mutate(op_id, change)

    def mutate_soon(self, op_id: str, change: Change) -> asyncio.Future[Applied]:
        return self.store.mutate_soon(op_id, change)
