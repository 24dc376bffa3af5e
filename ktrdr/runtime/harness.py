"""Run a handler without NATS: :class:`HandlerEnvironment` (Temporal's ``ActivityEnvironment``).

It builds the :class:`~ktrdr.runtime.context.JobContext` a worker would, with in-memory stores in
place of the JetStream ones, runs ``handler(ctx, params)`` as the worker does (a coroutine function
on the loop, each step timed for stalls; any other in a thread) and keeps everything the handler
reported. Each run is recorded as an op (``records``), so a later run can read it with
``ctx.results.of(op_id)``, and :meth:`HandlerEnvironment.admit` checks params as the coordinator's
admission does, against these stores (``lookups``)::

    env = HandlerEnvironment()
    env.datasets.put_bars("EURUSD", "1h", bars)
    result = await env.run(BacktestHandler(tmp_path), BacktestParams(...), op_type=BACKTEST, op_id="bt-1")
    assert env.progress[-1]["percentage"] == 100.0 and env.results.data["bt-1"]
    await env.admit(MONTE_CARLO, {"source": "nope"})  # Rejected: no operation 'nope'

A parent type's plan runs in :class:`ktrdr.runtime.plan_harness.PlanEnvironment`. The platform's own
tests keep running handlers through a real worker and server; these are for a handler's behaviour alone.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

import pandas as pd
from pydantic import BaseModel

from ktrdr.data.catalog import StoredData, span_of
from ktrdr.data.shared import FetchResult, PublishResult, object_name
from ktrdr.data.store import DataStore, bars_from_bytes, bars_to_bytes
from ktrdr.models.registry import ModelNotFoundError, ModelVersion
from ktrdr.optypes import OpType
from ktrdr.runtime.context import Handler, JobContext, call_handler
from ktrdr.runtime.services import DatasetMissing, Services, Stored
from ktrdr.runtime.stalls import StallWatch
from subjects.models import JobMessage, Operation, OpEvent, OpStatus, ProgressUpdate


class MemoryDatasets:
    """The shared ``data`` store as a dict of ``.npz`` bytes by (symbol, timeframe)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}

    def put_bars(self, symbol: str, timeframe: str, bars: pd.DataFrame) -> None:
        self.objects[(symbol, timeframe)] = bars_to_bytes(bars)

    def bars(self, symbol: str, timeframe: str) -> pd.DataFrame:
        return bars_from_bytes(self.objects[(symbol, timeframe)], source=f"memory {symbol} {timeframe}")

    async def fetch(self, store: DataStore, symbol: str, timeframe: str) -> FetchResult:
        data = self.objects.get((symbol, timeframe))
        if data is None:
            raise DatasetMissing(f"{symbol} {timeframe} is not in the data store")
        path = store.write_bytes(symbol, timeframe, data)
        return FetchResult(name=object_name(symbol, timeframe), digest=_digest(data), size=len(data),
                           cached=False, path=path)

    async def adopt(self, store: DataStore, symbol: str, timeframe: str) -> int:
        data = self.objects.get((symbol, timeframe))
        if data is None:
            return 0
        theirs = bars_from_bytes(data, source=f"memory {symbol} {timeframe}")
        return store.merge(symbol, timeframe, theirs, prefer="stored") if len(theirs) else 0

    async def publish(self, store: DataStore, symbol: str, timeframe: str) -> PublishResult:
        data = store.path(symbol, timeframe).read_bytes()
        self.objects[(symbol, timeframe)] = data
        return PublishResult(name=object_name(symbol, timeframe), digest=_digest(data), size=len(data))


class MemoryRecords:
    """The ``ops`` bucket: op records by id (each run of a :class:`HandlerEnvironment` adds its own)."""

    def __init__(self) -> None:
        self.ops: dict[str, Operation] = {}

    def put(self, op: Operation) -> Operation:
        self.ops[op.op_id] = op
        return op

    async def get(self, op_id: str) -> Operation | None:
        return self.ops.get(op_id)


class MemoryLookups:
    """Admission's lookups (``ktrdr.optypes.lookups.Lookups``) over the in-memory stores."""

    def __init__(self, *, records: MemoryRecords, datasets: MemoryDatasets) -> None:
        self.records = records
        self.stored = datasets

    async def op(self, op_id: str) -> Operation | None:
        return await self.records.get(op_id)

    async def datasets(self, *, fresh: bool = False) -> list[StoredData]:
        return [span_of(StoredData(symbol=symbol, timeframe=timeframe, digest=_digest(data)), data)
                for (symbol, timeframe), data in sorted(self.stored.objects.items())]

    async def dataset(self, symbol: str, timeframe: str, *, fresh: bool = False) -> StoredData | None:
        data = self.stored.objects.get((symbol, timeframe))
        return None if data is None else span_of(StoredData(symbol=symbol, timeframe=timeframe), data)


class MemoryBlobs:
    """The ``results`` or ``checkpoints`` store: the latest bytes by op id (the name a put returns)."""

    def __init__(self) -> None:
        self.data: dict[str, bytes] = {}

    async def put(self, op_id: str, attempt: int, data: bytes, *, description: str = "") -> Stored:
        self.data[op_id] = bytes(data)
        return Stored(name=op_id, size=len(data))

    async def get(self, name: str) -> bytes | None:
        return self.data.get(name)


class MemoryModels:
    """The model registry: versions numbered from 1 per name."""

    def __init__(self) -> None:
        self.versions: dict[str, list[tuple[bytes, dict[str, Any]]]] = {}

    async def save(self, name: str, bundle: bytes, metadata: dict[str, Any]) -> int:
        self.versions.setdefault(name, []).append((bytes(bundle), dict(metadata)))
        return len(self.versions[name])

    async def show(self, name: str, version: int | None = None) -> ModelVersion:
        stored = self.versions.get(name) or []
        number = version or len(stored)
        if not 1 <= number <= len(stored):
            raise ModelNotFoundError(f"no model {name}@{version or 'latest'}")
        bundle, metadata = stored[number - 1]
        return ModelVersion(name=name, version=number, size=len(bundle), digest=_digest(bundle),
                            created_at=datetime.now(UTC).isoformat(), metadata=metadata)

    async def load(self, name: str, version: int | None = None) -> bytes:
        found = await self.show(name, version)
        return self.versions[name][found.version - 1][0]


class _Recorder:
    def __init__(self, env: HandlerEnvironment) -> None:
        self.env = env

    async def progress(self, update: ProgressUpdate) -> None:
        self.env.progress.append(update.model_dump(mode="json", exclude_none=True))

    async def event(self, event: OpEvent) -> None:
        if event.checkpoint == "":  # the handler is done with its checkpoint: the coordinator deletes it
            self.env.checkpoints.data.pop(event.op_id, None)
        if event.message:
            self.env.warnings.append(event.message)
        self.env.info.update(event.context or {})


@dataclass(kw_only=True)
class MemoryStores:
    """The in-memory stand-ins for the platform's stores, which a handler's run and a parent plan's
    children share (``ktrdr.runtime.plan_harness``)."""

    datasets: MemoryDatasets = field(default_factory=MemoryDatasets)
    results: MemoryBlobs = field(default_factory=MemoryBlobs)
    checkpoints: MemoryBlobs = field(default_factory=MemoryBlobs)
    models: MemoryModels = field(default_factory=MemoryModels)
    records: MemoryRecords = field(default_factory=MemoryRecords)
    # Coroutine handlers' steps are timed as a worker times them; ``StallWatch(refuse=True)`` fails
    # a handler that holds the loop, for a test that must not.
    stalls: StallWatch = field(default_factory=StallWatch)

    def stores(self) -> dict[str, Any]:
        """These stores by field name, to hand to another environment that shares them."""
        return {f.name: getattr(self, f.name) for f in fields(MemoryStores)}


@dataclass(kw_only=True)
class HandlerEnvironment(MemoryStores):
    op_id: str = "harness-op"
    attempt: int = 1
    worker_id: str = "harness"
    # What the handler reported: progress updates (as published, coalesced), the op record's
    # ``info`` facts and its ``warnings``.
    progress: list[dict[str, Any]] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    context: JobContext | None = None

    @property
    def lookups(self) -> MemoryLookups:
        """What admission reads here: the records of the runs so far and the datasets put."""
        return MemoryLookups(records=self.records, datasets=self.datasets)

    async def admit(self, op_type: OpType[Any, Any], params: BaseModel | dict[str, Any]) -> Any:
        """``params`` as the coordinator's admission leaves them (``admit``, then ``verify`` against
        :attr:`lookups`); :class:`~ktrdr.optypes.Rejected` or pydantic's ValidationError as it raises them."""
        return await op_type.admitted(op_type.parse(params), self.lookups)

    async def run(self, handler: Handler, params: BaseModel, *, op_type: OpType[Any, Any],
                  op_id: str | None = None) -> Any:
        """Run ``handler`` on ``params`` as a worker would for ``op_type`` (under ``op_id``, else the
        environment's); its result as the type's result model (when it declares one). The run is
        recorded in :attr:`records`, completed or failed, as the coordinator would record it."""
        op_id = op_id or self.op_id
        params = op_type.parse(params)
        # A checkpoint put in ``checkpoints`` beforehand is the one the coordinator hands the attempt.
        job = JobMessage(op_id=op_id, type=op_type.name, params=op_type.dump(params), attempt=self.attempt,
                         capability=op_type.runs.capabilities[0],
                         checkpoint=op_id if op_id in self.checkpoints.data else None)
        services = Services(datasets=self.datasets, results=self.results, checkpoints=self.checkpoints,
                            models=self.models, records=self.records)
        self.context = JobContext(job=job, worker_id=self.worker_id, reporter=_Recorder(self), services=services,
                                  loop=asyncio.get_running_loop())
        warned = len(self.warnings)
        record = Operation(op_id=op_id, type=op_type.name, params=job.params, status=OpStatus.RUNNING,
                           worker_id=self.worker_id, attempt=self.attempt, capability=job.capability,
                           started_at=datetime.now(UTC))
        try:
            result = await call_handler(handler, self.context, params, stalls=self.stalls)
            as_dict = op_type.result_dict(result)
        except BaseException as exc:
            self.records.put(record.model_copy(update={
                "status": OpStatus.CANCELLED if self.context.token.cancelled else OpStatus.FAILED,
                "error": f"{type(exc).__name__}: {exc}", "completed_at": datetime.now(UTC)}))
            raise
        finally:
            await self.context.flush()
        self.records.put(record.model_copy(update={
            "status": OpStatus.COMPLETED, "result": as_dict, "completed_at": datetime.now(UTC),
            "result_object": self.context.results.latest, "warnings": self.warnings[warned:]}))
        parsed = op_type.parse_result(as_dict)
        return parsed if parsed is not None else as_dict

    def cancel(self, reason: str = "cancelled") -> None:
        """Cancel the running handler (call it from a progress hook or another task)."""
        assert self.context is not None, "no handler is running"
        self.context.token.cancel(reason)


def _digest(data: bytes) -> str:
    return "SHA-256=" + hashlib.sha256(data).hexdigest()
