"""What a handler may reach besides its params: the shared stores, as services.

A handler never holds a NATS connection: its context (``ktrdr.runtime.context.JobContext``) offers
these, bound to its op where they are per op (``ctx.results``, ``ctx.checkpoints``). The worker
runtime passes the JetStream-backed ones below; the handler harness (``ktrdr.runtime.harness``)
in-memory ones with the same behaviour, so a handler's tests need no server.

Every method is a coroutine: an async handler awaits it, a blocking one (run in a thread) calls
``ctx.call(ctx.results.put(...))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError

from ktrdr.data.shared import FetchResult, PublishResult, adopt_dataset, fetch_dataset, publish_dataset
from ktrdr.data.store import DataStore
from ktrdr.models.registry import ModelVersion, load_model, save_model, show_model
from ktrdr.results import get_result, put_result
from ktrdr.runtime.checkpoints import delete_checkpoint, load_checkpoint, save_checkpoint


class DatasetMissing(LookupError):
    """The shared ``data`` store has no such dataset (or no store at all)."""


class Datasets(Protocol):
    async def fetch(self, store: DataStore, symbol: str, timeframe: str) -> FetchResult:
        """Make the shared store's version the one in ``store``; :class:`DatasetMissing` if none."""

    async def adopt(self, store: DataStore, symbol: str, timeframe: str) -> int:
        """Merge the shared version into ``store`` (local bars win); the bars gained."""

    async def publish(self, store: DataStore, symbol: str, timeframe: str) -> PublishResult:
        """Replace the shared version with ``store``'s."""


class Blobs(Protocol):
    """Bytes kept per op id (the ``results`` and ``checkpoints`` stores)."""

    async def put(self, op_id: str, data: bytes, *, description: str = "") -> int: ...

    async def get(self, op_id: str) -> bytes | None: ...

    async def delete(self, op_id: str) -> None: ...


class Models(Protocol):
    async def save(self, name: str, bundle: bytes, metadata: dict[str, Any]) -> int: ...

    async def show(self, name: str, version: int | None = None) -> ModelVersion: ...

    async def load(self, name: str, version: int | None = None) -> bytes: ...


@dataclass(frozen=True, kw_only=True)
class Services:
    datasets: Datasets
    results: Blobs
    checkpoints: Blobs
    models: Models


@dataclass(frozen=True)
class OpBlobs:
    """``Blobs`` bound to one op: what ``ctx.results`` and ``ctx.checkpoints`` are."""

    blobs: Blobs
    op_id: str

    async def put(self, data: bytes, *, description: str = "") -> int:
        return await self.blobs.put(self.op_id, data, description=description)

    async def get(self) -> bytes | None:
        return await self.blobs.get(self.op_id)

    async def delete(self) -> None:
        await self.blobs.delete(self.op_id)


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
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def put(self, op_id: str, data: bytes, *, description: str = "") -> int:
        return await put_result(self.js, op_id, data, description=description)

    async def get(self, op_id: str) -> bytes | None:
        return await get_result(self.js, op_id)

    async def delete(self, op_id: str) -> None:
        raise PermissionError("a worker does not delete results")


class JetStreamCheckpoints:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def put(self, op_id: str, data: bytes, *, description: str = "") -> int:
        await save_checkpoint(self.js, op_id, data)
        return len(data)

    async def get(self, op_id: str) -> bytes | None:
        return await load_checkpoint(self.js, op_id)

    async def delete(self, op_id: str) -> None:
        await delete_checkpoint(self.js, op_id)


class JetStreamModels:
    def __init__(self, js: JetStreamContext) -> None:
        self.js = js

    async def save(self, name: str, bundle: bytes, metadata: dict[str, Any]) -> int:
        return await save_model(self.js, name, bundle, metadata)

    async def show(self, name: str, version: int | None = None) -> ModelVersion:
        return await show_model(self.js, name, version)

    async def load(self, name: str, version: int | None = None) -> bytes:
        return await load_model(self.js, name, version)


def jetstream_services(js: JetStreamContext) -> Services:
    return Services(datasets=JetStreamDatasets(js), results=JetStreamResults(js),
                    checkpoints=JetStreamCheckpoints(js), models=JetStreamModels(js))
