"""What a handler may reach besides its params: the shared stores, as services.

A handler never holds a NATS connection: its context (``ktrdr.runtime.context.JobContext``) offers
these, bound to its op where they are per op (``ctx.results``, ``ctx.checkpoints``). The worker
runtime passes the JetStream-backed ones below; the handler harness (``ktrdr.runtime.harness``)
in-memory ones with the same behaviour, so a handler's tests need no server.

Every method is a coroutine: an async handler awaits it, a blocking one (run in a thread) calls
``ctx.call(ctx.results.put(...))``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError

from ktrdr.data.shared import FetchResult, PublishResult, adopt_dataset, fetch_dataset, publish_dataset
from ktrdr.data.store import DataStore
from ktrdr.models.registry import ModelVersion, load_model, save_model, show_model
from ktrdr.results import put_result, results_store
from ktrdr.runtime.artifacts import ArtifactMissing
from ktrdr.runtime.checkpoints import load_checkpoint, save_checkpoint
from subjects import names
from subjects.models import Operation, OpStatus

if TYPE_CHECKING:
    from ktrdr.client.results import OpResults

T = TypeVar("T", bound="OpResults")


class DatasetMissing(LookupError):
    """The shared ``data`` store has no such dataset (or no store at all)."""


class Datasets(Protocol):
    async def fetch(self, store: DataStore, symbol: str, timeframe: str) -> FetchResult:
        """Make the shared store's version the one in ``store``; :class:`DatasetMissing` if none."""

    async def adopt(self, store: DataStore, symbol: str, timeframe: str) -> int:
        """Merge the shared version into ``store`` (local bars win); the bars gained."""

    async def publish(self, store: DataStore, symbol: str, timeframe: str) -> PublishResult:
        """Replace the shared version with ``store``'s."""


@dataclass(frozen=True)
class Stored:
    """What a put wrote: the name to read it back by (and to report), and its size."""

    name: str
    size: int


class Blobs(Protocol):
    """The ``results`` and ``checkpoints`` stores: every put a new, write-once blob of an attempt."""

    async def put(self, op_id: str, attempt: int, data: bytes, *, description: str = "") -> Stored: ...

    async def get(self, name: str) -> bytes | None: ...


class Models(Protocol):
    async def save(self, name: str, bundle: bytes, metadata: dict[str, Any]) -> int: ...

    async def show(self, name: str, version: int | None = None) -> ModelVersion: ...

    async def load(self, name: str, version: int | None = None) -> bytes: ...


class Records(Protocol):
    """The ``ops`` bucket, read-only: another op's record (what its result names)."""

    async def get(self, op_id: str) -> Operation | None: ...


@dataclass(frozen=True, kw_only=True)
class Services:
    datasets: Datasets
    results: Blobs
    checkpoints: Blobs
    models: Models
    records: Records


class OpBlobs:
    """``Blobs`` bound to one attempt: what ``ctx.results`` and ``ctx.checkpoints`` are.

    ``latest`` is the blob this attempt counts as its own: the last it wrote, or (checkpoints) the
    one the coordinator handed it with the job. ``on_change(name)`` reports a new latest (None:
    none any more) to the coordinator, which keeps it in the op record.
    """

    def __init__(self, blobs: Blobs, op_id: str, attempt: int, *, latest: str | None = None,
                 on_change: Callable[[str | None], None] | None = None) -> None:
        self.blobs = blobs
        self.op_id = op_id
        self.attempt = attempt
        self.latest = latest
        self._on_change = on_change

    async def put(self, data: bytes, *, description: str = "") -> int:
        """Write ``data`` (a new blob; nothing written is ever replaced); returns its size."""
        stored = await self.blobs.put(self.op_id, self.attempt, data, description=description)
        self.latest = stored.name
        if self._on_change is not None:
            self._on_change(stored.name)
        return stored.size

    async def get(self) -> bytes | None:
        return None if self.latest is None else await self.blobs.get(self.latest)

    async def delete(self) -> None:
        """Stop counting the latest blob as this op's (the coordinator deletes it)."""
        self.latest = None
        if self._on_change is not None:
            self._on_change(None)


class ResultBlobs(OpBlobs):
    """``ctx.results``: this attempt's results, and :meth:`of` another op's."""

    def __init__(self, blobs: Blobs, records: Records, op_id: str, attempt: int) -> None:
        super().__init__(blobs, op_id, attempt)
        self.records = records

    async def of(self, op_id: str, kind: type[T] | None = None) -> T:
        """The results of the completed op ``op_id``, as its type's class (``BacktestResults`` for a
        backtest: ``summary``, ``metrics``, ``trades``, ``equity``...; ``ktrdr.client.results``):
        its record's result and the document it stored. ``kind``: the class expected (TypeError for
        an op of another type). LookupError for an op that does not exist or has not completed (the
        type's ``verify`` refuses such params at submission, with lookups of its own)."""
        from ktrdr.client.results import OpResults, results_of

        op = await self.records.get(op_id)
        if op is None:
            raise LookupError(f"no operation {op_id}")
        if op.status is not OpStatus.COMPLETED:
            raise LookupError(f"operation {op_id} is {op.status.value}: its results exist once it completes")
        document = await self.blobs.get(op.result_object) if op.result_object else None
        # A backtest's document holds every bar's equity: parsed off the event loop.
        found = await asyncio.to_thread(results_of, op, document)
        wanted = kind or OpResults
        if not isinstance(found, wanted):
            raise TypeError(f"operation {op_id} is a {op.type}: its results are a {type(found).__name__}, "
                            f"not a {wanted.__name__}")
        return found  # type: ignore[return-value]


# --- JetStream ----------------------------------------------------------------------------------

class JetStreamDatasets:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def fetch(self, store: DataStore, symbol: str, timeframe: str) -> FetchResult:
        try:
            return await fetch_dataset(self.js, store, symbol, timeframe)
        except (BucketNotFoundError, ObjectNotFoundError, NotFoundError) as exc:
            raise DatasetMissing(f"{symbol} {timeframe} is not in the data store: {exc}") from None

    async def adopt(self, store: DataStore, symbol: str, timeframe: str) -> int:
        return await adopt_dataset(self.js, store, symbol, timeframe)

    async def publish(self, store: DataStore, symbol: str, timeframe: str) -> PublishResult:
        return await publish_dataset(self.js, store, symbol, timeframe)


class JetStreamResults:
    """Results written under this worker's host name, the only one its key may write under."""

    def __init__(self, js: JetStreamContext, host: str) -> None:
        self.js = js
        self.host = host

    async def put(self, op_id: str, attempt: int, data: bytes, *, description: str = "") -> Stored:
        written = await put_result(self.js, data, host=self.host, op_id=op_id, attempt=attempt,
                                   description=description)
        return Stored(name=written.name, size=written.size)

    async def get(self, name: str) -> bytes | None:
        try:
            return await results_store(self.js).get(name)
        except ArtifactMissing:
            return None


class JetStreamCheckpoints:
    def __init__(self, js: JetStreamContext, host: str) -> None:
        self.js = js
        self.host = host

    async def put(self, op_id: str, attempt: int, data: bytes, *, description: str = "") -> Stored:
        written = await save_checkpoint(self.js, data, host=self.host, op_id=op_id, attempt=attempt)
        return Stored(name=written.name, size=written.size)

    async def get(self, name: str) -> bytes | None:
        return await load_checkpoint(self.js, name)


class JetStreamModels:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def save(self, name: str, bundle: bytes, metadata: dict[str, Any]) -> int:
        return await save_model(self.js, name, bundle, metadata)

    async def show(self, name: str, version: int | None = None) -> ModelVersion:
        return await show_model(self.js, name, version)

    async def load(self, name: str, version: int | None = None) -> bytes:
        return await load_model(self.js, name, version)


class JetStreamRecords:
    """Op records by direct get of the ``ops`` bucket's stream (a worker may read it, not watch it)."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def get(self, op_id: str) -> Operation | None:
        try:
            stored = await self.js.get_last_msg(names.kv_stream(names.OPS_BUCKET),
                                                names.kv_key_subject(names.OPS_BUCKET, op_id), direct=True)
        except NotFoundError:
            return None
        if not stored.data or (stored.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
            return None
        return Operation.model_validate_json(stored.data)


def jetstream_services(js: JetStreamContext, *, host: str) -> Services:
    """The stores as a worker of ``host`` uses them (it writes results and checkpoints under that name)."""
    return Services(datasets=JetStreamDatasets(js), results=JetStreamResults(js, host),
                    checkpoints=JetStreamCheckpoints(js, host), models=JetStreamModels(js),
                    records=JetStreamRecords(js))
