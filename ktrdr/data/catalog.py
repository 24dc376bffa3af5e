"""What the shared ``data`` store holds: each dataset's symbol and timeframe, and its span (first and
last bar, how many), as admission checks a request against it (``ktrdr.optypes.lookups``).

A dataset's span travels in its object's info (``Ktrdr-First``, ``Ktrdr-Last``, ``Ktrdr-Bars``
headers, written by :func:`ktrdr.data.shared.publish_dataset`), so listing what is stored reads the
infos alone. An object published before spans were written has its span read from its bytes, once
per content digest, and only when a request asks about that dataset.

:class:`DataCatalog` is the coordinator's: admission runs per submission, so the list is read at
most once per ``ttl_s`` whatever the rate of submissions, one read at a time shared by every caller.
A request that finds nothing in a list read before it arrived asks for a fresh one (``fresh=True``)
before it is refused: bars published a moment before a submission are never refused as missing.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pandas as pd
from nats.js import JetStreamContext
from nats.js.api import ObjectInfo
from nats.js.errors import BucketNotFoundError, NotFoundError

from ktrdr.runtime.objects import ObjectBucket
from subjects import limits, names
from subjects.names import DATA_OBJECTS

log = logging.getLogger(__name__)

FIRST_HEADER, LAST_HEADER, BARS_HEADER = "Ktrdr-First", "Ktrdr-Last", "Ktrdr-Bars"
# Spans read from objects' bytes, by digest: a few hundred datasets' worth of three numbers.
SPANS_KEPT = 1024


@dataclass(frozen=True, kw_only=True)
class StoredData:
    """One dataset of the shared store. ``first``/``last``/``bars`` are None where the span is not known
    (an object too large to read for it): checks of a range then let the request through."""

    symbol: str
    timeframe: str
    digest: str = ""
    first: datetime | None = None
    last: datetime | None = None
    bars: int | None = None

    @property
    def spanned(self) -> bool:
        return self.first is not None and self.last is not None

    def holds(self, start: datetime | None, end: datetime | None) -> bool:
        """Whether any of its bars lie between ``start`` and ``end`` (naive: UTC); True when unknown."""
        if self.first is None or self.last is None:
            return self.bars != 0
        return (start is None or utc(start) <= utc(self.last)) and (end is None or utc(end) >= utc(self.first))

    def __str__(self) -> str:
        text = f"{self.symbol} {self.timeframe}"
        if self.first is not None and self.last is not None:
            text += f" {when(self.first)}..{when(self.last)}"
        if self.bars is not None:
            text += f" ({self.bars:,} bars)"
        return text


def when(moment: datetime) -> str:
    """A bar's time as a person reads it: the date alone at midnight, else to the minute (UTC)."""
    moment = utc(moment)
    if (moment.hour, moment.minute, moment.second) == (0, 0, 0):
        return moment.date().isoformat()
    return moment.strftime("%Y-%m-%d %H:%M")


def utc(moment: datetime) -> datetime:
    """``moment`` in UTC (a naive one is UTC already, as every bound of a request is)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def span_headers(bars: pd.DataFrame) -> dict[str, list[str]]:
    """The headers an object's info carries for ``bars`` (lists: the layout the ``nats`` CLI reads)."""
    out = {BARS_HEADER: [str(len(bars))]}
    if len(bars):
        out |= {FIRST_HEADER: [bars.index[0].isoformat()], LAST_HEADER: [bars.index[-1].isoformat()]}
    return out


def _header(headers: Mapping[str, Any], name: str) -> str | None:
    value = headers.get(name)
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, str) else None


def from_info(info: ObjectInfo) -> StoredData | None:
    """The dataset an object's info describes (its span where the info carries one); None for an
    object that is deleted or not named ``SYMBOL/timeframe``."""
    if info.deleted or not info.name or info.name.count("/") != 1:
        return None
    symbol, timeframe = info.name.split("/")
    found = StoredData(symbol=symbol, timeframe=timeframe, digest=str(info.digest or ""))
    headers = info.headers or {}
    try:
        first, last, bars = (_header(headers, h) for h in (FIRST_HEADER, LAST_HEADER, BARS_HEADER))
        if bars is not None:
            found = replace(found, bars=int(bars))
        if first is not None and last is not None:
            found = replace(found, first=utc(datetime.fromisoformat(first)), last=utc(datetime.fromisoformat(last)))
    except ValueError:
        log.warning("dataset %s: its info's span headers are unreadable; reading its bars instead", info.name)
        return StoredData(symbol=symbol, timeframe=timeframe, digest=found.digest)
    return found


def span_of(stored: StoredData, data: bytes) -> StoredData:
    """``stored`` with the span of ``data``, its ``.npz`` bytes: the timestamps alone are read."""
    with np.load(io.BytesIO(data), allow_pickle=False) as arrays:
        stamps = arrays["timestamp"]
    if len(stamps) == 0:
        return replace(stored, bars=0)
    first, last = (pd.Timestamp(int(stamps[i]), tz="UTC").to_pydatetime() for i in (0, -1))
    return replace(stored, first=first, last=last, bars=len(stamps))


class DataCatalog:
    """The shared store's datasets, read through ``js`` (direct gets: any role that reads data may)."""

    def __init__(self, *, js: JetStreamContext, ttl_s: float = 2.0) -> None:
        self.js = js
        self.ttl_s = ttl_s
        self._listed: tuple[StoredData, ...] | None = None
        self._listed_at = -float("inf")  # when the read that made ``_listed`` began (loop time)
        self._reading: asyncio.Task[tuple[StoredData, ...]] | None = None
        self._reading_since = -float("inf")
        self._spans: OrderedDict[str, StoredData] = OrderedDict()  # by digest
        self.reads = 0  # list reads made (a test counts them)

    async def datasets(self, *, fresh: bool = False) -> tuple[StoredData, ...]:
        """Every dataset stored, with spans where their infos carry them. ``fresh``: from a read begun
        after this call (one in flight already counts when it began after the call)."""
        loop = asyncio.get_running_loop()
        asked = loop.time()
        if not fresh and self._listed is not None and asked - self._listed_at < self.ttl_s:
            return self._listed
        reading = self._reading
        if reading is None or (fresh and self._reading_since < asked):
            reading = self._reading = loop.create_task(self._read(asked), name="data-catalog")
            self._reading_since = asked
            reading.add_done_callback(self._read_done)
        # Shielded: a submission that gives up does not cancel the read the others wait on.
        return await asyncio.shield(reading)

    def _read_done(self, task: asyncio.Task[tuple[StoredData, ...]]) -> None:
        if self._reading is task:
            self._reading = None
        if not task.cancelled():
            task.exception()  # retrieved: the callers that awaited it have it

    async def _read(self, began: float) -> tuple[StoredData, ...]:
        self.reads += 1
        try:
            infos = await ObjectBucket(js=self.js, bucket=DATA_OBJECTS).list()
        except BucketNotFoundError:
            infos = []
        listed = tuple(sorted((d for i in infos if (d := from_info(i)) is not None),
                              key=lambda d: (d.symbol, d.timeframe)))
        listed = tuple(self._spans.get(d.digest, d) if not d.spanned else d for d in listed)
        if began >= self._listed_at:
            self._listed, self._listed_at = listed, began
        return listed

    async def dataset(self, symbol: str, timeframe: str, *, fresh: bool = False) -> StoredData | None:
        """The dataset, its span read from its bytes when its info carries none (once per digest)."""
        found = next((d for d in await self.datasets(fresh=fresh)
                      if d.symbol == symbol and d.timeframe == timeframe), None)
        if found is None and fresh:
            found = await self._from_leader(symbol, timeframe)
        if found is None or found.spanned or found.bars == 0:
            return found
        known = self._spans.get(found.digest)
        if known is not None:
            self._spans.move_to_end(found.digest)
            return known
        bucket = ObjectBucket(js=self.js, bucket=DATA_OBJECTS)
        name = f"{symbol}/{timeframe}"
        try:
            data = await bucket.get(name, max_bytes=limits.MAX_DATASET_BYTES)
            spanned = await asyncio.to_thread(span_of, found, data)
        except Exception as exc:  # a span is a convenience: unknown, the request is let through
            log.warning("dataset %s: no span read (%s); requests on it are not checked against its range",
                        name, exc)
            return found
        self._spans[found.digest] = spanned
        while len(self._spans) > SPANS_KEPT:
            self._spans.popitem(last=False)
        return spanned


    async def _from_leader(self, symbol: str, timeframe: str) -> StoredData | None:
        """The dataset as the store's leader knows it: a listing is read by direct gets, which any
        replica answers, and one that lags (a write acknowledged by the others, then its leader
        lost) would not have it. Only the leader's "no such object" refuses a request; an error
        (an election under way) goes up, and the request is let through unchecked."""
        subject = names.object_meta_subject(DATA_OBJECTS, f"{symbol}/{timeframe}")
        try:
            raw = await self.js.get_last_msg(f"OBJ_{DATA_OBJECTS}", subject, direct=False)
        except NotFoundError:
            return None
        return from_info(ObjectInfo.from_response(json.loads(raw.data or b"{}")))


def listing(stored: Sequence[StoredData], *, limit: int = 10) -> str:
    """``SYNTH 1h 2020-01-01..2020-03-24 (2,000 bars), AAPL 1d ...``: what a refusal names as stored."""
    if not stored:
        return "nothing"
    shown = ", ".join(str(d) for d in stored[:limit])
    return shown + (f" and {len(stored) - limit} more" if len(stored) > limit else "")
