"""Distributing datasets through the JetStream Object Store bucket ``data``.

Objects are named ``SYMBOL/timeframe`` and hold the store's own ``.npz`` bytes. A fetching
machine keeps every object it downloaded under ``<store root>/.objects/<digest>.npz``; a later
fetch whose object digest is unchanged only reads the (small) object info, and says so with
``FetchResult.cached``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from nats.js.api import ObjectInfo
from nats.js.client import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError
from nats.js.object_store import ObjectStore

from ktrdr.data.catalog import span_headers
from ktrdr.data.store import DataStore, bars_from_bytes, validate_symbol
from ktrdr.data.timeframes import validate_timeframe
from ktrdr.runtime.objects import ObjectBucket
from ktrdr.runtime.retry import RetryPolicy, transient_js_error
from subjects.names import DATA_OBJECTS

log = logging.getLogger(__name__)

# Reading a dataset while the bucket's stream elects a leader (4 to 9 s on nats-server): waited out,
# twice over, rather than failing the op that needs it.
FETCH_RETRY = RetryPolicy(first_s=0.2, max_s=2.0, budget_s=30.0)


@dataclass(frozen=True, kw_only=True)
class PublishResult:
    name: str
    digest: str
    size: int


@dataclass(frozen=True, kw_only=True)
class FetchResult:
    name: str
    digest: str
    size: int
    cached: bool  # True when nothing was downloaded: the local cache already had this digest
    path: Path  # the file in the local store


def object_name(symbol: str, timeframe: str) -> str:
    return f"{validate_symbol(symbol)}/{validate_timeframe(timeframe)}"


async def data_bucket(js: JetStreamContext) -> ObjectStore:
    """The bucket as the coordinator reads it (nats-py's ObjectStore, which makes consumers)."""
    return await js.object_store(DATA_OBJECTS)


def data_objects(js: JetStreamContext) -> ObjectBucket:
    """The bucket as every other role uses it: direct gets and plain publishes (``ktrdr.runtime.objects``)."""
    return ObjectBucket(js=js, bucket=DATA_OBJECTS)


async def _info(bucket: ObjectBucket, name: str) -> ObjectInfo:
    info = await bucket.info(name)
    if info is None:
        raise ObjectNotFoundError
    return info


async def publish_dataset(js: JetStreamContext, store: DataStore, symbol: str, timeframe: str) -> PublishResult:
    """Upload the stored dataset (validated first, so the bucket never holds bad bars)."""
    path = store.path(symbol, timeframe)
    if not path.is_file():
        raise FileNotFoundError(f"no data for {symbol} {timeframe} in {store.root}")
    data = path.read_bytes()
    bars = bars_from_bytes(data, source=str(path))
    name = object_name(symbol, timeframe)
    # The span in the info: admission checks a request's range against it without reading the bars.
    # nats-py types headers dict[str, str]; the info's JSON holds lists, as the nats CLI writes them.
    info = await data_objects(js).put(name, data, description=f"{symbol} {timeframe} OHLCV npz",
                                      headers=span_headers(bars))  # type: ignore[arg-type]
    _write_marker(store, symbol, timeframe, str(info.digest))
    return PublishResult(name=name, digest=str(info.digest), size=int(info.size or len(data)))


async def adopt_dataset(js: JetStreamContext, store: DataStore, symbol: str, timeframe: str) -> int:
    """Merge the bucket's version of a dataset into the local store, keeping local bars where both
    have a timestamp; returns the number of bars the local store gained.

    For whoever is about to publish: a publish replaces the object with the local file, so a host
    that took over from another (whose bars it never stored) would otherwise erase them. Nothing
    is downloaded when the local store already took in the bucket's current version.
    """
    name = object_name(symbol, timeframe)
    bucket = data_objects(js)
    try:
        info = await _info(bucket, name)
    except (BucketNotFoundError, NotFoundError):
        return 0
    digest = str(info.digest)
    marker = _marker(store, symbol, timeframe)
    if store.exists(symbol, timeframe) and marker.is_file() and marker.read_text() == digest:
        return 0
    data = await bucket.get(name, info=info)

    def merge() -> int:  # years of minute bars: off the event loop
        theirs = bars_from_bytes(data, source=f"object {DATA_OBJECTS}/{name}")
        gained = store.merge(symbol, timeframe, theirs, prefer="stored") if len(theirs) else 0
        _write_marker(store, symbol, timeframe, digest)
        return gained

    return await asyncio.to_thread(merge)


async def fetch_dataset(js: JetStreamContext, store: DataStore, symbol: str, timeframe: str) -> FetchResult:
    """Make the bucket's current version of the dataset the local one, downloading only when needed."""
    name = object_name(symbol, timeframe)

    def retrying(exc: BaseException, pause: float) -> None:
        log.warning("dataset %s not readable yet (%s); retrying in %.1f s", name, str(exc) or type(exc).__name__,
                    pause)

    bucket = data_objects(js)

    async def read_info() -> ObjectInfo:
        return await _info(bucket, name)

    info = await FETCH_RETRY.run(read_info, retry_on=transient_js_error, on_retry=retrying)
    digest = str(info.digest)
    cache_file = _cache_path(store, digest)
    cached = cache_file.is_file()
    if cached:
        data = cache_file.read_bytes()
    else:
        async def read() -> bytes:
            # ObjectBucket.get checks the SHA-256 digest of what arrived against the object info.
            return await bucket.get(name, info=info)

        data = await FETCH_RETRY.run(read, retry_on=transient_js_error, on_retry=retrying)
        bars_from_bytes(data, source=f"object {DATA_OBJECTS}/{name}")
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        # A unique temporary name: several workers may share one data dir and fetch at once.
        tmp = cache_file.with_suffix(f".{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        tmp.write_bytes(data)
        tmp.replace(cache_file)
    marker = _marker(store, symbol, timeframe)
    if not (marker.is_file() and marker.read_text() == digest and store.exists(symbol, timeframe)):
        store.write_bytes(symbol, timeframe, data)
        _write_marker(store, symbol, timeframe, digest)
    return FetchResult(name=name, digest=digest, size=len(data), cached=cached, path=store.path(symbol, timeframe))


def _marker(store: DataStore, symbol: str, timeframe: str) -> Path:
    """Names the bucket version the local file holds (or, after :func:`adopt_dataset`, contains)."""
    return store.path(symbol, timeframe).with_suffix(".digest")


def _write_marker(store: DataStore, symbol: str, timeframe: str, digest: str) -> None:
    marker = _marker(store, symbol, timeframe)
    marker.parent.mkdir(parents=True, exist_ok=True)
    tmp = marker.with_suffix(f".{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    tmp.write_text(digest)
    tmp.replace(marker)


def _cache_path(store: DataStore, digest: str) -> Path:
    return store.root / ".objects" / (re.sub(r"[^A-Za-z0-9_-]", "_", digest) + ".npz")
