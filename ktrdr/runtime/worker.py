"""The worker runtime shared by every worker type.

A worker registers, keeps its lease alive in the ``workers`` bucket, fetches jobs from one
durable pull consumer per capability only while it has a free slot, claims each operation
atomically (``kv.create`` on ``claims/<op>_<attempt>``), runs the handler (blocking handlers in a
thread), publishes progress and the outcome, and answers the cancels of its ops that the coordinator
forwards from ``ops.<id>.cancel``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from ktrdr import __version__
from ktrdr.cancel import OperationCancelled
from ktrdr.errors import failure_of
from ktrdr.optypes import OpType, types_on
from ktrdr.runtime.connection import NatsAuth, connect
from ktrdr.runtime.context import Handler, JobContext, NatsReporter, call_handler
from ktrdr.runtime.hostpool import claim_credential, hold
from ktrdr.runtime.publish import AckedPublisher
from ktrdr.runtime.pull import JobPuller
from ktrdr.runtime.retry import RetryPolicy, transient_js_error
from ktrdr.runtime.services import Services, jetstream_services
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.stalls import StallWatch
from ktrdr.runtime.tasks import cancel_and_wait
from ktrdr.runtime.topology import Buckets, TopologyMissing, bind_topology
from subjects import limits, names, roles
from subjects.limits import bounded_text
from subjects.models import (
    BadPayload,
    CancelReply,
    CancelRequest,
    Claim,
    JobMessage,
    Operation,
    OpEvent,
    OpEventKind,
    OpStatus,
    RegistrationAck,
    RunningOp,
    WorkerInfo,
    WorkerLease,
    WorkerState,
    decode,
)

log = logging.getLogger(__name__)

# Pauses between claim tries whose acknowledgement was lost.
CLAIM_RETRY = RetryPolicy(first_s=0.1, max_s=2.0)
# Registration: the lease keeps a worker visible meanwhile, so asking again can be slow.
REGISTER_RETRY = RetryPolicy(first_s=0.5, max_s=10.0)
# Default ids take the lowest index no other worker of the same type on this host holds, up to this.
MAX_DEFAULT_INDEX = 64
# An outcome event not yet stored is sent again until it is: an outcome must not be lost.
CONFIRM_RETRY = RetryPolicy(first_s=0.1, max_s=2.0)
# A lease change (an op started or ended) is written this long after it, not only on the next
# heartbeat; the changes within it share one write, so a busy worker adds a few per second.
LEASE_CHANGE_DELAY_S = 0.1
# How long a handler runs before its started event is sent (sooner if it reports progress or info).
STARTED_DELAY_S = 0.05


@dataclass
class _Running:
    ctx: JobContext
    task: asyncio.Task[None] | None = None
    claimed: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    # Until its outcome is decided a cancel is answered here; from then on, by the coordinator.
    cancellable: bool = True
    fenced: bool = False


@dataclass
class _SentEvent:
    subject: str
    payload: bytes
    kind: OpEventKind
    ack: asyncio.Future[int] | None = None


def _stream_seq(msg: Msg) -> int:
    """A job's sequence in JOBS: the order it was offered in, across every subject."""
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:
        return 0


class WorkerRefused(RuntimeError):
    """The coordinator refused this worker's registration (its id is in use by another live process)."""


def default_worker_id(settings: WorkerSettings, worker_type: str, index: int | None = None) -> str:
    host = "".join(c if c.isalnum() or c in "-_" else "-" for c in settings.hostname)[:40]
    if index is None:
        index = settings.worker_index or 0
    return f"{host}-{worker_type}-{index}"


def claim_worker_index(settings: WorkerSettings, worker_type: str) -> tuple[int, IO[bytes] | None]:
    """The index of a worker without an id, and the open lock file that holds it for this process.

    ``KTRDR_WORKER_INDEX`` when set (its lock is taken if free, so that a worker without one skips
    it); else the lowest index whose lock under ``$KTRDR_HOME/run`` no live process of this host holds
    (an ``flock``, released when the process ends however it ends). Several workers of one type
    started on a host without ids so get distinct ones, the same after a restart of all of them.
    Without a writable home: the index, or 0, unlocked (the coordinator still refuses a duplicate).
    """
    folder = settings.home / "run"
    stem = default_worker_id(settings, worker_type, 0).removesuffix("-0")
    wanted = [settings.worker_index] if settings.worker_index is not None else range(MAX_DEFAULT_INDEX)
    for index in wanted:
        held = _lock(folder / f"{stem}-{index}.lock")
        if held is not None or settings.worker_index is not None:
            return index, held
    return 0, None


def _lock(path: Path) -> IO[bytes] | None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    return hold(path, "ab")


class Worker:
    """One worker process. ``handlers`` maps each operation type it runs (its declaration,
    ``ktrdr.optypes``) to the handler: ``handler(ctx, params) -> result``."""

    def __init__(
        self,
        *,
        settings: WorkerSettings,
        worker_type: str,
        capabilities: list[str],
        handlers: Mapping[OpType[Any, Any], Handler],
        slots: int = 1,
        gpu: bool = False,
        device_name: str | None = None,
        device_memory_mb: int | None = None,
        status: Callable[[], dict[str, Any]] | None = None,
        active: asyncio.Event | None = None,
    ) -> None:
        """``active``: fetch jobs only while this event is set (None: always). A worker type with
        one active instance (the IB host) clears it while standby; the lease then says standby."""
        extra = [c.strip() for c in settings.extra_capabilities.split(",") if c.strip()]
        self.settings = settings
        self.worker_type = worker_type
        self.capabilities = list(dict.fromkeys([*capabilities, *extra]))
        for cap in self.capabilities:
            names.validate_capability(cap)
            # Every type offered on a capability reaches any worker serving it: one it cannot run
            # would be refused for good (terminated), however many others could have run it.
            missing = [t.name for t in types_on(cap) if t not in handlers]
            if missing:
                raise ValueError(f"capability {cap} carries {', '.join(missing)}: no handler given for it")
        self.handlers: dict[str, tuple[OpType[Any, Any], Handler]] = {t.name: (t, h) for t, h in handlers.items()}
        self._index_lock: IO[bytes] | None = None
        if settings.worker_id:
            worker_id = settings.worker_id
        else:
            index, self._index_lock = claim_worker_index(settings, worker_type)
            worker_id = default_worker_id(settings, worker_type, index)
        self.worker_id = names.validate_token(worker_id, what="worker id")
        self.slots = settings.slots or slots
        self.gpu = settings.gpu if settings.gpu is not None else gpu
        self.device_name = settings.device_name or device_name
        self.device_memory_mb = settings.device_memory_mb or device_memory_mb
        self._status = status
        self._active = active
        self.started_at = datetime.now(UTC)
        self.rejected: Counter[str] = Counter()
        # Coroutine handlers that held the loop past a quarter heartbeat: counted, and shown in the lease.
        self.stalls = StallWatch(threshold_s=self.settings.heartbeat_s / 4)
        self.registered = asyncio.Event()
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.buckets: Buckets | None = None
        self.publisher: AckedPublisher | None = None
        self._reporter: NatsReporter = None  # type: ignore[assignment]
        self._services: Services = None  # type: ignore[assignment]
        self._running: dict[str, _Running] = {}
        self._jobs: set[asyncio.Task[None]] = set()  # every job task, until its outcome is published
        self._pullers: list[JobPuller] = []
        self._cancel_sub: Subscription | None = None
        self._cancel_replies: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self._stopped = asyncio.Event()
        # Why the server cut this worker off (revoked), or the coordinator refused its id, once it has.
        self.refused: str | None = None
        self.host = roles.LOCAL_IB_HOST if worker_type == "ib" else roles.LOCAL_HOST
        self._fetching = True
        self._tasks: list[asyncio.Task[None]] = []
        self._lease_change: asyncio.TimerHandle | None = None
        self._lease_writes: set[asyncio.Task[None]] = set()
        self._heads: dict[str, int] = {}  # capability -> the JOBS sequence of the job last handed back from it
        self._requesting = False  # request_jobs under way
        self._request_again = False  # asked for meanwhile: look again when it ends
        self._pool_hold: IO[bytes] | None = None  # the host credential taken from a pool, held while running
        self._lease_written: WorkerLease | None = None  # the last lease written, but its time
        self._holding = False  # a lease written, pull requests out: a start past this point is seen through
        self._duplicate = False  # refused at registration once serving: another live process has this id

    # --- lifecycle ------------------------------------------------------------------------

    @property
    def info(self) -> WorkerInfo:
        return WorkerInfo(
            worker_id=self.worker_id, worker_type=self.worker_type, capabilities=self.capabilities,
            gpu=self.gpu, device_name=self.device_name, device_memory_mb=self.device_memory_mb,
            host=self.settings.hostname, pid=os.getpid(), version=__version__, slots=self.slots,
            started_at=self.started_at)

    async def start(self) -> None:
        """Connect, register, then hold a lease and fetch jobs.

        Until it is registered the worker holds nothing (no lease, no pull request), so a refusal
        (:class:`WorkerRefused`: its id is in use by another live process) leaves no trace, and a
        stop asked for meanwhile (:meth:`run`) ends the start at once.
        """
        role = roles.IB if self.worker_type == "ib" else roles.WORKER
        if self.settings.nats_creds is None and self.settings.nats_creds_pool is not None:
            key, self._pool_hold = claim_credential(self.settings.nats_creds_pool)
            self.settings = self.settings.model_copy(update={"nats_creds": key})
            log.info("holding the host credential %s of the pool %s", key.name, self.settings.nats_creds_pool)
        auth = NatsAuth.resolve(self.settings, role=role)
        # The fleet host whose key this is: its registration, lease and reports go under that name,
        # the only one the key may publish under.
        self.host = (auth.credential.host if auth.credential else None) or self.host
        try:
            self.nc = await connect(self.settings.nats_url, name=f"ktrdr-{self.worker_id}",
                                    on_reconnect=self._on_reconnect, auth=auth, on_refused=self._refused_by_server,
                                    source=self.settings.nats_url_source)
            self.js = self.nc.jetstream(timeout=5.0)
            # Only the coordinator creates streams and buckets: until it has, say what is missing and wait.
            self.buckets = await bind_topology(self.js)
            self.publisher = AckedPublisher(nc=self.nc)
            await self.publisher.start()
            seen = (await self._held_lease())[0]
            await self._register_first()
            await self._take_lease(seen)
        except BaseException:
            await self._abandon_start()
            raise
        self._holding = True
        self._reporter = NatsReporter(self.publisher, host=self.host)
        self._services = jetstream_services(self.js, host=self.host)
        # One subscription for every op this worker will run, held from before the first claim, on
        # the subject the coordinator forwards this worker's cancels to: whoever owns a claim is
        # reachable, and a cancel reaches only its worker (``ops.*.cancel`` on every worker made
        # each cancel a delivery per worker of the fleet). A subscription per op cost a SUB and an
        # UNSUB each, and each of those resets the server's per-connection routing caches: about a
        # tenth of the platform's CPU per zero-duration op (bench/README.md).
        self._cancel_sub = await self.nc.subscribe(names.worker_cancel(self.host, self.worker_id, "*"),
                                                   cb=self._on_cancel)
        self._tasks.append(asyncio.create_task(self._heartbeat_loop(), name="heartbeat"))
        if not self.registered.is_set():
            self._tasks.append(asyncio.create_task(self._register_loop(), name="register"))
        for cap in self.capabilities:
            puller = JobPuller(nc=self.nc, capability=cap, expires_s=self.settings.fetch_timeout_s,
                               on_job=functools.partial(self._on_job, capability=cap))
            await puller.start()
            self._pullers.append(puller)
        await self.request_jobs()
        log.info("worker %s (%s) serving %s with %d slot(s)", self.worker_id, self.worker_type,
                 ", ".join(self.capabilities), self.slots)

    async def run(self) -> None:
        """Start, then serve until :meth:`stop` (or SIGTERM/SIGINT through :func:`run_until_signal`).

        A stop asked for while the worker still connects, waits for the coordinator's buckets or
        registers ends it at once: it holds nothing yet. From its lease on, it stops gracefully
        (:meth:`_shutdown`: running work gets the grace period, then is cancelled).
        """
        if self.nc is None and not await self._start_unless_stopped():
            return
        await self._stop.wait()
        await self._shutdown()

    async def _start_unless_stopped(self) -> bool:
        starting = asyncio.create_task(self.start(), name=f"start-{self.worker_id}")
        stopping = asyncio.create_task(self._stop.wait(), name=f"stop-{self.worker_id}")
        try:
            await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopping.cancel()
        if starting.done() or self._holding:
            await starting  # raises what the start raised
            return True
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        log.info("worker %s stopped before it started serving", self.worker_id)
        return False

    async def _abandon_start(self) -> None:
        """Undo a start that failed or was stopped before the worker held anything."""
        if self.publisher is not None:
            with contextlib.suppress(Exception):
                await self.publisher.stop()
            self.publisher = None
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.close()
            self.nc = None
        self._release_index()

    def _release_index(self) -> None:
        if self._index_lock is not None:
            self._index_lock.close()
            self._index_lock = None
        if self._pool_hold is not None:
            self._pool_hold.close()
            self._pool_hold = None

    def request_stop(self) -> None:
        self._stop.set()

    def _refused_by_server(self, why: str) -> None:
        # The host was revoked: nothing can be reported any more; stop (the process exits with 3).
        self.refused = why
        self.request_stop()

    async def stop(self) -> None:
        self._stop.set()
        if self.nc is not None and not self._stopped.is_set():
            await self._shutdown()

    async def __aenter__(self) -> Worker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _shutdown(self) -> None:
        if self._stopped.is_set():
            return
        self._stopped.set()
        self._fetching = False
        await self.request_jobs()
        running = list(self._jobs)
        if running:
            log.info("stopping: waiting up to %.1f s for %d running operation(s)",
                     self.settings.grace_s, len(self._running))
            _, pending = await asyncio.wait(running, timeout=self.settings.grace_s)
            if pending:
                for r in list(self._running.values()):
                    r.ctx.token.cancel("worker shutting down")
                await asyncio.wait(pending, timeout=self.settings.cancel_wait_s)
        # Drained, not waited out: what the open pull requests deliver meanwhile is handed back.
        for puller in self._pullers:
            await puller.stop()
        await cancel_and_wait(self._tasks, what=f"worker {self.worker_id} task")
        self._tasks.clear()
        if self._lease_change is not None:
            self._lease_change.cancel()
            self._lease_change = None
        await cancel_and_wait(self._lease_writes, what="lease write")
        await cancel_and_wait(self._cancel_replies, what="cancel reply")
        if self._cancel_sub is not None:
            with contextlib.suppress(Exception):
                await self._cancel_sub.unsubscribe()
            self._cancel_sub = None
        assert self.nc is not None and self.buckets is not None
        try:
            await self._before_disconnect()
        except Exception:
            log.exception("shutdown hook failed")
        reachable = self.nc.is_connected  # cut off (revoked): every write would only time out
        # A worker refused as a duplicate shares its lease key with the live process it duplicates:
        # deleting it would tell the coordinator that one has stopped.
        if reachable and not self._duplicate:
            with contextlib.suppress(Exception):
                await self.buckets.workers.delete(names.lease_key(self.host, self.worker_id))
        if self.publisher is not None:
            await self.publisher.stop()
        with contextlib.suppress(Exception):
            await (self.nc.drain() if reachable else self.nc.close())
        self._release_index()
        log.info("worker %s stopped", self.worker_id)

    async def _before_disconnect(self) -> None:
        """Hook for worker types: runs at shutdown after running work ended, while NATS is still
        connected (the IB host hands its active-instance lock over here)."""

    # --- lease and registration ---------------------------------------------------------------

    def lease(self) -> WorkerLease:
        running = [RunningOp(op_id=op, attempt=r.ctx.attempt) for op, r in self._running.items()]
        if not self._fetching:
            state = WorkerState.DRAINING
        elif not self.is_active:
            state = WorkerState.STANDBY
        else:
            state = WorkerState.BUSY if len(running) >= self.slots else WorkerState.IDLE
        status = dict(self._status()) if self._status else {}
        if self.rejected:
            status["rejected_messages"] = sum(self.rejected.values())
        if self.stalls.total:
            status["loop_stalls"] = self.stalls.total
        return WorkerLease(**self.info.model_dump(), state=state, running=running,
                           lease_ttl_s=self.settings.lease_ttl_s, status=status)

    async def _put_lease(self, *, unless_unchanged: bool = False) -> None:
        """Write the lease; with ``unless_unchanged``, only if it differs from the last one written.

        A change (an op started or ended) is written after LEASE_CHANGE_DELAY_S, and an op that
        starts and ends within it leaves the lease as it was: that write would be one more record
        and one more watch delivery to the coordinator and every dashboard per short op, for nothing.
        The heartbeat writes whatever it holds: the write is what keeps the lease alive.
        """
        assert self.buckets is not None
        lease = self.lease()
        # What a lease says, but when it was written.
        said = lease.model_copy(update={"heartbeat_at": self.started_at})
        if unless_unchanged and said == self._lease_written:
            return
        await self.buckets.workers.put(names.lease_key(self.host, self.worker_id), lease.encode())
        self._lease_written = said
        self._lease_stored()

    def _lease_stored(self) -> None:
        if self.settings.lease_file is not None:
            try:
                self.settings.lease_file.write_text(f"{self.settings.lease_ttl_s}\n")
            except OSError as exc:
                log.warning("cannot write the lease file %s: %s", self.settings.lease_file, exc)

    async def _held_lease(self) -> tuple[int, WorkerLease | None]:
        """The revision this worker's lease key is at (0: none) and the lease it holds, None where
        it holds none (never written, deleted, or an expiry marker)."""
        assert self.buckets is not None
        try:
            entry = await self.buckets.workers.get(names.lease_key(self.host, self.worker_id))
        except KeyNotFoundError as gone:
            return (gone.entry.revision or 0) if gone.entry else 0, None
        try:
            return entry.revision or 0, WorkerLease.model_validate_json(entry.value or b"")
        except ValueError:
            return entry.revision or 0, None

    async def _take_lease(self, seen: int) -> None:
        """Write the first lease over the revision seen before registering, and only over it.

        The coordinator refuses an id whose lease another live process writes, but two processes
        started with one id in the same instant are both welcome: neither has written a lease yet.
        Of their two first writes only one finds the key where it was; the other is refused here,
        before it holds anything. A lease that merely expired meanwhile (its marker) is no rival.
        """
        assert self.buckets is not None
        key = names.lease_key(self.host, self.worker_id)
        for _ in range(3):
            lease = self.lease()
            try:
                await self.buckets.workers.update(key, lease.encode(), last=seen)
            except KeyWrongLastSequenceError:
                seen, rival = await self._held_lease()
                if rival is not None and (rival.pid, rival.host, rival.started_at) != (
                        os.getpid(), self.settings.hostname, self.started_at):
                    raise WorkerRefused(
                        f"worker id {self.worker_id} was taken by another process (pid {rival.pid} on "
                        f"{rival.host}) as this one started: give each worker its own KTRDR_WORKER_ID or "
                        "KTRDR_WORKER_INDEX, or set neither") from None
                continue
            self._lease_written = lease.model_copy(update={"heartbeat_at": self.started_at})
            self._lease_stored()
            return
        raise WorkerRefused(f"the lease of worker id {self.worker_id} kept changing as this one started")

    def _lease_changed(self) -> None:
        if self._lease_change is None and not self._stopped.is_set():
            self._lease_change = asyncio.get_running_loop().call_later(LEASE_CHANGE_DELAY_S, self._write_lease)

    def _write_lease(self) -> None:
        self._lease_change = None
        task = asyncio.create_task(self._put_lease_logged(), name="lease-write")
        self._lease_writes.add(task)
        task.add_done_callback(self._lease_writes.discard)

    async def _put_lease_logged(self) -> None:
        try:
            await self._put_lease(unless_unchanged=True)
        except Exception as exc:
            log.warning("lease write failed (the heartbeat writes it again): %s", exc)

    async def _heartbeat_loop(self) -> None:
        # The start wrote the lease and asked for jobs: the first beat is one period later.
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                await self._put_lease()
                await self._check_ownership()
                # Renews requests whose expiry notice was lost with a dropped connection.
                await self.request_jobs()
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)

    @property
    def register_timeout_s(self) -> float:
        """How long a registration may take: the coordinator watches a held id's lease for a
        heartbeat or two before it answers (coordinator.registry.WorkerRegistry.admit)."""
        return self.settings.lease_ttl_s + 2.0

    async def _register(self) -> RegistrationAck:
        assert self.nc is not None
        reply = await self.nc.request(names.worker_register(self.host), self.info.encode(),
                                      timeout=self.register_timeout_s)
        return decode(RegistrationAck, reply.data)

    async def _try_register(self) -> RegistrationAck | None:
        """The coordinator's answer, or None (logged) when none came: none runs yet, or the request failed."""
        try:
            return await self._register()
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            log.info("no coordinator answered worker.register yet; the lease keeps us visible")
        except Exception as exc:
            log.warning("registration failed: %s", exc)
        return None

    def _refusal(self, ack: RegistrationAck) -> str:
        return f"the coordinator refused worker {self.worker_id}: {ack.message}"

    async def _register_first(self) -> None:
        """Register before holding anything; a refusal raises :class:`WorkerRefused`. With no
        coordinator answering (none runs yet), go on: the lease keeps the worker visible, and the
        registration is asked for again in the background (a refusal then stops the worker)."""
        ack = await self._try_register()
        if ack is None:
            return
        if not ack.accepted:
            raise WorkerRefused(self._refusal(ack))
        self.registered.set()
        log.info("registered with the coordinator: %s", ack.message)

    async def _register_loop(self) -> None:
        pauses = REGISTER_RETRY.delays()
        while not self.registered.is_set():
            await asyncio.sleep(next(pauses))
            ack = await self._try_register()
            if ack is None:
                continue
            if not ack.accepted:
                self.refused = self._refusal(ack)
                self._duplicate = True
                log.error("%s; stopping", self.refused)
                self.request_stop()
                return
            self.registered.set()
            log.info("registered with the coordinator: %s", ack.message)

    async def _check_ownership(self) -> None:
        """Fencing on this side: stop work whose attempt the coordinator has given to someone else.

        A worker frozen past its lease (SIGSTOP) wakes up still running an attempt that was
        retried elsewhere; its messages are ignored by the coordinator, and this stops the work.
        """
        assert self.buckets is not None
        for op_id, r in list(self._running.items()):
            if not r.claimed.done() or not r.claimed.result():
                continue
            entry = await self.buckets.ops.get(op_id)
            if entry.value is None:
                continue
            op = Operation.model_validate_json(entry.value)
            superseded = op.attempt != r.ctx.attempt or op.worker_id not in (None, self.worker_id) or (
                op.status.terminal and op.worker_id != self.worker_id)
            if superseded and not r.ctx.token.cancelled:
                r.fenced = True
                r.ctx.token.cancel(f"attempt {r.ctx.attempt} no longer owns the operation")
                log.warning("operation %s attempt %d was superseded; stopping it", op_id, r.ctx.attempt)

    # --- fetching -------------------------------------------------------------------------

    @property
    def is_active(self) -> bool:
        return self._active is None or self._active.is_set()

    def _free_slots(self) -> int:
        return self.slots - len(self._running)

    async def request_jobs(self) -> None:
        """Keep pull requests outstanding for the free slots: none while stopping or standby.

        Called whenever a slot frees or the worker's activity changes; a call made while one is
        under way makes that one look again when it is done, so two never ask at once."""
        if self._requesting:
            self._request_again = True
            return
        self._requesting = True
        try:
            while True:
                self._request_again = False
                free = self._free_slots() if self._fetching and self.is_active else 0
                if free > 0:
                    await self._start_oldest(free)
                    free = self._free_slots() if self._fetching and self.is_active else 0
                for puller in self._pullers:
                    try:
                        await puller.want(free)
                    except Exception as exc:
                        log.warning("pull request on %s failed: %s", puller.capability, exc)
                if not self._request_again:
                    return
        finally:
            self._requesting = False

    async def _start_oldest(self, free: int) -> None:
        """Oldest job first across this worker's subjects.

        A capability with a request outstanding has nothing queued (a queued job would have filled
        it), but two or more without one may each hold a backlog, and fresh requests on all of them
        are filled at once, in whatever order the answers come: a newer job on one subject could
        take the slot ahead of an older one on another. So those are asked with a ``no_wait``
        request each (answered at once), the oldest ``free`` of the jobs by their JOBS sequence
        (one stream, one order) start, and the others are handed back.

        A job handed back has used one of its deliveries (MaxDeliver), so its sequence is kept as
        its queue's head: while another queue yields older jobs, that one is not asked again, and a
        job waiting behind a long backlog elsewhere is delivered twice, not once per job ahead of it.
        """
        idle = [p for p in self._pullers if not p.outstanding]
        for puller in self._pullers:
            if puller not in idle:
                self._heads.pop(puller.capability, None)  # its queue was empty since: unknown again
        if len(idle) < 2:
            return
        # Unknown heads first: what they hold may be older than anything known.
        idle.sort(key=lambda p: self._heads.get(p.capability, -1))
        jobs: list[tuple[int, Msg, str]] = []
        for puller in idle:
            head = self._heads.get(puller.capability)
            if head is not None and len(jobs) >= free and head > jobs[free - 1][0]:
                break  # known heads are sorted: nothing from here on is older than what is taken
            try:
                got = await puller.probe(free)
            except Exception as exc:
                log.warning("pull request on %s failed: %s", puller.capability, exc)
                continue
            self._heads.pop(puller.capability, None)
            jobs += [(_stream_seq(m), m, puller.capability) for m in got]
            jobs.sort(key=lambda job: job[0])
        for i, (seq, msg, capability) in enumerate(jobs):
            if i < free:
                await self._on_job(msg, capability)
                continue
            self._heads[capability] = min(seq, self._heads.get(capability, seq))
            with contextlib.suppress(Exception):
                await msg.nak()

    async def _on_reconnect(self) -> None:
        for puller in self._pullers:
            await puller.reset()

    async def _on_job(self, msg: Msg, capability: str) -> None:
        try:
            job = decode(JobMessage, msg.data)
            if job.capability != capability:
                raise BadPayload(f"job for {job.capability} arrived on {capability}")
            if job.type not in self.handlers:
                raise BadPayload(f"no handler for operation type {job.type!r}")
        except BadPayload as exc:
            self.rejected[msg.subject] += 1
            log.error("rejected job on %s: %s", msg.subject, exc)
            await msg.term()
            return
        if (not self._fetching or not self.is_active or self._free_slots() <= 0
                or job.op_id in self._running):
            # Two capabilities can deliver at once to the last slot, or the worker went standby
            # or began to stop with a request open: hand the job back at once. Which request the
            # server fills first follows the order they were sent in (in tests, the later one
            # won), so a fixed order makes the same capability lose every race and starve while
            # another has a backlog: turn the order after every hand-back.
            self._pullers.append(self._pullers.pop(0))
            await msg.nak()
            await self.request_jobs()
            return
        assert self.nc is not None and self.js is not None and self.publisher is not None
        ctx = JobContext(job=job, worker_id=self.worker_id, reporter=self._reporter, services=self._services,
                         loop=asyncio.get_running_loop())
        running = _Running(ctx=ctx)
        self._running[job.op_id] = running
        self._lease_changed()
        running.task = asyncio.create_task(self._run_job(msg, running), name=f"op-{job.op_id}")
        self._jobs.add(running.task)
        running.task.add_done_callback(self._jobs.discard)

    # --- one operation --------------------------------------------------------------------

    async def _run_job(self, msg: Msg, r: _Running) -> None:
        ctx = r.ctx
        assert self.nc is not None and self.js is not None and self.buckets is not None
        try:
            won = await self._claim(ctx)
            r.claimed.set_result(won)
            await msg.ack()
            if not won:
                return
            # The started event waits STARTED_DELAY_S, or until the handler's first report: an op
            # done by then is recorded by its outcome alone (the coordinator takes an outcome from
            # the claim's holder as its start), one stored event fewer. Sent, not awaited: the
            # stream still gets it ahead of the outcome, which goes out later on this connection.
            started: list[_SentEvent] = []

            async def announce() -> None:
                started.append(await self._send_event(ctx, OpEventKind.STARTED))

            ctx.defer_start(announce)
            timer = asyncio.get_running_loop().call_later(STARTED_DELAY_S, ctx.announce_soon)
            try:
                outcome = await self._execute(r)
            finally:
                timer.cancel()
            # The slot is free once the handler is done: the next pull request leaves in the
            # same write as this outcome, while the acknowledgements are still on the way.
            await self._release(ctx.op_id)
            for event in started:
                await self._confirm(event)
            await self._confirm(outcome)
        except TopologyMissing as exc:
            # Recreated or re-elected within seconds; the offer comes back after the delay.
            log.warning("operation %s: %s; handing the job back for a later try", ctx.op_id, exc)
            if not r.claimed.done():
                r.claimed.set_result(False)
                with contextlib.suppress(Exception):
                    await msg.nak(delay=2.0)
        except Exception:
            log.exception("operation %s: runtime error", ctx.op_id)
            if not r.claimed.done():
                r.claimed.set_result(False)
                with contextlib.suppress(Exception):
                    await msg.nak(delay=1.0)
        finally:
            r.cancellable = False
            await self._release(ctx.op_id)

    async def _release(self, op_id: str) -> None:
        if self._running.pop(op_id, None) is not None:
            self._lease_changed()
            await self.request_jobs()

    async def _claim(self, ctx: JobContext) -> bool:
        """``kv.create`` on ``claims/<op>_<attempt>`` is the arbiter: exactly one claimant wins.

        Every attempt that is retried, cancelled while queued or failed undeliverable already has
        its claim taken, so a stale offer loses here without reading the op record. When the
        acknowledgement of our claim is lost (a reconnect, a leader election), we cannot know whether
        it was stored: the claim is sent again, and if it then exists, reading it back says whose it
        is. From then on only that answer ends this: a stored claim of ours given up on would leave
        its op pending for good, since no other worker can take it (seen in the quorum-loss drill,
        tests/coordinator/test_cluster_drills.py).
        """
        assert self.publisher is not None and self.buckets is not None
        key = names.claim_key(ctx.op_id, ctx.attempt)
        claim = Claim(op_id=ctx.op_id, attempt=ctx.attempt, worker_id=self.worker_id)
        uncertain = False
        pauses = CLAIM_RETRY.delays()
        while True:
            try:
                await self.publisher.kv_create(names.CLAIMS_BUCKET, key, claim.encode())
                return True
            except nats.errors.NoRespondersError:
                if not uncertain:
                    # Nothing stores $KV.claims.> right now: the bucket is gone (the coordinator recreates
                    # it) or, on a cluster, its stream is electing a leader. Either way it passes.
                    raise TopologyMissing(f"no stream answered for the key-value bucket {names.CLAIMS_BUCKET!r} "
                                          "(missing, or electing a leader)") from None
                why = "no stream answered"
            except KeyWrongLastSequenceError:
                held = await self._holds_claim(key, claim) if uncertain else False
                if held is not None:
                    if not held:
                        log.info("operation %s attempt %d was claimed by someone else", ctx.op_id, ctx.attempt)
                    return held
                why = "stored, not yet readable"
            except Exception as exc:
                if not transient_js_error(exc, nc=self.nc):
                    raise
                uncertain = True
                why = str(exc) or type(exc).__name__
            log.warning("claim of %s attempt %d unconfirmed (%s); asking again", ctx.op_id, ctx.attempt, why)
            await asyncio.sleep(next(pauses))

    async def _holds_claim(self, key: str, mine: Claim) -> bool | None:
        """Whether the stored claim is ``mine``; None while that cannot be read yet (the write that beat
        ours to the key is still in flight, or the replica that answered is behind its leader)."""
        assert self.buckets is not None
        try:
            entry = await self.buckets.claims.get(key)
        except KeyNotFoundError as missing:
            # Only a deleted key comes with its entry: a claim nobody holds now is not ours.
            return False if getattr(missing, "entry", None) is not None else None
        except Exception as exc:
            if transient_js_error(exc, nc=self.nc):
                return None
            raise
        if entry.value is None:
            return False
        stored = decode(Claim, entry.value)
        return stored.worker_id == self.worker_id and stored.claimed_at == mine.claimed_at

    async def _execute(self, r: _Running) -> _SentEvent:
        """Run the handler; returns its outcome event, sent but not yet acknowledged."""
        ctx = r.ctx
        declared, handler = self.handlers[ctx.job.type]
        outcome, result, error = OpEventKind.COMPLETED, None, None
        failure: tuple[str, bool] | None = None
        try:
            ctx.raise_if_cancelled()
            result = declared.result_dict(await call_handler(handler, ctx, declared.parse(ctx.job.params),
                                                             stalls=self.stalls))
            if ctx.token.cancelled and r.fenced:
                raise OperationCancelled(ctx.token.reason or "cancelled")
        except OperationCancelled as exc:
            outcome, error = OpEventKind.CANCELLED, bounded_text(exc.reason, limits.MAX_REASON_CHARS)
        except Exception as exc:
            # The outcome event must fit the payload, or it is never stored and the op never ends.
            text = f"{type(exc).__name__}: {exc}"
            error = bounded_text(text, limits.MAX_ERROR_CHARS)
            outcome = OpEventKind.FAILED
            # Its type and whether another attempt may get past it: the coordinator retries by them.
            failure = failure_of(exc)
            log.warning("operation %s failed%s: %s", ctx.op_id, " (retryable)" if failure[1] else "", error)
            if len(error) < len(text):
                log.warning("operation %s: its error of %d characters was cut to %d", ctx.op_id, len(text),
                            len(error))
        # No cancel can change the outcome now: the coordinator answers from here on.
        r.cancellable = False
        await ctx.flush()
        return await self._send_event(ctx, outcome, result=result, error=error, failure=failure,
                                      result_object=ctx.results.latest if outcome is OpEventKind.COMPLETED else None)

    async def _send_event(self, ctx: JobContext, kind: OpEventKind, *, result: dict[str, Any] | None = None,
                          error: str | None = None, result_object: str | None = None,
                          failure: tuple[str, bool] | None = None) -> _SentEvent:
        assert self.publisher is not None
        if error is not None:
            error = bounded_text(error, limits.MAX_ERROR_CHARS)
        error_type, retryable = failure or (None, False)
        event = OpEvent(op_id=ctx.op_id, event=kind, worker_id=self.worker_id, attempt=ctx.attempt,
                        result=result, error=error, result_object=result_object, error_type=error_type,
                        retryable=retryable)
        payload = event.encode()
        # Cheap test first: only an event this large can hold a result over the inline limit.
        too_large = len(payload) > limits.MAX_EVENT_BYTES or (
            len(payload) > limits.MAX_INLINE_RESULT_BYTES and result is not None
            and limits.json_size(result) > limits.MAX_INLINE_RESULT_BYTES)
        if too_large:
            # Sent anyway it would be refused again and again, and the op would stay running for
            # good: the outcome is a failure that says why, small enough to be stored.
            why = (f"the {kind.value} event would have been {len(payload)} bytes, over the "
                   f"{limits.MAX_EVENT_BYTES} an event may carry")
            if result is not None:
                why = (f"the handler returned a result of {limits.json_size(result)} bytes, over the "
                       f"{limits.MAX_INLINE_RESULT_BYTES} an event carries inline; a full result belongs in the "
                       "results store (ktrdr.results.put_result), with a summary returned")
            log.error("operation %s: %s", ctx.op_id, why)
            kind = OpEventKind.FAILED
            event = OpEvent(op_id=ctx.op_id, event=kind, worker_id=self.worker_id, attempt=ctx.attempt,
                            error=bounded_text(why, limits.MAX_ERROR_CHARS))
            payload = event.encode()
        sent = _SentEvent(subject=names.ops_events(ctx.op_id, self.host), payload=payload, kind=kind)
        try:
            sent.ack = await self.publisher.send(sent.subject, sent.payload)
        except Exception as exc:
            log.warning("event %s for %s not yet published (%s); retrying", kind, ctx.op_id, exc)
        return sent

    async def _confirm(self, sent: _SentEvent) -> None:
        """Wait until the event is stored; resend until it is: an outcome must not be lost."""
        assert self.publisher is not None
        pauses = CONFIRM_RETRY.delays()
        while True:
            try:
                if sent.ack is None:
                    sent.ack = await self.publisher.send(sent.subject, sent.payload)
                await sent.ack
                return
            except Exception as exc:
                sent.ack = None
                if self.nc is None or self.nc.is_closed:
                    # Only at shutdown: the lease expiry then retries or fails the op elsewhere.
                    log.error("event %s on %s lost: the connection is closed", sent.kind, sent.subject)
                    return
                why = str(exc) or type(exc).__name__
                if "maximum bytes exceeded" in why:
                    why = "OPS is full: the coordinator is down, or making room; kept and sent again"
                log.warning("event %s on %s not yet stored (%s); retrying", sent.kind, sent.subject, why)
                await asyncio.sleep(next(pauses))

    async def _on_cancel(self, msg: Msg) -> None:
        """A cancel the coordinator forwarded from ``ops.<id>.cancel``, with the requester's reply
        subject: answered here for an op this worker runs; for any other, the coordinator answers."""
        try:
            op_id = names.op_id_from_worker_cancel(msg.subject)
        except names.InvalidToken:
            return
        r = self._running.get(op_id)
        if r is None or not r.cancellable:
            return
        try:
            req = decode(CancelRequest, msg.data) if msg.data.strip() else CancelRequest()
        except BadPayload as exc:
            self.rejected[msg.subject] += 1
            log.error("rejected cancel request for %s: %s", op_id, exc)
            if msg.reply:
                await msg.respond(CancelReply(op_id=op_id, accepted=False,
                                              message=f"invalid cancel request: {exc}").encode())
            return
        if req.truncated_from is not None:
            # Cut on decoding: the reason goes into the cancelled event, which must fit the payload.
            log.warning("cancel request for %s: a reason of %d characters cut to %d", op_id, req.truncated_from,
                        len(req.reason))
        if r.claimed.done():
            await self._answer_cancel(r, msg, req)
            return
        # Until the claim is settled we do not know whether this cancel is ours to answer; the
        # subscription serves every op, so the wait must not hold it up.
        task = asyncio.create_task(self._answer_cancel(r, msg, req), name=f"cancel-{op_id}")
        self._cancel_replies.add(task)
        task.add_done_callback(self._cancel_replies.discard)

    async def _answer_cancel(self, r: _Running, msg: Msg, req: CancelRequest) -> None:
        if not await asyncio.shield(r.claimed):
            return
        first = r.ctx.token.cancel(req.reason)
        reply = CancelReply(
            op_id=r.ctx.op_id, accepted=True, status=OpStatus.RUNNING,
            message=(f"cancelling: worker {self.worker_id} stops the operation at its next check"
                     if first else "cancellation already in progress"))
        if msg.reply:
            await msg.respond(reply.encode())


async def run_until_signal(worker: Worker) -> None:
    """Run ``worker``; SIGTERM or SIGINT starts a graceful stop bounded by the grace period."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.request_stop)
    await worker.run()
