"""The read-only view of the platform that admission gets (:class:`Lookups`), apart from the helpers
that use it (``ktrdr.optypes.lookups``): the declaration (``ktrdr.optypes.defn``) names this
protocol, and the helpers name the declaration, so the two live in separate modules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ktrdr.data.catalog import StoredData
from subjects.models import Operation

__all__ = ["Lookups", "Unreadable"]


class Unreadable(Exception):
    """A store that cannot be read now (JetStream electing a leader...): no reason to refuse anyone,
    so the check that needed it is skipped and the worker says what it finds."""


class Lookups(Protocol):
    async def op(self, op_id: str) -> Operation | None:
        """The op's record, None when there is no such op."""

    async def datasets(self, *, fresh: bool = False) -> Sequence[StoredData]:
        """Every dataset in the ``data`` store, with spans where known. ``fresh``: not from a cache.
        :class:`Unreadable` when the store cannot be read now."""

    async def dataset(self, symbol: str, timeframe: str, *, fresh: bool = False) -> StoredData | None:
        """One dataset with its span (None: not stored); may read the object for a span its info
        lacks. :class:`Unreadable` as :meth:`datasets`."""
