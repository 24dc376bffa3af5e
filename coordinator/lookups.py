"""Admission's read-only view of the platform (``ktrdr.optypes.lookups.Lookups``), as the coordinator
answers it: op records from memory (``coordinator.operations``), datasets from the ``data`` store's
object infos (``ktrdr.data.catalog.DataCatalog``: listed at most once per couple of seconds, one read
shared by every submission waiting on it).
"""

from __future__ import annotations

from collections.abc import Sequence

from coordinator.operations import Operations
from ktrdr.data.catalog import DataCatalog, StoredData
from ktrdr.optypes.lookups import Unreadable
from subjects.models import Operation


class PlatformLookups:
    def __init__(self, *, ops: Operations, catalog: DataCatalog) -> None:
        self.ops = ops
        self.catalog = catalog

    async def op(self, op_id: str) -> Operation | None:
        return self.ops.get(op_id)

    async def datasets(self, *, fresh: bool = False) -> Sequence[StoredData]:
        try:
            return await self.catalog.datasets(fresh=fresh)
        except Exception as exc:
            raise Unreadable(f"{type(exc).__name__}: {exc}") from exc

    async def dataset(self, symbol: str, timeframe: str, *, fresh: bool = False) -> StoredData | None:
        try:
            return await self.catalog.dataset(symbol, timeframe, fresh=fresh)
        except Exception as exc:
            raise Unreadable(f"{type(exc).__name__}: {exc}") from exc
