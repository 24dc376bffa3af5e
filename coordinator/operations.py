"""The operations service: the only writer of the ``ops`` bucket.

It keeps a read-through mirror of the bucket for queries, applies every change with a
compare-and-set on the key's revision, one writer per op at a time,
folds progress and lifecycle events into the record. Events from an attempt that no longer owns
the operation are fenced: ignored and counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

import nats.errors
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, DeliverPolicy
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KV_DEL, KV_OP, KV_PURGE, KeyValue

from coordinator.health import HEALTH_KEY
from coordinator.history import OpsIndex, unpack
from coordinator.metrics import Metrics
from ktrdr.runtime.publish import EXPECTED_LAST_SUBJECT_SEQ, AckedPublisher
from ktrdr.runtime.retry import RetryPolicy, any_error, transient_js_error
from subjects import limits, names
from subjects.limits import bounded_text, json_size
from subjects.models import (
    AttemptRecord,
    BadPayload,
    ListRequest,
    Operation,
    OpEvent,
    OpEventKind,
    OpList,
    OpStatus,
    Progress,
    ProgressUpdate,
    decode,
)

log = logging.getLogger(__name__)

Mutation = Callable[[Operation], bool | None]
Listener = Callable[[Operation, Operation], None]

_EVENT_STATUS = {
    OpEventKind.COMPLETED: OpStatus.COMPLETED,
    OpEventKind.FAILED: OpStatus.FAILED,
    OpEventKind.CANCELLED: OpStatus.CANCELLED,
}


# JetStream's error code for a message over the stream's max_msg_size.
MESSAGE_TOO_LARGE = 10054
# Warnings a record keeps when it must be cut down to fit (the newest).
FITTED_WARNINGS = 20
# A submission's record write waits this long for its acknowledgement before trying again, not the
# publisher's 5 s: a write under way when its node or the stream leader is lost is never answered,
# and waiting 5 s for that spent the whole write budget on one try, so the client got a 503 for a
# loss that the cluster had got over in well under a second (tests/coordinator/test_cluster_drills.py).
CREATE_TRY_TIMEOUT_S = 1.5
# Committed records reach the index at most this late, in one batch (a list flushes first).
INDEX_FLUSH_S = 0.25
# Reading the stream to catch the index up: records per batch.
CATCH_UP_BATCH = 2000
# Withdrawing the record of a refused submission: until it is stored, however long JetStream is away.
WITHDRAW_RETRY = RetryPolicy(first_s=0.2, max_s=2.0)


class OperationExists(ValueError):
    pass


def _deleted_revision(missing: KeyNotFoundError) -> int | None:
    """The revision of the delete marker when the key was deleted (``KeyValue.get`` says not found
    either way; only a deleted key comes with its entry)."""
    entry = getattr(missing, "entry", None)
    return entry.revision if entry is not None else None


class RecordMayYetBeStored(RuntimeError):
    """A new record given up on after a try whose outcome is unknown (its cause says why): the caller
    refuses the submission and has it withdrawn (:meth:`Operations.withdraw`)."""

    def __init__(self, op_id: str, payload: bytes) -> None:
        super().__init__(f"operation {op_id}: its record may yet be stored")
        self.op_id, self.payload = op_id, payload


class ConcurrentWriters(RuntimeError):
    """Someone else kept writing the record between our read and our write: try again later."""


class Operations:
    """The ``ops`` bucket as the coordinator reads and writes it.

    In memory it holds what it needs to act (every op not yet ended) and the ``recent`` ops that
    ended last; everything is in the index (``coordinator.history``), which serves lists and
    reads of older ops. Memory and start-up time follow the live work, not the history.
    """

    def __init__(self, *, bucket: KeyValue, publisher: AckedPublisher, metrics: Metrics, index: OpsIndex,
                 recent: int = 5000, index_flush_s: float = INDEX_FLUSH_S) -> None:
        self.bucket = bucket
        self.publisher = publisher
        self.metrics = metrics
        self.index = index
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
        self._queued: dict[str, list[tuple[Mutation, asyncio.Future[Operation | None]]]] = {}
        self._writers: dict[str, asyncio.Task[None]] = {}
        self._listeners: list[Listener] = []
        # Refused submissions whose record may yet be stored and is being withdrawn (coordinator.layer
        # must not answer a repeat of one with a record about to vanish).
        self.withdrawing: set[str] = set()

    # --- reading --------------------------------------------------------------------------

    async def load(self) -> int:
        """Catch the index up with the bucket (only what changed since it last did, unless it is
        new or from another bucket), then hold every op not yet ended and the most recent others."""
        js = self.publisher.nc.jetstream(timeout=10.0)
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
            self._hold(unpack(record), revision)
        for record, revision in reversed(self.index.recent_terminal(self.recent)):
            self._hold(unpack(record), revision)
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

    def _hold(self, op: Operation, revision: int) -> None:
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

    def _record(self, before: Operation | None, op: Operation, revision: int, payload: bytes) -> None:
        """A committed write (``payload``: the JSON the bucket got): held, counted, queued for the index."""
        self._hold(op, revision)
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

    def get(self, op_id: str) -> Operation | None:
        found = self._cache.get(op_id) or self._unindexed.get(op_id)
        if found is not None:
            return found[0]  # type: ignore[no-any-return]
        stored = self.index.get(op_id)
        return None if stored is None else unpack(stored[0])

    def _find(self, op_id: str) -> tuple[Operation, int] | None:
        """An op to write: held, or read back from the index (an archived one is never written)."""
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

    async def stop(self) -> None:
        if self._analysing is not None:
            await asyncio.gather(self._analysing, return_exceptions=True)
        self.flush_index()

    def list(self, query: ListRequest) -> tuple[int, list[Operation]]:
        total, _, ops = self._query(query, query.limit)
        return total, ops

    def _query(self, query: ListRequest, limit: int) -> tuple[int, bool, list[Operation]]:
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

    def subscribe(self, listener: Listener) -> None:
        """``listener(before, after)`` runs after every committed change."""
        self._listeners.append(listener)

    def collect(self) -> None:
        self.metrics.operations.clear()
        for (op_type, status), n in self._counts.items():
            if n > 0:
                self.metrics.operations.labels(type=op_type, status=status).set(n)

    # --- writing --------------------------------------------------------------------------

    async def create(self, op: Operation, *, retry: RetryPolicy | None = None) -> Operation:
        """Write the new record; with ``retry``, wait out a leader election of the ``ops`` stream.

        Past the policy's tries or budget the last error is raised (``transient_js_error`` tells a
        caller that it was JetStream being unavailable, not the request).
        """
        payload = op.encode()
        uncertain = False

        async def write() -> int:
            nonlocal uncertain
            if retry is not None and not self.publisher.nc.is_connected:
                # Buffered until the reconnect, the write could be stored after the caller was told it
                # failed: the op would exist though its client was told to submit it again.
                raise nats.errors.ConnectionReconnectingError
            try:
                async with asyncio.timeout(None if retry is None else CREATE_TRY_TIMEOUT_S):
                    return await self.publisher.kv_create(names.OPS_BUCKET, op.op_id, payload)
            except KeyWrongLastSequenceError:
                try:
                    entry = await self.bucket.get(op.op_id)
                except KeyNotFoundError as missing:
                    last = _deleted_revision(missing)
                    if last is not None:
                        # Withdrawn (below): the id is free again, as nats' own kv.create has it.
                        uncertain = True  # this write too may time out and be stored
                        return await self.publisher.kv_update(names.OPS_BUCKET, op.op_id, payload, last=last)
                    if not uncertain:
                        raise OperationExists(f"operation {op.op_id} already exists") from None
                    # Stored at the leader, not yet on the replica that answered the read: ask again.
                    raise nats.errors.TimeoutError from None
                # An earlier try that timed out may have been stored after all: ours if identical.
                if uncertain and entry.value == payload and entry.revision is not None:
                    return entry.revision
                raise OperationExists(f"operation {op.op_id} already exists") from None
            except TimeoutError as exc:  # the publisher's (nats') or CREATE_TRY_TIMEOUT_S
                uncertain = True
                if isinstance(exc, nats.errors.TimeoutError):
                    raise
                raise nats.errors.TimeoutError from None

        def retrying(exc: BaseException, pause: float) -> None:
            log.warning("operation %s: its record could not be written yet (%s); retrying in %.1f s",
                        op.op_id, str(exc) or type(exc).__name__, pause)

        if retry is None:
            revision = await write()
        else:
            try:
                revision = await retry.run(write, on_retry=retrying,
                                           retry_on=lambda exc: transient_js_error(exc, nc=self.publisher.nc))
            except Exception as exc:
                if uncertain and transient_js_error(exc, nc=self.publisher.nc):
                    raise RecordMayYetBeStored(op.op_id, payload) from exc
                raise
        self._record(None, op, revision, payload)
        self._notify(None, op)
        return op

    async def withdraw(self, op_id: str, payload: bytes) -> None:
        """Make sure that the record ``payload`` of ``op_id`` does not remain: its submission was
        refused, but a write of it that timed out may yet be stored (a stream leader without its
        quorum keeps the write and commits it once the quorum is back: the quorum-loss drill stored
        every refused submission, pending for good and never offered).

        Settled by writing it again: stored now or found stored, it is deleted by a marker that
        expects its revision, so that a record submitted again under the same id since (another
        ``created_at``) is left alone. Tried until settled; the coordinator's mirror never held it.
        """
        subject = names.kv_key_subject(names.OPS_BUCKET, op_id)

        async def settle() -> bool:
            """Whether the refused write had been stored after all."""
            try:
                revision, stored = await self.publisher.kv_create(names.OPS_BUCKET, op_id, payload), False
            except KeyWrongLastSequenceError:
                try:
                    entry = await self.bucket.get(op_id)
                except KeyNotFoundError as missing:
                    if _deleted_revision(missing) is not None:
                        return False
                    raise nats.errors.TimeoutError from None  # stored, not yet readable here
                if entry.value != payload or entry.revision is None:
                    return False
                revision, stored = entry.revision, True
            await self.publisher.publish(subject, b"", headers={KV_OP: KV_DEL,
                                                                  EXPECTED_LAST_SUBJECT_SEQ: str(revision)})
            return stored

        def retrying(exc: BaseException, pause: float) -> None:
            log.debug("operation %s: not withdrawn yet (%s)", op_id, str(exc) or type(exc).__name__)

        self.withdrawing.add(op_id)
        try:
            stored = await WITHDRAW_RETRY.run(settle, retry_on=any_error, on_retry=retrying)
        finally:
            self.withdrawing.discard(op_id)
        if stored:
            log.info("operation %s: its refused submission was stored after all; withdrawn", op_id)
        else:
            log.info("operation %s: its refused submission was not stored", op_id)

    async def mutate(self, op_id: str, change: Mutation) -> Operation | None:
        """Apply ``change`` to the record and commit it; ``change`` returns False to leave it alone.

        Changes to one op are queued and committed by whichever caller arrived first, all that
        queued meanwhile in one compare-and-set write (a started and a completed event that arrive
        together cost one write). Returns the record as committed after this change.
        """
        return await self.mutate_soon(op_id, change)

    def mutate_soon(self, op_id: str, change: Mutation) -> asyncio.Future[Operation | None]:
        """:meth:`mutate` without waiting: queued now (in order), committed by the op's writer."""
        future: asyncio.Future[Operation | None] = asyncio.get_running_loop().create_future()
        self._queued.setdefault(op_id, []).append((change, future))
        if op_id not in self._writers:
            # The writer is a task of its own: a caller that is cancelled while waiting must not
            # strand the changes queued behind it.
            writer = asyncio.create_task(self._commit_queued(op_id), name=f"ops-writer-{op_id}")
            self._writers[op_id] = writer
        return future

    async def _commit_queued(self, op_id: str) -> None:
        try:
            while batch := self._queued.pop(op_id, None):
                try:
                    result = await self._commit(op_id, [change for change, _ in batch])
                except asyncio.CancelledError:
                    for _, future in batch + self._queued.pop(op_id, []):
                        future.cancel()
                    raise
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for _, future in batch:
                    if not future.done():
                        future.set_result(result)
        finally:
            # No await between the empty queue and this: a change queued after it starts a writer.
            self._writers.pop(op_id, None)

    def _record_limit(self) -> int:
        # The server's max_payload, should it be set below nats-server's default, bounds us too.
        return min(limits.MAX_RECORD_BYTES, self.publisher.nc.max_payload // 2)

    async def _commit(self, op_id: str, changes: list[Mutation]) -> Operation | None:
        limit = self._record_limit()
        for _ in range(5):
            found = self._find(op_id)
            if found is None:
                return None
            before, revision = found
            after = _clone(before)
            changed = [change(after) is not False for change in changes]
            if not any(changed):
                return before
            payload = after.encode()
            if len(payload) > limit:
                after, payload = self._fit(after, len(payload), limit)
            try:
                new_revision = await self.publisher.kv_update(names.OPS_BUCKET, op_id, payload, last=revision)
            except KeyWrongLastSequenceError:
                # Someone else wrote (a second coordinator during a hand-over): re-read, retry.
                entry = await self.bucket.get(op_id)
                if entry.value is None:
                    self._cache.pop(op_id, None)
                    return None
                self._hold(decode(Operation, entry.value), entry.revision)
                continue
            except (nats.errors.MaxPayloadError, APIError) as exc:
                if isinstance(exc, APIError) and exc.err_code != MESSAGE_TOO_LARGE:
                    raise
                # Smaller limits than we know of (the bucket's or the server's): retrying the same
                # write would fail forever and hold up every acknowledgement behind it. Fit it.
                limit = min(limit, len(payload)) // 2
                log.error("operation %s: a record of %d bytes was refused (%s); fitting it to %d",
                          op_id, len(payload), exc, limit)
                continue
            self._record(before, after, new_revision, payload)
            self._notify(before, after)
            return after
        raise ConcurrentWriters(f"operation {op_id}: too many concurrent writers")

    def _fit(self, op: Operation, size: int, limit: int) -> tuple[Operation, bytes]:
        """``op`` cut down to ``limit`` bytes, saying what was dropped: a record that cannot be
        written would leave the op unfinished for good.

        What accumulates (info, progress context, warnings) goes first and the op carries on; if
        that is not enough, the result and params go too and the op ends failed.
        """
        self.metrics.rejected.labels(subject=f"$KV.{names.OPS_BUCKET}", reason="too large").inc()
        fitted = _clone(op)
        dropped: list[str] = []
        if fitted.info:
            dropped.append(f"info ({json_size(fitted.info)} bytes)")
            fitted.info = {}
        if fitted.progress is not None and fitted.progress.context:
            dropped.append("progress context")
            fitted.progress.context = {}
        if len(fitted.warnings) > FITTED_WARNINGS:
            dropped.append(f"{len(fitted.warnings) - FITTED_WARNINGS} older warnings")
        fitted.warnings = [bounded_text(w, limits.MAX_ERROR_CHARS) for w in fitted.warnings[-FITTED_WARNINGS:]]
        note = f"the record would have been {size} bytes, over the {limit} a record may hold"
        payload = fitted.encode()
        if len(payload) > limit:
            # Still too large: what is left that can be large is the result and the params.
            if fitted.result is not None:
                dropped.append(f"result ({json_size(fitted.result)} bytes)")
                fitted.result = None
            dropped.append(f"params ({json_size(fitted.params)} bytes)")
            fitted.params = {}
            if fitted.status not in (OpStatus.FAILED, OpStatus.CANCELLED):
                fitted.status = OpStatus.FAILED
                fitted.completed_at = fitted.completed_at or datetime.now(UTC)
                attempt_record(fitted).ended_at = fitted.completed_at
                attempt_record(fitted).outcome = OpStatus.FAILED.value
            fitted.error = bounded_text(f"{note}; dropped {', '.join(dropped)}"
                                        + (f"; error: {fitted.error}" if fitted.error else ""), limits.MAX_ERROR_CHARS)
            fitted.cancel_reason = bounded_text(fitted.cancel_reason, limits.MAX_REASON_CHARS) \
                if fitted.cancel_reason else None
        else:
            fitted.warnings.append(f"{note}; dropped {', '.join(dropped)}")
        log.error("operation %s: %s; dropped %s", op.op_id, note, ", ".join(dropped))
        return fitted, fitted.encode()

    def _notify(self, before: Operation | None, after: Operation) -> None:
        if before is not None and not before.status.terminal and after.status.terminal:
            self.metrics.op_duration.labels(type=after.type, status=after.status.value).observe(
                after.duration_s or 0.0)
        for listener in self._listeners:
            try:
                listener(before or after, after)
            except Exception:
                log.exception("operation listener failed")

    # --- folding what workers publish -----------------------------------------------------

    def _owned_by(self, op: Operation, worker_id: str, attempt: int) -> bool:
        return op.attempt == attempt and op.worker_id in (None, worker_id)

    def _bounded(self, text: str | None, limit: int, *, subject: str, op_id: str, what: str) -> str | None:
        """``bounded_text``, logged and counted when it cuts: workers are not trusted to bound."""
        if text is None or len(text) <= limit:
            return text
        self.metrics.rejected.labels(subject=subject, reason="truncated").inc()
        log.warning("operation %s: %s of %d characters cut to %d", op_id, what, len(text), limit)
        return bounded_text(text, limit)

    def apply_event_soon(self, event: OpEvent) -> asyncio.Future[Operation | None]:
        """Queue the event's change to its op record; the future ends once it is committed."""
        fenced = False
        # Bounded once here, not in the fold (which runs again when a write races another).
        where = {"subject": names.OPS_EVENTS_ALL, "op_id": event.op_id}
        error = reason = None
        if event.event is OpEventKind.CANCELLED:
            reason = self._bounded(event.error, limits.MAX_REASON_CHARS, what="cancel reason", **where)
        else:
            error = self._bounded(event.error, limits.MAX_ERROR_CHARS, what=f"{event.event} error", **where)
        result, context, status = event.result, event.context, _EVENT_STATUS.get(event.event)
        if status is OpStatus.COMPLETED and result is not None:
            size = json_size(result)
            if size > limits.MAX_INLINE_RESULT_BYTES:
                # Kept in the record it would crowd out everything else; a full result has its store.
                self.metrics.rejected.labels(subject=names.OPS_EVENTS_ALL, reason="too large").inc()
                log.error("operation %s: an inline result of %d bytes; failing it", event.op_id, size)
                status, result = OpStatus.FAILED, None
                error = (f"the worker's result was {size} bytes, over the {limits.MAX_INLINE_RESULT_BYTES} a "
                         "record keeps inline; a full result belongs in the results store")
        # A worker's warning (JobContext.warn) rides in an info event's message.
        warning = (self._bounded(event.message, limits.MAX_ERROR_CHARS, what="warning", **where)
                   if event.event is OpEventKind.INFO and event.message else None)
        if event.event is OpEventKind.INFO and context:
            size = json_size(context)
            if size > limits.MAX_INFO_BYTES:
                self.metrics.rejected.labels(subject=names.OPS_EVENTS_ALL, reason="too large").inc()
                log.warning("operation %s: info of %d bytes dropped", event.op_id, size)
                context = {"dropped_info": bounded_text(
                    f"{size} bytes, over {limits.MAX_INFO_BYTES}: {', '.join(context)}", limits.MAX_ERROR_CHARS)}

        def fold(op: Operation) -> bool | None:
            nonlocal fenced
            if not self._owned_by(op, event.worker_id, event.attempt) or op.status.terminal:
                # A redelivered copy of an outcome we already applied is not a fencing case.
                fenced = not (op.status.terminal and op.worker_id == event.worker_id
                              and op.attempt == event.attempt)
                return False
            now = event.timestamp
            record = attempt_record(op)
            if event.event is OpEventKind.STARTED:
                if op.status is OpStatus.RUNNING:
                    return False
                op.status = OpStatus.RUNNING
                op.worker_id = event.worker_id
                op.started_at = op.started_at or now
                record.worker_id, record.started_at = event.worker_id, now
                if op.attempt == 1:
                    self.metrics.dispatch_latency.labels(type=op.type).observe(
                        max(0.0, (datetime.now(UTC) - op.created_at).total_seconds()))
                return None
            if event.event is OpEventKind.INFO:
                op.info.update(context)
                if event.checkpoint is not None:
                    op.checkpoint = event.checkpoint or None
                if warning and warning not in op.warnings:  # a redelivered event adds it once
                    op.warnings.append(warning)
                return None
            assert status is not None
            op.status = status
            op.worker_id = event.worker_id
            op.completed_at = now
            op.started_at = op.started_at or now
            record.ended_at, record.outcome = now, op.status.value
            if op.status is OpStatus.COMPLETED:
                op.result = result
                op.result_object = event.result_object
                if op.progress is not None:
                    op.progress.percentage = 100.0
            elif op.status is OpStatus.FAILED:
                op.error = error or "failed"
            else:
                op.cancel_reason = op.cancel_reason or reason or "cancelled"
                op.error = None
            return None

        def report(future: asyncio.Future[Operation | None]) -> None:
            if future.cancelled() or future.exception() is not None:
                return
            result = future.result()
            if result is None:
                self.metrics.rejected.labels(subject="ops.*.events", reason="unknown operation").inc()
                log.warning("event %s for unknown operation %s", event.event, event.op_id)
            elif fenced:
                self.metrics.fenced.labels(kind="event").inc()
                log.warning("fenced %s event of %s from %s attempt %d (owner: %s attempt %d)", event.event,
                            event.op_id, event.worker_id, event.attempt, result.worker_id, result.attempt)

        future = self.mutate_soon(event.op_id, fold)
        future.add_done_callback(report)
        return future

    def apply_progress_soon(self, update: ProgressUpdate) -> asyncio.Future[Operation | None]:
        fenced = False
        progress = Progress.model_validate(update.model_dump(include=set(Progress.model_fields)))
        where = {"subject": names.OPS_PROGRESS_ALL, "op_id": update.op_id}
        progress.message = self._bounded(progress.message, limits.MAX_PROGRESS_TEXT_CHARS,
                                         what="progress message", **where)
        progress.step = self._bounded(progress.step, limits.MAX_PROGRESS_TEXT_CHARS, what="progress step", **where)
        if progress.context and json_size(progress.context) > limits.MAX_PROGRESS_CONTEXT_BYTES:
            self.metrics.rejected.labels(subject=names.OPS_PROGRESS_ALL, reason="too large").inc()
            log.warning("operation %s: a progress context over %d bytes dropped", update.op_id,
                        limits.MAX_PROGRESS_CONTEXT_BYTES)
            progress.context = {}

        def fold(op: Operation) -> bool | None:
            nonlocal fenced
            if op.status is not OpStatus.RUNNING or not self._owned_by(op, update.worker_id, update.attempt):
                fenced = True
                return False
            op.progress = progress.model_copy()
            return None

        def report(future: asyncio.Future[Operation | None]) -> None:
            if future.cancelled() or future.exception() is not None:
                return
            if future.result() is None:
                self.metrics.rejected.labels(subject="ops.*.progress", reason="unknown operation").inc()
            elif fenced:
                self.metrics.fenced.labels(kind="progress").inc()

        future = self.mutate_soon(update.op_id, fold)
        future.add_done_callback(report)
        return future


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
                await _apply(js, index, batch, gone, seq)
                batch, gone = [], []
            if seq >= last:
                break
    finally:
        await sub.unsubscribe()
    return seen


async def _apply(js: JetStreamContext, index: OpsIndex, records: list[tuple[Operation, int]], gone: list[str],
                 seq: int) -> None:
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
        archived.append((decode(Operation, msg.data), msg.seq or 0))
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


def _clone(op: Operation) -> Operation:
    """A copy that changes can mutate without touching the committed record.

    Cheaper than ``model_copy(deep=True)`` (a third of the coordinator's time under load): only
    the containers that changes mutate in place are copied; params and results are replaced whole.
    """
    return op.model_copy(update={
        "attempts": [a.model_copy() for a in op.attempts],
        "offered": list(op.offered),
        "warnings": list(op.warnings),
        "progress": op.progress.model_copy() if op.progress is not None else None,
    })


def attempt_record(op: Operation) -> AttemptRecord:
    """The record of the op's current attempt, added if it has none yet."""
    for record in op.attempts:
        if record.attempt == op.attempt:
            return record
    record = AttemptRecord(attempt=op.attempt, route=op.route)
    op.attempts.append(record)
    return record
