"""The coordinator's read side of the ``ops`` bucket: records held in memory, and the index kept in
step with the bucket.

In memory it holds what the coordinator needs to act (every op not yet ended) and the ``recent``
ops that ended last; everything is in the index (``coordinator.history``), which serves lists and
reads of older ops. Memory and start-up time follow the live work, not the history. The store
(``coordinator.store``) hands every committed write to :meth:`OpsMirror.record`; the index gets
them in batches. At start the index catches up with what the bucket's stream holds past it.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable

from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE

from coordinator.health import HEALTH_KEY
from coordinator.history import OpsIndex, unpack
from coordinator.metrics import Metrics
from subjects import limits, names
from subjects.models import BadPayload, ListRequest, Operation, OpList, decode

log = logging.getLogger(__name__)

# Committed records reach the index at most this late, in one batch (a list flushes first).
INDEX_FLUSH_S = 0.25
# Reading the stream to catch the index up: records per batch.
CATCH_UP_BATCH = 2000


class OpsMirror:
    """The ``ops`` bucket as the coordinator reads it: what is held, and the index."""

    def __init__(self, *, index: OpsIndex, metrics: Metrics, recent: int = 5000,
                 index_flush_s: float = INDEX_FLUSH_S) -> None:
        self.index = index
        self.metrics = metrics
        self.recent = recent
        self.index_flush_s = index_flush_s
        self._cache: dict[str, tuple[Operation, int]] = {}
        self._ended: OrderedDict[str, None] = OrderedDict()  # held ops that ended, oldest first
        self._unindexed: dict[str, tuple[Operation, int, bytes]] = {}
        self._new: set[str] = set()  # ids in _unindexed written for the first time
        self._flush: asyncio.TimerHandle | None = None
        self._counts: Counter[tuple[str, str]] = Counter()
        self._analysing: asyncio.Task[None] | None = None
        self._flushes = 0

    async def load(self, js: JetStreamContext) -> int:
        """Catch the index up with the bucket (only what changed since it last did, unless it is
        new or from another bucket), then hold every op not yet ended and the most recent others."""
        stream = names.kv_stream(names.OPS_BUCKET)
        info = await js.stream_info(stream)
        identity = str(info.created)
        if self.index.meta("stream") != identity:
            if self.index.meta("stream") is not None:
                log.warning("the operations index at %s is from another %s stream: rebuilding it", self.index.path,
                            stream)
            self.index.reset()
            archived = await rebuild_archive(js, self.index)
            if archived:
                log.info("operations index: %d archived record(s) indexed", archived)
            self.index.set_meta("stream", identity)
        caught = await catch_up(js, self.index, stream, last=int(info.state.last_seq or 0),
                                on_schema_error=self._schema_error)
        for record, revision in self.index.live():
            self.hold(unpack(record), revision)
        for record, revision in reversed(self.index.recent_terminal(self.recent)):
            self.hold(unpack(record), revision)
        self._counts = Counter({(t, st): n for t, st, n in self.index.counts()})
        self._analyse_soon()
        if caught:
            log.info("operations index: %d change(s) caught up from %s", caught, stream)
        return len(self._cache)

    def _analyse_soon(self) -> None:
        """Refresh the index's planner statistics beside the serving, when they are due."""
        if (self._analysing is None or self._analysing.done()) and self.index.analysis_due():
            self._analysing = asyncio.create_task(asyncio.to_thread(self.index.analyse), name="ops-index-analyse")

    def _schema_error(self, key: str, exc: Exception) -> None:
        self.metrics.rejected.labels(subject=f"$KV.{names.OPS_BUCKET}", reason="schema").inc()
        log.error("ignoring malformed op record %r: %s", key, exc)

    # --- what the store commits -------------------------------------------------------------

    def hold(self, op: Operation, revision: int) -> None:
        """Keep ``op`` in memory: while it runs, and among the ``recent`` ended ones after."""
        self._cache[op.op_id] = (op, revision)
        if not op.status.terminal:
            self._ended.pop(op.op_id, None)
            return
        self._ended[op.op_id] = None
        self._ended.move_to_end(op.op_id)
        while len(self._ended) > self.recent:
            oldest, _ = self._ended.popitem(last=False)
            self._cache.pop(oldest, None)

    def drop(self, op_id: str) -> None:
        """``op_id`` is gone from the bucket (found so by a write that lost a race)."""
        self._cache.pop(op_id, None)

    def record(self, before: Operation | None, op: Operation, revision: int, payload: bytes) -> None:
        """A committed write (``payload``: the JSON the bucket got): held, counted, queued for the index."""
        self.hold(op, revision)
        if before is not None:
            self._counts[(before.type, before.status.value)] -= 1
        self._counts[(op.type, op.status.value)] += 1
        self._unindexed[op.op_id] = (op, revision, payload)
        if before is None:
            self._new.add(op.op_id)
        if self._flush is None:
            self._flush = asyncio.get_running_loop().call_later(self.index_flush_s, self.flush_index)

    def flush_index(self) -> None:
        """Write what is queued for the index (batched: a running op's progress makes many writes)."""
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        if not self._unindexed:
            return
        batch, self._unindexed = self._unindexed, {}
        new, self._new = self._new, set()
        self.index.write(list(batch.values()), new=new, last_seq=max(revision for _, revision, _ in batch.values()))
        self._flushes += 1
        if self._flushes % 2000 == 0:  # every few minutes of steady writes
            self._analyse_soon()

    def forget(self, op_ids: list[str], *, archived: bool) -> None:
        """Ops retention has moved out of the bucket: no longer held; the index keeps an archived
        one (marked so) and drops a deleted one."""
        self.flush_index()
        for op_id in op_ids:
            found = self._cache.pop(op_id, None)
            self._ended.pop(op_id, None)
            op = found[0] if found is not None else self.get(op_id)
            if op is not None:
                self._counts[(op.type, op.status.value)] -= 1
        if archived:
            self.index.mark_archived(op_ids)
        else:
            self.index.delete(op_ids)

    # --- reading ------------------------------------------------------------------------------

    def get(self, op_id: str) -> Operation | None:
        found = self._cache.get(op_id) or self._unindexed.get(op_id)
        if found is not None:
            return found[0]  # type: ignore[no-any-return]
        stored = self.index.get(op_id)
        return None if stored is None else unpack(stored[0])

    def find(self, op_id: str) -> tuple[Operation, int] | None:
        """An op to write, with its revision: held, or read back from the index (an archived one is
        never written)."""
        found = self._cache.get(op_id) or self._unindexed.get(op_id)
        if found is not None:
            return found[0], found[1]
        stored = self.index.get(op_id)
        if stored is None or stored[2]:
            return None
        return unpack(stored[0]), stored[1]

    def all(self) -> Iterable[Operation]:
        """What is held: every op not yet ended and the ``recent`` that ended last (all of them, while
        the history is short). Every op is in :meth:`list`."""
        return (op for op, _ in self._cache.values())

    def children(self, parent_id: str) -> list[Operation]:
        self.flush_index()
        return [unpack(record) for record, _ in self.index.children(parent_id)]

    def total(self) -> int:
        """Every op the bucket holds (archived ones not counted)."""
        return sum(n for n in self._counts.values() if n > 0)

    def status_counts(self) -> dict[str, int]:
        """Records held (not archived) per status, every type together."""
        out: dict[str, int] = {}
        for (_, status), n in self._counts.items():
            if n > 0:
                out[status] = out.get(status, 0) + n
        return out

    def list(self, query: ListRequest) -> tuple[int, list[Operation]]:
        total, _, ops = self._query(query, query.limit)
        return total, ops

    def _query(self, query: ListRequest, limit: int) -> tuple[int, bool, builtins.list[Operation]]:
        self.flush_index()
        page = self.index.query(query, limit=limit)
        return page.total, page.capped, [unpack(record) for record in page.records]

    def page(self, query: ListRequest, *, max_bytes: int = limits.MAX_LIST_PAGE_BYTES) -> OpList:
        """:meth:`list` as one reply that fits the payload: at most ``MAX_LIST_PAGE_OPS`` operations
        and ``max_bytes`` of them; ``next_offset`` says where the next page starts."""
        limit = min(query.limit, limits.MAX_LIST_PAGE_OPS)
        total, capped, ops = self._query(query, limit)
        page: list[Operation] = []
        size = 0
        for op in ops:
            size += len(op.encode()) + 1
            if page and size > max_bytes:
                break
            page.append(op)  # one record alone always fits: records are kept under half the payload
        end = query.offset + len(page)
        more = end < total or (capped and len(ops) == limit)
        return OpList(total=total, operations=page, offset=query.offset, next_offset=end if more else None,
                      truncated=more and len(page) < query.limit, total_capped=capped)

    def collect(self) -> None:
        self.metrics.operations.clear()
        for (op_type, status), n in self._counts.items():
            if n > 0:
                self.metrics.operations.labels(type=op_type, status=status).set(n)

    async def stop(self) -> None:
        if self._analysing is not None:
            await asyncio.gather(self._analysing, return_exceptions=True)
        self.flush_index()


# --- catching the index up with the bucket's stream -------------------------------------------------


async def catch_up(js: JetStreamContext, index: OpsIndex, stream: str, *, last: int,
                   on_schema_error: Callable[[str, Exception], None]) -> int:
    """Apply to ``index`` every record the ``ops`` stream holds past the index's sequence, up to
    ``last``: the latest revision of each key changed since (a deleted key is archived or gone)."""
    start = index.last_seq + 1
    if start > last:
        return 0
    prefix = f"$KV.{names.OPS_BUCKET}."
    sub = await js.subscribe(f"{prefix}>", ordered_consumer=True,
                             config=ConsumerConfig(deliver_policy=DeliverPolicy.BY_START_SEQUENCE, opt_start_seq=start))
    batch: list[tuple[Operation, int]] = []
    gone: list[str] = []
    seen = 0
    try:
        while True:
            msg = await sub.next_msg(timeout=10.0)
            seq = msg.metadata.sequence.stream
            key = msg.subject[len(prefix):]
            seen += 1
            if key != HEALTH_KEY:
                if (msg.headers or {}).get(KV_OP) in (KV_DEL, KV_PURGE) or not msg.data:
                    gone.append(key)
                else:
                    try:
                        batch.append((decode(Operation, msg.data), seq))
                    except BadPayload as exc:
                        on_schema_error(key, exc)
            if len(batch) + len(gone) >= CATCH_UP_BATCH or seq >= last:
                await _index_batch(js, index, batch, gone, seq)
                batch, gone = [], []
            if seq >= last:
                break
    finally:
        await sub.unsubscribe()
    return seen


async def _index_batch(js: JetStreamContext, index: OpsIndex, records: list[tuple[Operation, int]],
                       gone: list[str], seq: int) -> None:
    index.upsert(records)
    # A key purged by retention was archived first, unless retention deletes: the archive says which.
    archived: list[tuple[Operation, int]] = []
    deleted: list[str] = []
    for key in gone:
        row = index.get(key)
        if row is not None and row[2]:
            continue
        try:
            msg = await js.get_last_msg(names.OPS_ARCHIVE_STREAM, names.ops_archive(key), direct=True)
        except NotFoundError:
            deleted.append(key)
            continue
        archived.append((decode(Operation, msg.data or b""), msg.seq or 0))
    index.upsert(archived, archived=True)
    index.delete(deleted, last_seq=seq)


async def rebuild_archive(js: JetStreamContext, index: OpsIndex) -> int:
    """Index every archived record (a new index: the bucket no longer holds them)."""
    try:
        info = await js.stream_info(names.OPS_ARCHIVE_STREAM)
    except NotFoundError:
        return 0
    last = int(info.state.last_seq or 0)
    if not info.state.messages:
        return 0
    sub = await js.subscribe(names.OPS_ARCHIVE_ALL, ordered_consumer=True,
                             config=ConsumerConfig(deliver_policy=DeliverPolicy.ALL))
    batch: list[tuple[Operation, int]] = []
    count = 0
    try:
        while True:
            msg = await sub.next_msg(timeout=10.0)
            with contextlib.suppress(BadPayload):
                batch.append((decode(Operation, msg.data), 0))
            seq = msg.metadata.sequence.stream
            if len(batch) >= CATCH_UP_BATCH or seq >= last:
                index.upsert(batch, archived=True)
                count += len(batch)
                batch = []
            if seq >= last:
                break
    finally:
        await sub.unsubscribe()
    return count
