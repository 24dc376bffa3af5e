"""What admission may read of the platform: an op's record and the stored datasets, read-only.

An op type's ``verify`` (``ktrdr.optypes.defn``) gets a :class:`Lookups` and refuses a submission
whose params name something that is not there (:class:`~ktrdr.optypes.defn.Rejected`, a 422 naming
the field) before anything is queued: a source op that does not exist or has not completed, bars
that are not stored. The coordinator's lookups read its in-memory records and the ``data`` store's
object infos (``coordinator.lookups``), the harness's its in-memory stores
(``ktrdr.runtime.harness``); the helpers below word every refusal the same way, naming what does exist.

Lookups may answer from a cache: a helper that finds nothing asks again for a fresh answer before it
refuses, so a cached answer can only ever let a request through, never refuse one wrongly.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from ktrdr.data.catalog import StoredData, listing, utc, when
from ktrdr.optypes.defn import Rejected
from ktrdr.optypes.readonly import Lookups, Unreadable
from subjects.models import Operation, OpStatus

if TYPE_CHECKING:
    from ktrdr.optypes.defn import OpType

__all__ = ["Lookups", "StoredData", "Unreadable", "completed", "stored_bars"]

log = logging.getLogger(__name__)


async def completed(lookups: Lookups, op_id: str, *, field: str, of: OpType[Any, Any] | Sequence[OpType[Any, Any]]
                    ) -> Operation:
    """The record of ``op_id``, a completed op of one of the types ``of``; else :class:`Rejected` on
    ``field`` saying what it is instead."""
    types = (of,) if not isinstance(of, Sequence) else tuple(of)
    wanted = " or ".join(t.name for t in types)
    op = await lookups.op(op_id)
    if op is None:
        raise Rejected(field, f"no operation {op_id!r}: give the id of a completed {wanted}")
    if op.type not in {t.name for t in types}:
        raise Rejected(field, f"{op_id} is a {op.type}, not a {wanted}")
    if op.status is not OpStatus.COMPLETED:
        ended = "" if not op.status.terminal else f" ({op.error or op.cancel_reason or 'no result'})"
        raise Rejected(field, f"{op_id} is {op.status.value}{ended}: its result exists once it completes")
    return op


async def stored_bars(lookups: Lookups, *, symbol: str, timeframes: Sequence[str], start: datetime | None,
                      end: datetime | None, symbol_field: str = "symbol", timeframe_field: str = "timeframe"
                      ) -> list[StoredData]:
    """The stored datasets of ``symbol`` in each of ``timeframes``, each holding bars between ``start``
    and ``end``; else :class:`Rejected` on the field at fault, naming what is stored."""
    found: list[StoredData] = []
    for timeframe in timeframes:
        try:
            stored = await lookups.dataset(symbol, timeframe)
            if stored is None or not stored.holds(start, end):
                stored = await lookups.dataset(symbol, timeframe, fresh=True)
            everything = await lookups.datasets() if stored is None else ()
        except Unreadable as exc:
            log.warning("%s %s: bars not checked, the data store cannot be read now (%s)", symbol, timeframe, exc)
            continue
        if stored is None:
            raise _missing(symbol, timeframe, everything, symbol_field=symbol_field, timeframe_field=timeframe_field)
        if not stored.holds(start, end):
            field = "start" if start is not None and stored.last is not None and utc(start) > stored.last else "end"
            raise Rejected(field, f"no {symbol} {timeframe} bars between {_bound(start, 'the first bar')} and "
                                  f"{_bound(end, 'the last bar')}: stored {stored}")
        found.append(stored)
    return found


def _bound(moment: datetime | None, otherwise: str) -> str:
    return otherwise if moment is None else when(moment)


def _missing(symbol: str, timeframe: str, everything: Sequence[StoredData], *, symbol_field: str,
             timeframe_field: str) -> Rejected:
    hint = "; import them (`ktrdr data import`), make some (`ktrdr data synth`) or fetch them (`ktrdr data fetch`)"
    same = [d for d in everything if d.symbol == symbol]
    if same:
        return Rejected(timeframe_field, f"no {symbol} {timeframe} bars in the data store; stored for {symbol}: "
                                         f"{listing(same)}{hint}")
    return Rejected(symbol_field, f"no bars for {symbol} {timeframe} in the data store; stored: "
                                  f"{listing(everything)}{hint}")
