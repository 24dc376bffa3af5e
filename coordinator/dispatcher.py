"""The dispatcher: routes operations to capability subjects and recovers them from lost workers.

Each type's declaration (``ktrdr.optypes``) gives its route: capabilities in order of preference.
Training goes GPU first: offered on ``jobs.training.gpu`` when any GPU worker holds a lease, and
also on ``jobs.training.cpu`` once ``gpu_fallback_timeout_s`` passes without a claim. The first
claim wins (``kv.create`` on the claim key), so a late GPU worker simply drops its copy. Types the
coordinator runs itself (parents) are recorded, never offered (``coordinator.parents``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.api import Header
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from coordinator import lifecycle
from coordinator.metrics import Metrics
from coordinator.operations import Operations, RecordMayYetBeStored
from coordinator.registry import WorkerRegistry
from coordinator.settings import CoordinatorSettings
from ktrdr.optypes import UnknownOpType, op_type
from ktrdr.runtime.publish import AckedPublisher
from ktrdr.runtime.retry import RetryPolicy, any_error, transient_js_error
from ktrdr.runtime.tasks import cancel_and_wait
from subjects import names
from subjects.models import (
    Claim,
    JobMessage,
    Operation,
    OpStatus,
    SubmitRequest,
    WorkerLease,
    decode,
    new_op_id,
)

log = logging.getLogger(__name__)

COORDINATOR_CLAIMANT = "coordinator"
# How often an offer that reached MaxDeliver without any claim is renewed before the op fails.
UNCLAIMED_REOFFERS = 3
# Publishing a job: about 17 s of tries. Offers repeat their Nats-Msg-Id, so a try that was stored
# after all is deduplicated, never offered twice.
OFFER_RETRY = RetryPolicy(first_s=0.1, max_s=1.0, attempts=20)
# A submission's writes during a leader election: the budget comes from the settings.
SUBMIT_RETRY = RetryPolicy(first_s=0.1, max_s=1.0)
# The offer of a recorded op whose submission ran out of budget: until it is stored.
BACKGROUND_OFFER_RETRY = RetryPolicy(first_s=0.1, max_s=1.0)


def _coordinated(op: Operation) -> bool:
    try:
        return op_type(op.type).on_coordinator
    except UnknownOpType:
        return False


def _retry_policy(type_name: str) -> RetryPolicy | None:
    try:
        return op_type(type_name).retry
    except UnknownOpType:
        return None


def _cancel_timer(timers: dict[str, asyncio.TimerHandle], op_id: str) -> None:
    handle = timers.pop(op_id, None)
    if handle is not None:
        handle.cancel()


def _where(capability: str) -> str:
    return capability.split(".", 1)[1]


def _attempt_started(op: Operation) -> datetime | None:
    for record in op.attempts:
        if record.attempt == op.attempt and record.started_at is not None:
            return record.started_at
    return op.started_at


def _before(when: datetime | None, started_at: datetime) -> bool:
    return when is not None and when < started_at


class OfferNotStored(RuntimeError):
    """A job that could not be published within its retry policy (the cause says why)."""


class Dispatcher:
    def __init__(
        self,
        *,
        js: JetStreamContext,
        publisher: AckedPublisher,
        ops: Operations,
        registry: WorkerRegistry,
        claims: KeyValue,
        settings: CoordinatorSettings,
        metrics: Metrics,
    ) -> None:
        self.js = js
        self.publisher = publisher
        self.ops = ops
        self.registry = registry
        self.claims = claims
        self.settings = settings
        self.metrics = metrics
        self._submit_retry = SUBMIT_RETRY.within(settings.write_retry_budget_s)
        self._fallbacks: dict[str, asyncio.TimerHandle] = {}
        self._retries: dict[str, asyncio.TimerHandle] = {}  # next attempts waiting out their pause
        # The JOBS sequence of each offer of an op still pending (this process's offers): a queued op
        # that is cancelled has its jobs deleted, or they would wait in the queue (and in its count
        # on the dashboard) until a worker of that capability comes to drop them, if one ever does.
        self._queued: dict[str, list[int]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        ops.subscribe(self._on_change)

    # --- submission -----------------------------------------------------------------------

    async def submit(self, request: SubmitRequest, *, admitted: bool = False) -> Operation:
        """Record the op and offer its job, both retried through a leader election within the budget
        (``write_retry_budget_s``); past it the last error is raised, ``transient_js_error`` says so.
        ``admitted``: the params are their model's dump already (``coordinator.admission``, a
        parent's children), not validated twice."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + (self._submit_retry.budget_s or 0.0)
        declared = op_type(request.type)
        params = request.params if admitted else declared.dump(declared.parse(request.params))
        op = Operation(
            op_id=request.op_id or new_op_id(request.type),
            type=request.type,
            params=params,
            parent_id=request.parent_id,
            max_attempts=request.max_attempts or self.settings.max_attempts,
        )
        if _coordinated(op):
            # Run by the coordinator itself (coordinator.parents): recorded, never offered to a worker.
            op.route, op.route_reason = "coordinator", "run by the coordinator"
            return await self._record(op)
        op = await self._record(lifecycle.with_offer(op, self._offer_for(op.type, why=None)))
        try:
            await self._offer(op, op.offered, retry=self._submit_retry.within(max(0.0, deadline - loop.time())))
        except OfferNotStored as exc:
            if exc.__cause__ is None or not transient_js_error(exc.__cause__, nc=self.publisher.nc):
                raise
            # The record is written, so the op exists: answering an error would have the client submit
            # it again. Its offer goes on in the background; it is pending meanwhile.
            log.warning("%s: offer not stored within the submission's budget (%s); still offering", op.op_id, exc)
            self._spawn(self._offer(op, op.offered, retry=BACKGROUND_OFFER_RETRY))
        self._schedule_fallback(op)
        return op

    async def _record(self, op: Operation) -> Operation:
        try:
            return await self.ops.create(op, retry=self._submit_retry)
        except RecordMayYetBeStored as exc:
            # The client is told no (503), so the record must not appear later, pending for good and
            # never offered, while the client submits the op again.
            log.warning("%s: refused, its record may yet be stored (%s); withdrawing it once JetStream answers",
                        op.op_id, exc.__cause__)
            self._spawn(self.ops.withdraw(exc.op_id, exc.payload))
            assert exc.__cause__ is not None
            raise exc.__cause__ from None

    def _offer_for(self, type_name: str, *, why: str | None) -> lifecycle.Offer:
        """Choose the capability to offer an attempt on, and say why (kept in the record): the first
        of the type's route that a live worker holds, else its last (the fallback)."""
        route = op_type(type_name).runs.capabilities
        prefix = f"{why}; " if why else ""
        chosen, reason = route[-1], _where(route[-1])
        for capability in route[:-1]:
            holders = self.registry.with_capability(capability)
            if holders:
                where = _where(capability)
                chosen, reason = capability, f"{where}: {len(holders)} {where} worker(s) holding a lease"
                break
        else:
            if len(route) > 1:
                reason = f"{_where(route[-1])}: no {'/'.join(_where(c) for c in route[:-1])} worker"
        return lifecycle.Offer(capability=chosen, route=_where(chosen), reason=prefix + reason, at=datetime.now(UTC))

    async def _offer(self, op: Operation, capabilities: list[str], *, reoffer: int = 0,
                     retry: RetryPolicy = OFFER_RETRY) -> None:
        for capability in capabilities:
            await self._offer_on(op, capability, reoffer=reoffer, retry=retry)

    async def _offer_on(self, op: Operation, capability: str, *, reoffer: int, retry: RetryPolicy) -> None:
        # Every field comes from the validated record: built without validating it again.
        job = JobMessage.model_construct(op_id=op.op_id, type=op.type, params=op.params, attempt=op.attempt,
                                         capability=capability, parent_id=op.parent_id, offered_at=datetime.now(UTC),
                                         checkpoint=op.checkpoint).encode()
        headers: dict[str, str] = {Header.MSG_ID: names.job_msg_id(op.op_id, op.attempt, capability, reoffer)}
        subject = names.jobs_subject(capability)

        def retrying(exc: BaseException, pause: float) -> None:
            log.warning("offer of %s on %s failed (%s); retrying", op.op_id, capability, exc)

        try:
            seq = await retry.run(lambda: self.publisher.publish(subject, job, headers=headers),
                                  retry_on=any_error, on_retry=retrying)
        except Exception as exc:
            # The record stays pending with its offer noted; the next coordinator start re-offers.
            raise OfferNotStored(f"could not publish {op.op_id} to {subject}: {exc}") from exc
        current = self.ops.get(op.op_id)
        if current is None or current.status is OpStatus.PENDING:
            self._queued.setdefault(op.op_id, []).append(seq)

    # --- GPU fallback ---------------------------------------------------------------------

    def _schedule_fallback(self, op: Operation) -> None:
        route = op_type(op.type).runs
        if op.capability is None or op.capability == route.fallback or route.fallback in op.offered:
            return
        assert op.offered_at is not None
        waited = (datetime.now(UTC) - op.offered_at).total_seconds()
        delay = max(0.0, self.settings.gpu_fallback_timeout_s - waited)
        self._cancel_fallback(op.op_id)
        loop = asyncio.get_running_loop()
        self._fallbacks[op.op_id] = loop.call_later(
            delay, lambda: self._spawn(self._fallback(op.op_id, op.attempt)))

    def _cancel_fallback(self, op_id: str) -> None:
        _cancel_timer(self._fallbacks, op_id)

    async def _fallback(self, op_id: str, attempt: int) -> None:
        self._fallbacks.pop(op_id, None)
        op = self.ops.get(op_id)
        if op is None or op.status is not OpStatus.PENDING or op.attempt != attempt:
            return
        if await self.claim_holder(op_id, attempt) is not None:
            return  # a GPU worker claimed it; its started event is on the way
        timeout = self.settings.gpu_fallback_timeout_s
        route = op_type(op.type).runs.capabilities
        preferred = op.capability
        if preferred not in route:
            return
        rest = list(route[route.index(preferred) + 1:])
        reason = f"{_where(rest[-1])}: {_where(preferred)} timeout after {timeout:g} s"
        updated = (await self.ops.mutate(op_id, lambda o: lifecycle.widen_offer(
            o, attempt=attempt, capabilities=rest, route=_where(rest[-1]), reason=reason))).record
        if updated is not None and all(c in updated.offered for c in rest):
            log.info("%s: no %s claim after %g s; also offered on %s", op_id, _where(preferred), timeout,
                     ", ".join(rest))
            await self._offer(updated, rest)

    def _on_change(self, before: Operation, after: Operation) -> None:
        if after.status is not OpStatus.PENDING:
            self._cancel_fallback(after.op_id)
            self._cancel_retry(after.op_id)
            offers = self._queued.pop(after.op_id, None)
            if offers and after.status is OpStatus.CANCELLED and before.status is OpStatus.PENDING:
                self._spawn(self._drop_jobs(after.op_id, offers))

    async def _drop_jobs(self, op_id: str, offers: list[int]) -> None:
        """Delete a cancelled queued op's jobs from JOBS. One a worker took meanwhile is gone already
        (or is dropped by that worker: the coordinator holds the claim). A coordinator that restarted
        offers its pending ops again on start (``resume``), and JOBS answers an offer it already holds
        with that job's sequence (the same ``Nats-Msg-Id``), so those are known here too."""
        for seq in offers:
            try:
                await self.js.delete_msg(names.JOBS_STREAM, seq)
            except Exception as exc:  # taken and acknowledged meanwhile, or JetStream busy: harmless
                log.debug("job %d of cancelled %s not deleted: %s", seq, op_id, exc)

    # --- claims ---------------------------------------------------------------------------

    async def claim_holder(self, op_id: str, attempt: int) -> str | None:
        claim = await self.claim_of(op_id, attempt)
        return claim.worker_id if claim is not None else None

    async def claim_of(self, op_id: str, attempt: int) -> Claim | None:
        try:
            entry = await self.claims.get(names.claim_key(op_id, attempt))
        except KeyNotFoundError:
            return None
        if entry.value is None:
            return None
        return decode(Claim, entry.value)

    async def claim_for_coordinator(self, op_id: str, attempt: int) -> bool:
        """Take the attempt's claim so that no worker can ever start it (cancel of a queued op)."""
        claim = Claim(op_id=op_id, attempt=attempt, worker_id=COORDINATOR_CLAIMANT)
        try:
            await self.claims.create(names.claim_key(op_id, attempt), claim.encode())
            return True
        except KeyWrongLastSequenceError:
            return False

    # --- recovery -------------------------------------------------------------------------

    async def resume(self) -> None:
        """After a (re)start: offer every pending op again and restart GPU fallback timers.

        Offers repeat the same Nats-Msg-Id, so inside the duplicate window they are deduped;
        later, a duplicate loses the claim and is dropped. Either way nothing runs twice.
        """
        for op in list(self.ops.all()):
            if op.status is OpStatus.PENDING and not _coordinated(op):
                if await self.claim_holder(op.op_id, op.attempt) is None:
                    await self._offer(op, op.offered or [op.capability or ""])
                self._schedule_fallback(op)

    async def worker_lost(self, worker_id: str, lease: WorkerLease | None, reason: str, *,
                          started_before: datetime | None = None) -> None:
        """Retry or fail every operation the lost worker owned.

        ``started_before``: the worker restarted under the same id at that time; only what the
        old process took before it is lost (the new one may already run ops of its own).
        """
        listed = {r.op_id: r.attempt for r in lease.running} if lease else {}
        for op in list(self.ops.all()):
            if op.status.terminal or _coordinated(op):
                continue
            owned = (op.status is OpStatus.RUNNING and op.worker_id == worker_id) or (
                listed.get(op.op_id) == op.attempt)
            taken_at = _attempt_started(op) if owned else None
            if not owned and op.status is OpStatus.PENDING:
                claim = await self.claim_of(op.op_id, op.attempt)
                owned = claim is not None and claim.worker_id == worker_id
                taken_at = claim.claimed_at if claim is not None else None
            if owned and started_before is not None and (taken_at is None or taken_at >= started_before):
                continue
            if owned:
                await self.recover(op.op_id, op.attempt, worker_id, reason)

    async def reap_orphans(self) -> None:
        """Ops whose owner holds no lease (e.g. it died while the coordinator was down)."""
        now = datetime.now(UTC)
        for op in list(self.ops.all()):
            if _coordinated(op):
                continue  # no worker holds it: the coordinator runs it and resumes it on start
            if op.status is OpStatus.RUNNING:
                lease = self.registry.workers.get(op.worker_id or "")
                if lease is None:
                    await self.recover(op.op_id, op.attempt, op.worker_id or "?", "no lease")
                elif _before(_attempt_started(op), lease.started_at):
                    # Its worker restarted under the same id while we were not watching.
                    await self.recover(op.op_id, op.attempt, lease.worker_id, "its worker restarted")
            elif op.status is OpStatus.PENDING and op.offered_at is not None and (
                    now - op.offered_at).total_seconds() > self.settings.lease_ttl_s:
                claim = await self.claim_of(op.op_id, op.attempt)
                if claim is None or claim.worker_id == COORDINATOR_CLAIMANT:
                    continue
                lease = self.registry.workers.get(claim.worker_id)
                if lease is None:
                    await self.recover(op.op_id, op.attempt, claim.worker_id, "no lease")
                elif _before(claim.claimed_at, lease.started_at):
                    await self.recover(op.op_id, op.attempt, claim.worker_id, "its worker restarted")

    async def recover(self, op_id: str, attempt: int, worker_id: str, reason: str) -> None:
        lost = f"worker {worker_id} lost ({reason}) during attempt {attempt}"
        applied = await self.ops.mutate(op_id, lambda op: lifecycle.lose_worker(
            op, attempt=attempt, worker_id=worker_id, reason=reason, at=datetime.now(UTC),
            offer=lambda: self._offer_for(op.type, why=f"retry after {lost}")))
        op, mine = applied.record, applied.changed
        if op is None:
            return
        retried = mine is not None and mine.status is OpStatus.PENDING
        if retried and op.status is OpStatus.PENDING and op.attempt == attempt + 1:
            self.metrics.retries.labels(type=op.type).inc()
            log.warning("%s: %s; retrying as attempt %d", op_id, lost, op.attempt)
            await self._offer(op, op.offered)
            self._schedule_fallback(op)
        elif op.status is OpStatus.FAILED:
            log.error("%s: %s", op_id, op.error)

    def retry_of(self, op: Operation) -> lifecycle.Retry | None:
        """How a retryable failure of ``op`` is retried: as its type's retry policy says (None: never)."""
        policy = _retry_policy(op.type)
        if policy is None:
            return None
        return lifecycle.Retry(tries=policy.attempts, offer=lambda: self._offer_for(
            op.type, why=f"retry after attempt {op.attempt} failed"))

    def failure_retried(self, op: Operation) -> None:
        """``op`` is pending again after a retryable failure: its next attempt is offered after the
        pause its type's policy gives (in the background: the report's acknowledgement does not wait
        for it). A coordinator that restarts meanwhile offers it at once (:meth:`resume`)."""
        policy = _retry_policy(op.type)
        delay = policy.delay(op.attempt - 2) if policy is not None else 0.0
        self.metrics.retries.labels(type=op.type).inc()
        log.warning("%s: attempt %d failed, retryably; retrying as attempt %d in %.1f s", op.op_id, op.attempt - 1,
                    op.attempt, delay)
        self._cancel_retry(op.op_id)
        self._retries[op.op_id] = asyncio.get_running_loop().call_later(
            delay, lambda: self._spawn(self._offer_retry(op.op_id, op.attempt)))

    def _cancel_retry(self, op_id: str) -> None:
        _cancel_timer(self._retries, op_id)

    async def _offer_retry(self, op_id: str, attempt: int) -> None:
        self._retries.pop(op_id, None)
        op = self.ops.get(op_id)
        if op is None or op.status is not OpStatus.PENDING or op.attempt != attempt:
            return  # cancelled meanwhile, or recovered by another way
        try:
            await self._offer(op, op.offered)
        except OfferNotStored as exc:
            log.error("%s: %s; the next coordinator start offers it", op_id, exc)
            return
        self._schedule_fallback(op)

    async def fail_undeliverable(self, stream_seq: int, deliveries: int | None) -> None:
        """A job that reached MaxDeliver: remove the message from the queue, then renew the offer
        if no worker ever claimed it, else fail the op.

        Deliveries without a claim are hand-backs: a worker serving several capabilities can be
        handed a job on one just after its last slot went to another, and gives it back. Those
        say nothing about the job, so they must not fail it; a renewed offer starts its count
        again. Only :data:`UNCLAIMED_REOFFERS` times, so a job that kills every worker before it
        can claim still ends.
        """
        try:
            raw = await self.js.get_msg(names.JOBS_STREAM, stream_seq)
        except Exception as exc:
            log.warning("max-deliveries advisory for seq %d: message gone (%s)", stream_seq, exc)
            return
        with contextlib.suppress(Exception):
            await self.js.delete_msg(names.JOBS_STREAM, stream_seq)
        try:
            job = decode(JobMessage, raw.data or b"")
        except Exception:
            return
        if await self.claim_of(job.op_id, job.attempt) is None and await self._reoffer(job, deliveries):
            return
        error = f"job could not be delivered to a worker ({deliveries or 'max'} deliveries)"
        # Take the claim so that a copy still in flight can never start the failed attempt.
        await self.claim_for_coordinator(job.op_id, job.attempt)
        await self.ops.mutate(job.op_id, lambda op: lifecycle.undeliverable(
            op, attempt=job.attempt, error=error, at=datetime.now(UTC)))

    async def _reoffer(self, job: JobMessage, deliveries: int | None) -> bool:
        """Offer ``job`` afresh, recorded on its attempt; False once the renewals are used up."""
        applied = await self.ops.mutate(job.op_id, lambda op: lifecycle.renew_offer(
            op, attempt=job.attempt, capability=job.capability, deliveries=deliveries, limit=UNCLAIMED_REOFFERS))
        op, renewed = applied.record, applied.changed
        record = None if renewed is None else lifecycle.current_attempt(renewed)
        if op is None or record is None:
            return False
        renewal = record.reoffers
        log.warning("%s: offer on %s reached MaxDeliver unclaimed; renewed (%d of %d)", job.op_id,
                    job.capability, renewal, UNCLAIMED_REOFFERS)
        await self._offer(op, [job.capability], reoffer=renewal)
        return True

    # --- lifecycle ------------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop(self) -> None:
        for handle in [*self._fallbacks.values(), *self._retries.values()]:
            handle.cancel()
        self._fallbacks.clear()
        self._retries.clear()
        self._queued.clear()
        await cancel_and_wait(list(self._tasks), what="dispatcher task")
