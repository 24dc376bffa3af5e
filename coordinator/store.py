"""The only writer of the ``ops`` bucket: new records, changes by compare-and-set, withdrawals.

A change is a transition of ``coordinator.lifecycle``, a pure function of the record; the store
applies it to the record as committed and writes the answer expecting the revision it read. Changes
to one op are queued and committed by one writer at a time, all that queued meanwhile in one write
(a started and a completed event that arrive together cost one write). When another writer wins the
compare-and-set (a second coordinator during a hand-over) the record is read again and every change
of the batch applied again to it: transitions are pure, so applying one twice is safe.

Every committed write goes to the mirror (``coordinator.mirror``) and then to the listeners.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import nats.errors
from nats.js.errors import APIError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KV_DEL, KV_OP, KeyValue

from coordinator import lifecycle
from coordinator.fit import fit
from coordinator.lifecycle import NoChange
from coordinator.metrics import Metrics
from coordinator.mirror import OpsMirror
from ktrdr.runtime.publish import EXPECTED_LAST_SUBJECT_SEQ, AckedPublisher
from ktrdr.runtime.retry import RetryPolicy, any_error, transient_js_error
from subjects import limits, names
from subjects.models import BadPayload, Operation, decode

log = logging.getLogger(__name__)

# A transition bound to its arguments: the record as committed in, the record as it should be out.
Change = Callable[[Operation], Operation | NoChange]
Listener = Callable[[Operation, Operation], None]

# JetStream's error code for a message over the stream's max_msg_size.
MESSAGE_TOO_LARGE = 10054
# A submission's record write waits this long for its acknowledgement before trying again, not the
# publisher's 5 s: a write under way when its node or the stream leader is lost is never answered,
# and waiting 5 s for that spent the whole write budget on one try, so the client got a 503 for a
# loss that the cluster had got over in well under a second (tests/coordinator/test_cluster_drills.py).
CREATE_TRY_TIMEOUT_S = 1.5
# Withdrawing the record of a refused submission: until it is stored, however long JetStream is away.
WITHDRAW_RETRY = RetryPolicy(first_s=0.2, max_s=2.0)
# Compare-and-set tries of one batch before its writers are told to come back later.
COMMIT_TRIES = 5


class OperationExists(ValueError):
    pass


class RecordMayYetBeStored(RuntimeError):
    """A new record given up on after a try whose outcome is unknown (its cause says why): the caller
    refuses the submission and has it withdrawn (:meth:`OpsStore.withdraw`)."""

    def __init__(self, op_id: str, payload: bytes) -> None:
        super().__init__(f"operation {op_id}: its record may yet be stored")
        self.op_id, self.payload = op_id, payload


class ConcurrentWriters(RuntimeError):
    """Someone else kept writing the record between our read and our write: try again later."""


@dataclass(frozen=True, slots=True)
class Applied:
    """What became of one change: the record as committed with it (None: no such op), and the
    change's own answer on the try that was committed (None: never asked, no such op)."""

    record: Operation | None
    answer: Operation | NoChange | None

    @property
    def refused(self) -> NoChange | None:
        return self.answer if isinstance(self.answer, NoChange) else None

    @property
    def changed(self) -> Operation | None:
        """The record as this change left it, if it changed it."""
        return self.answer if isinstance(self.answer, Operation) else None


def _deleted_revision(missing: KeyNotFoundError) -> int | None:
    """The revision of the delete marker when the key was deleted (``KeyValue.get`` says not found
    either way; only a deleted key comes with its entry)."""
    entry = getattr(missing, "entry", None)
    return entry.revision if entry is not None else None


class OpsStore:
    def __init__(self, *, bucket: KeyValue, publisher: AckedPublisher, metrics: Metrics, mirror: OpsMirror) -> None:
        self.bucket = bucket
        self.publisher = publisher
        self.metrics = metrics
        self.mirror = mirror
        self._queued: dict[str, list[tuple[Change, asyncio.Future[Applied]]]] = {}
        self._writers: dict[str, asyncio.Task[None]] = {}
        self._listeners: list[Listener] = []
        # Refused submissions whose record may yet be stored and is being withdrawn (coordinator.layer
        # must not answer a repeat of one with a record about to vanish).
        self.withdrawing: set[str] = set()

    def subscribe(self, listener: Listener) -> None:
        """``listener(before, after)`` runs after every committed change."""
        self._listeners.append(listener)

    # --- new records --------------------------------------------------------------------------

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
        self.mirror.record(None, op, revision, payload)
        self._notify(None, op)
        return op

    async def withdraw(self, op_id: str, payload: bytes) -> None:
        """Make sure that the record ``payload`` of ``op_id`` does not remain: its submission was
        refused, but a write of it that timed out may yet be stored (a stream leader without its
        quorum keeps the write and commits it once the quorum is back: the quorum-loss drill stored
        every refused submission, pending for good and never offered).

        Settled by writing it again: stored now or found stored, it is deleted by a marker that
        expects its revision, so that a record submitted again under the same id since (another
        ``created_at``) is left alone (:func:`coordinator.lifecycle.withdraw`). Tried until settled;
        the mirror never held it.
        """
        subject = names.kv_key_subject(names.OPS_BUCKET, op_id)
        refused = decode(Operation, payload)

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
                if entry.value is None or entry.revision is None:
                    return False
                try:
                    found = decode(Operation, entry.value)
                except BadPayload:
                    return False  # not a record this coordinator wrote
                if isinstance(lifecycle.withdraw(found, refused=refused), NoChange):
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

    # --- changes ------------------------------------------------------------------------------

    async def mutate(self, op_id: str, change: Change) -> Applied:
        """Apply ``change`` to the record and commit it (nothing is written when it answers
        :class:`~coordinator.lifecycle.NoChange`), with whatever else was queued for the op meanwhile."""
        return await self.mutate_soon(op_id, change)

    def mutate_soon(self, op_id: str, change: Change) -> asyncio.Future[Applied]:
        """:meth:`mutate` without waiting: queued now (in order), committed by the op's writer."""
        future: asyncio.Future[Applied] = asyncio.get_running_loop().create_future()
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
                    record, answers = await self._commit(op_id, [change for change, _ in batch])
                except asyncio.CancelledError:
                    for _, future in batch + self._queued.pop(op_id, []):
                        future.cancel()
                    raise
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                for (_, future), answer in zip(batch, answers, strict=True):
                    if not future.done():
                        future.set_result(Applied(record, answer))
        finally:
            # No await between the empty queue and this: a change queued after it starts a writer.
            self._writers.pop(op_id, None)

    def _record_limit(self) -> int:
        # The server's max_payload, should it be set below nats-server's default, bounds us too.
        return min(limits.MAX_RECORD_BYTES, self.publisher.nc.max_payload // 2)

    async def _commit(self, op_id: str, changes: list[Change]) -> tuple[Operation | None,
                                                                          list[Operation | NoChange | None]]:
        limit = self._record_limit()
        for _ in range(COMMIT_TRIES):
            found = self.mirror.find(op_id)
            if found is None:
                return None, [None] * len(changes)
            before, revision = found
            after = before
            answers: list[Operation | NoChange | None] = []
            for change in changes:
                answer = change(after)
                answers.append(answer)
                if not isinstance(answer, NoChange):
                    after = answer
            if after is before:
                return before, answers
            payload = after.encode()
            if len(payload) > limit:
                after, payload = self._fit(after, len(payload), limit)
            try:
                new_revision = await self.publisher.kv_update(names.OPS_BUCKET, op_id, payload, last=revision)
            except KeyWrongLastSequenceError:
                # Someone else wrote (a second coordinator during a hand-over): re-read, retry.
                entry = await self.bucket.get(op_id)
                if entry.value is None:
                    self.mirror.drop(op_id)
                    return None, [None] * len(changes)
                self.mirror.hold(decode(Operation, entry.value), entry.revision or 0)
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
            self.mirror.record(before, after, new_revision, payload)
            self._notify(before, after)
            return after, answers
        raise ConcurrentWriters(f"operation {op_id}: too many concurrent writers")

    def _fit(self, op: Operation, size: int, limit: int) -> tuple[Operation, bytes]:
        """``op`` cut down to ``limit`` bytes (``coordinator.fit``), counted and logged."""
        self.metrics.rejected.labels(subject=f"$KV.{names.OPS_BUCKET}", reason="too large").inc()
        fitted = fit(op, size=size, limit=limit, at=datetime.now(UTC))
        log.error("operation %s: %s; dropped %s", op.op_id, fitted.note, ", ".join(fitted.dropped))
        return fitted.op, fitted.payload

    def _notify(self, before: Operation | None, after: Operation) -> None:
        if before is not None and not before.status.terminal and after.status.terminal:
            self.metrics.op_duration.labels(type=after.type, status=after.status.value).observe(
                after.duration_s or 0.0)
        for listener in self._listeners:
            try:
                listener(before or after, after)
            except Exception:
                log.exception("operation listener failed")
