"""Deleting what no record counts on from the stores (the coordinator's: it alone may purge).

Two kinds of garbage, both of which a stolen credential can make on purpose to fill a store (a full
store refuses new writes, so the next real result would fail):

* in the object stores (``data``, ``models``): the chunks of an object replaced or deleted since,
  which no info names (:func:`ktrdr.runtime.objects.collect_orphans`), except a registered model
  version's, which loads read whatever its info says now;
* in the artifact stores (``results``, ``checkpoints``): an artifact no op record names and none
  will, because its op is unknown or has ended, the attempt is not the op's current one, or its
  host is not the host of the worker that claimed the attempt (:meth:`StoreSweep.kept`).

Either is deleted only when two sweeps in a row found it so, at least ``min_gap_s`` apart: an
upload under way (its chunks stored before its info, a result written before the outcome that
names it) is never taken for garbage. The object stores are swept every ``every_s`` (retention's
interval); any store as soon as it is past half full, so a flood is cleared within a minute
rather than at the next retention run. The artifact stores are not swept otherwise: an op's
artifacts go with it at retention, and a sweep lists the whole store. A store past half full with
nothing to delete (real results filling it) is looked at less and less often, up to ``every_s``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from coordinator.metrics import Metrics
from coordinator.operations import Operations
from ktrdr.models.registry import pinned_nuids
from ktrdr.runtime import direct
from ktrdr.runtime.artifacts import purge_artifact
from ktrdr.runtime.objects import collect_orphans
from ktrdr.runtime.tasks import cancel_and_wait, every
from ktrdr.runtime.topology import OBJECT_STORES
from subjects import names

log = logging.getLogger(__name__)

CHECK_S = 5.0
MIN_GAP_S = 30.0
HIGH_WATER = 0.5


def _stream(store: str) -> str:
    return names.ARTIFACT_STREAMS.get(store) or f"OBJ_{store}"


class StoreSweep:
    def __init__(self, *, js: JetStreamContext, ops: Operations, metrics: Metrics,
                 claimant: Callable[[str, int], str | None], host_of: Callable[[str], str | None],
                 every_s: float, check_s: float = CHECK_S, min_gap_s: float = MIN_GAP_S,
                 high_water: float = HIGH_WATER) -> None:
        self.js = js
        self.ops = ops
        self.metrics = metrics
        self.claimant = claimant
        self.host_of = host_of
        self.every_s = every_s
        self.check_s = check_s
        self.min_gap_s = min_gap_s
        self.high_water = high_water
        self.stores = (*OBJECT_STORES, *names.ARTIFACT_STREAMS)
        self._suspects: dict[str, set[tuple[str, str]]] = {}
        self._last: dict[str, float] = {}
        self._gap: dict[str, float] = {}  # between sweeps of a store past half full
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self.run(), name="store-sweep")

    async def run(self) -> None:
        await every(self.check_s, self._round, what="sweeping the stores")

    async def _round(self) -> None:
        for store in self.stores:
            try:
                if await self._due(store):
                    await self.sweep(store)
            except Exception as exc:  # one store's trouble (an election) leaves the others swept
                log.warning("could not sweep %s: %s: %s", store, type(exc).__name__, exc)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            await cancel_and_wait([task], what="store sweep")

    async def __aenter__(self) -> StoreSweep:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _due(self, store: str) -> bool:
        since = time.monotonic() - self._last.get(store, -float("inf"))
        if store in OBJECT_STORES and since >= self.every_s:
            return True
        if since < self._gap.get(store, self.min_gap_s):
            return False
        info = await self.js.stream_info(_stream(store))
        limit = info.config.max_bytes or -1
        # A store filling up is swept now; its second sweep (what deletes) follows min_gap_s later.
        return limit > 0 and info.state.bytes > self.high_water * limit

    async def sweep(self, store: str) -> int:
        """One sweep of ``store``: the garbage deleted (found on this sweep and the one before)."""
        self._last[store] = time.monotonic()
        if store in OBJECT_STORES:
            suspects = {nuid for _, nuid in self._suspects.get(store, set())}
            # A registered model's bytes stay, whatever its info says now (ktrdr.models.registry).
            keep = await pinned_nuids(self.js) if store == names.MODELS_OBJECTS else None
            left = await collect_orphans(self.js, store, suspects=suspects, keep=keep)
            deleted = len(suspects - left)
            self._suspects[store] = {("nuid", nuid) for nuid in left}
        else:
            found = await self._garbage(store)
            purge = found & self._suspects.get(store, set())
            stream = names.ARTIFACT_STREAMS[store]
            for kind, what in purge:
                if kind == "artifact":
                    await purge_artifact(self.js, store, what)
                else:  # a subject no artifact of ours has: only a stolen key writes one
                    await self.js.purge_stream(stream, subject=what)
            self._suspects[store] = found - purge
            deleted = len(purge)
        if deleted:
            self.metrics.swept.labels(store=store).inc(deleted)
            log.info("deleted %d unreferenced item(s) from %s", deleted, store)
        suspected = bool(self._suspects[store])
        self._gap[store] = (self.min_gap_s if deleted or suspected
                            else min(self.every_s, 2 * self._gap.get(store, self.min_gap_s)))
        return deleted

    async def _garbage(self, store: str) -> set[tuple[str, str]]:
        """What no record counts on: ("artifact", name), or ("subject", subject) for an info or chunk
        subject that names no artifact at all."""
        stream = names.ARTIFACT_STREAMS[store]
        subjects = [stored.subject async for stored in direct.scan(self.js._nc, stream, names.artifact_infos(store))]
        try:
            info = await self.js.stream_info(stream, subjects_filter=names.artifact_all_chunks(store))
        except NotFoundError:
            return set()
        found: set[tuple[str, str]] = set()
        # Chunks without an info are an upload under way, or one that never finished.
        for subject, parse in [*((s, names.artifact_of_info) for s in subjects),
                               *((s, names.artifact_of_chunk) for s in info.state.subjects or {})]:
            try:
                name = parse(store, subject)
            except names.InvalidToken:
                found.add(("subject", subject))
                continue
            if not self.kept(name):
                found.add(("artifact", name))
        return found

    def kept(self, name: str) -> bool:
        """Whether an op record counts on the artifact ``name``, or may still (its attempt running)."""
        try:
            host, op_id, attempt = names.artifact_owner(name)
        except names.InvalidToken:
            return False
        op = self.ops.get(op_id)
        if op is None:
            return False
        if name in (op.result_object, op.checkpoint):
            return True
        if op.status.terminal or attempt != op.attempt:
            return False
        if host == names.COORDINATOR_HOST:  # a parent's result, being reduced
            return op.worker_id is None
        worker = op.worker_id or self.claimant(op_id, attempt)
        owner = self.host_of(worker) if worker else None
        # The host of the worker that claimed the attempt; its lease gone, the host is unknown and
        # the attempt ends soon (lost worker), after which the artifact is garbage anyway.
        return worker is not None and owner in (None, host)
