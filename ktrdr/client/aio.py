"""The client of a ktrdr platform, over NATS: what the CLI, a notebook and any script use.

Two layers in one class: the service calls (``submit``, ``get``, ``list``, ``cancel``, ``watch``...)
and, on them, a researcher's calls (``backtest``, ``sweep``, ``walkforward``, ``train``, ``ops``)
that check a request locally, submit it and return an :class:`~ktrdr.client.handles.AsyncOp`.
:class:`ktrdr.client.Client` runs this class on a thread of its own for code that is not async.
"""

from __future__ import annotations

import asyncio
import builtins
import os
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

import nats
from ktrdr.client.errors import (
    DENIED,
    JetStreamUnavailable,
    KtrdrError,
    NoCoordinator,
    Unanswered,
    service_error,
)
from ktrdr.client.handles import AsyncOp
from ktrdr.client.requests import Invalid, prepare
from ktrdr.client.settings import ClientSettings
from ktrdr.runtime import direct
from ktrdr.runtime.connection import NatsAuth, NatsConnectError, connect
from ktrdr.runtime.retry import RetryPolicy
from ktrdr.security.credentials import CredentialError
from subjects import names, roles
from subjects.limits import MAX_LIST_PAGE_OPS
from subjects.models import (
    BadPayload,
    CancelReply,
    CancelRequest,
    GetRequest,
    ListRequest,
    Operation,
    OpEvent,
    OpList,
    OpStatus,
    ProgressUpdate,
    PruneReply,
    PruneRequest,
    SubmitRequest,
    WorkerLease,
    decode,
    new_op_id,
)

if TYPE_CHECKING:
    import pandas as pd
    from pydantic import BaseModel

    from ktrdr.client.results import OpResults

# A 503 means the coordinator already waited out its own budget: two more tries within a few
# seconds catch the end of an election without keeping a user waiting much longer.
UNAVAILABLE_RETRY = RetryPolicy(first_s=1.0, max_s=2.0, attempts=3)
# Longer than the coordinator's write budget (KTRDR_WRITE_RETRY_BUDGET_S, 12 s) plus a last try of the
# record and of the job (up to 5 s), so a submission that waits out an election gets its answer
# rather than a timeout.
SUBMIT_TIMEOUT_S = 20.0
# A submission that got no answer (a timeout, a dropped connection) is sent again under its op id:
# the coordinator answers a repeat with the op it already holds, so retrying never makes a second op.
SUBMIT_RETRY = RetryPolicy(first_s=0.5, max_s=2.0, attempts=3)
# What cut a request off without an answer; the connection is made again before the next try.
_LOST = (nats.errors.ConnectionClosedError, nats.errors.ConnectionReconnectingError, nats.errors.StaleConnectionError,
         nats.errors.ConnectionDrainingError, nats.errors.OutboundBufferLimitError, ConnectionError)
# A prune moves up to a few thousand records a second: a large first one takes a while.
PRUNE_TIMEOUT_S = 600.0


class AsyncClient:
    def __init__(self, *, nats_url: str, timeout: float = 5.0, lease_ttl_s: float = 5.0,
                 auth: NatsAuth | None = None, submit_timeout: float = SUBMIT_TIMEOUT_S,
                 unavailable_retry: RetryPolicy = UNAVAILABLE_RETRY, source: str | None = None) -> None:
        self.nats_url = nats_url
        self.source = source  # where the URL came from (a context, KTRDR_NATS_URL), for the error message
        self.auth = auth
        self.timeout = timeout
        self.submit_timeout = max(timeout, submit_timeout)
        self.unavailable_retry = unavailable_retry
        self.lease_ttl_s = lease_ttl_s
        self.nc: Client | None = None
        # Requests waiting on a subject the server may refuse this credential (see _request).
        self._denial_waiters: dict[str, asyncio.Future[None]] = {}

    @classmethod
    def from_settings(cls, settings: ClientSettings | None = None, *, context: str | None = None,
                      **options: Any) -> AsyncClient:
        """A client for the platform the settings name: ``KTRDR_*`` variables, then the context
        ``ktrdr up`` wrote (``context``: another one, by name or path), as the CLI finds it."""
        if settings is None:
            settings = ClientSettings(context=context) if context is not None else ClientSettings()
        if settings.context_problem:
            raise KtrdrError(settings.context_problem, 400)
        try:
            auth = NatsAuth.resolve(settings, role=roles.CLIENT)
        except CredentialError as exc:
            raise KtrdrError(str(exc), 503) from None
        return cls(**{"nats_url": settings.nats_url, "timeout": settings.request_timeout_s,
                      "lease_ttl_s": settings.lease_ttl_s, "auth": auth, "source": settings.nats_url_source,
                      **options})

    @classmethod
    async def open(cls, *, context: str | None = None, **options: Any) -> AsyncClient:
        """``from_settings`` and connected: ``c = await AsyncClient.open()`` in a notebook."""
        return await cls.from_settings(context=context, **options).connect()

    async def connect(self) -> AsyncClient:
        try:
            self.nc = await connect(self.nats_url, name="ktrdr-cli", auth=self.auth, connect_timeout=self.timeout,
                                    reconnect=False, quiet=True, on_error=self._on_error, attempts=1)
        except (NatsConnectError, CredentialError) as exc:
            hint = ""
            if str(exc).startswith("cannot reach"):
                hint = (f" (the URL from {self.source})" if self.source else "") + (
                    "; is `ktrdr up` running? (`ktrdr context` shows where the CLI connects)")
            raise KtrdrError(f"{exc}{hint}", 503) from None
        return self

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.drain()
            self.nc = None

    async def __aenter__(self) -> AsyncClient:
        return await self.connect()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _on_error(self, exc: Exception) -> None:
        found = DENIED.search(str(exc))
        waiter = self._denial_waiters.get(found.group(1).lower()) if found else None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def request(self, subject: str, payload: bytes, *, timeout: float) -> Msg:
        """A request that fails at once with a 403 when the server refuses this credential the
        subject: the refusal is a notice on the connection, and the request would only time out."""
        denied: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._denial_waiters[subject.lower()] = denied  # nats-py lower-cases the server's notice
        answer = asyncio.ensure_future(self._nc.request(subject, payload, timeout=timeout))
        try:
            racing: set[asyncio.Future[Any]] = {answer, denied}
            await asyncio.wait(racing, return_when=asyncio.FIRST_COMPLETED)
            if not answer.done():
                answer.cancel()
                raise KtrdrError(f"the server refused {subject} to this credential's role (a viewer cannot submit "
                                 "or cancel, a worker cannot use the operations service)", 403)
            return answer.result()
        finally:
            self._denial_waiters.pop(subject.lower(), None)

    @property
    def _nc(self) -> Client:
        if self.nc is None:
            raise KtrdrError("not connected")
        return self.nc

    async def _service(self, endpoint: str, payload: bytes, *, timeout: float | None = None) -> Msg:
        """One request to the coordinator's service; its 503 (JetStream electing a leader) is tried again
        a couple of times before :class:`JetStreamUnavailable` is raised."""
        return await self.unavailable_retry.run(
            lambda: self._service_once(endpoint, payload, timeout=timeout or self.timeout),
            retry_on=lambda exc: isinstance(exc, JetStreamUnavailable))

    async def _service_once(self, endpoint: str, payload: bytes, *, timeout: float) -> Msg:
        subject = f"{names.SERVICE_GROUP}.{endpoint}"
        try:
            msg = await self.request(subject, payload, timeout=timeout)
        except nats.errors.NoRespondersError:
            raise NoCoordinator("no coordinator is running (nobody answers " + subject + ")") from None
        except nats.errors.TimeoutError:
            raise Unanswered(f"the coordinator did not answer {subject} in {timeout:g} s") from None
        except _LOST as exc:
            raise Unanswered(f"the connection to NATS was lost during {subject} ({exc or type(exc).__name__})"
                             ) from None
        error = service_error(msg)
        if error is not None:
            raise JetStreamUnavailable() if error.code == 503 else error
        return msg

    async def submit(self, op_type: str, params: dict[str, Any] | None = None, *, op_id: str | None = None,
                     retry: RetryPolicy = SUBMIT_RETRY, **extra: Any) -> Operation:
        """Submit under an id chosen here (``op_id``, else a new one); a try that got no answer is sent
        again, connecting anew if the connection was lost, so the user always learns whether it exists."""
        request = SubmitRequest(type=op_type, params=params or {}, op_id=op_id or new_op_id(op_type), **extra)
        payload = request.encode()
        sent = 0

        async def once() -> Msg:
            nonlocal sent
            if self.nc is None or self.nc.is_closed:
                self.nc = None
                await self.connect()
            sent += 1
            return await self._service(names.SERVICE_SUBMIT, payload, timeout=self.submit_timeout)

        def again(exc: BaseException) -> bool:
            # Nobody answering a retry is the coordinator still resubscribing after the same outage;
            # nobody answering the first try is no coordinator at all, said at once.
            return isinstance(exc, Unanswered) or (isinstance(exc, NoCoordinator) and sent > 1)

        try:
            reply = await retry.run(once, retry_on=again)
        except KtrdrError as exc:
            # A 503 is an answer: refused, and any record of it withdrawn (docs/architecture.md, What holds 11).
            if isinstance(exc, Unanswered) or (sent and exc.code >= 500 and not isinstance(exc, JetStreamUnavailable)):
                # A try went out and its fate is unknown: the user is told how to find out.
                raise KtrdrError(f"{exc}; {request.op_id} may or may not have been submitted: "
                                 f"`ktrdr ops show {request.op_id}` says", exc.code) from None
            raise
        return decode(Operation, reply.data)

    async def get(self, op_id: str) -> Operation:
        names.validate_token(op_id, what="operation id")
        return decode(Operation, (await self._service(names.SERVICE_GET, GetRequest(op_id=op_id).encode())).data)

    async def list(self, **query: Any) -> OpList:
        """Up to ``limit`` operations, newest first, gathered from as many pages as that takes: the
        service cuts each reply below the payload limit and says where the next one starts."""
        request = ListRequest(**query)
        wanted, offset = request.limit, request.offset
        found: dict[str, Operation] = {}  # by id: an op created between two pages shifts the next one
        total = 0
        while True:
            page_request = request.model_copy(update={"offset": offset,
                                                      "limit": min(wanted - len(found), MAX_LIST_PAGE_OPS)})
            page = decode(OpList, (await self._service(names.SERVICE_LIST, page_request.encode())).data)
            total = page.total
            for op in page.operations:
                found.setdefault(op.op_id, op)
            if len(found) >= wanted or page.next_offset is None or not page.operations:
                break
            offset = page.next_offset
        ops = list(found.values())[:wanted]
        end = request.offset + len(ops)
        return OpList(total=total, operations=ops, offset=request.offset,
                      next_offset=end if end < total else None, truncated=False, total_capped=page.total_capped)

    async def prune(self, older_than: str, *, action: str | None = None, dry_run: bool = False,
                    timeout: float = PRUNE_TIMEOUT_S) -> PruneReply:
        """Retention on demand: archive (or delete) ended ops older than ``older_than`` (``7d``)."""
        request = PruneRequest(older_than=older_than, action=action, dry_run=dry_run)  # type: ignore[arg-type]
        return decode(PruneReply, (await self._service(names.SERVICE_PRUNE, request.encode(), timeout=timeout)).data)

    async def cancel(self, op_id: str, reason: str = "cancelled by user") -> CancelReply:
        try:
            msg = await self.request(names.ops_cancel(op_id), CancelRequest(reason=reason).encode(),
                                     timeout=self.timeout)
        except nats.errors.NoRespondersError:
            raise KtrdrError("nobody answers cancel requests: is the coordinator running?", 503) from None
        except nats.errors.TimeoutError:
            raise KtrdrError(f"no answer to the cancel request in {self.timeout:g} s", 504) from None
        return decode(CancelReply, msg.data)

    async def workers(self) -> builtins.list[WorkerLease]:
        # Direct gets of the bucket's stream: a client may not make the consumer a KV watch needs.
        leases = []
        try:
            async for stored in direct.scan(self._nc, names.kv_stream(names.WORKERS_BUCKET),
                                            names.kv_all(names.WORKERS_BUCKET), timeout=self.timeout):
                # Deleted, purged or expired leases are markers without a value.
                if not stored.data or stored.headers.get("KV-Operation") or stored.headers.get("Nats-Marker-Reason"):
                    continue
                try:
                    leases.append(decode(WorkerLease, stored.data))
                except BadPayload:
                    continue
        except direct.NoStream:
            raise KtrdrError(f"the key-value bucket {names.WORKERS_BUCKET!r} does not exist: is the coordinator "
                             "running?", 503) from None
        except nats.errors.TimeoutError:
            raise KtrdrError(f"no answer reading the {names.WORKERS_BUCKET!r} bucket in {self.timeout:g} s",
                             504) from None
        return sorted(leases, key=lambda w: w.worker_id)

    async def watch(self, op_id: str) -> AsyncIterator[Operation | ProgressUpdate | OpEvent]:
        """The op's record, then its progress and events as they are published (push, not polling).

        Ends after the event that makes the op terminal for its current attempt.
        """
        queue: asyncio.Queue[Msg] = asyncio.Queue()

        async def put(msg: Msg) -> None:
            await queue.put(msg)

        # Subscribe before reading the record so that nothing between the two is missed.
        subs = [await self._nc.subscribe(names.ops_progress(op_id, names.ANY_HOST), cb=put),
                await self._nc.subscribe(names.ops_events(op_id, names.ANY_HOST), cb=put)]
        try:
            op = await self.get(op_id)
            yield op
            if op.status.terminal:
                return
            while True:
                try:
                    msg = await asyncio.wait_for(queue.get(), timeout=2.0)
                except TimeoutError:
                    # A quiet op, or one whose worker was lost and retried: re-read the record.
                    op = await self.get(op_id)
                    yield op
                    if op.status.terminal:
                        return
                    continue
                try:
                    if ".progress." in msg.subject:
                        yield decode(ProgressUpdate, msg.data)
                    else:
                        event = decode(OpEvent, msg.data)
                        yield event
                        if event.event != "started":
                            op = await self._settled(op_id)
                            yield op
                            if op.status.terminal:
                                return
                except BadPayload:
                    continue
        finally:
            for sub in subs:
                await sub.unsubscribe()

    async def _settled(self, op_id: str, wait: float = 2.0) -> Operation:
        """The record once the coordinator has folded in an outcome event (or as it is after ``wait``)."""
        deadline = asyncio.get_running_loop().time() + wait
        while True:
            op = await self.get(op_id)
            if op.status.terminal or asyncio.get_running_loop().time() > deadline:
                return op
            await asyncio.sleep(0.02)

    # A researcher's calls: a request checked here, submitted, and a handle on the op.

    async def start(self, op_type: str, params: BaseModel | dict[str, Any] | None = None, *,
                    op_id: str | None = None, **fields: Any) -> AsyncOp:
        """Submit an op of any declared type (``ktrdr ops types``) from its params and/or fields,
        checked first as the coordinator's admission checks them (:class:`~ktrdr.client.requests.Invalid`).
        ``op_id``: an id of your own; submitting it again returns the same op, never a second one."""
        base = dict(params or {}) if params is None or isinstance(params, dict) else params.model_dump(mode="json")
        checked = await asyncio.to_thread(prepare, op_type, {**base, **fields})
        return AsyncOp(self, await self.submit(op_type, checked.model_dump(mode="json"), op_id=op_id))

    async def backtest(self, strategy: str | os.PathLike[str], *, symbol: str, timeframe: str = "1h",
                       op_id: str | None = None, **fields: Any) -> AsyncOp:
        """A backtest (``ktrdr backtest run``): ``strategy`` a packaged name, a YAML file or text;
        ``fields`` any of BacktestParams' (``start``, ``end``, ``parameters={"fast": 10}``,
        ``capital``, ``commission``, ``close_at_end``...)."""
        from ktrdr.optypes.backtesting import BACKTEST

        return await self.start(BACKTEST.name, op_id=op_id, strategy=strategy, symbol=symbol,
                                timeframe=timeframe, **fields)

    async def sweep(self, strategy: str | os.PathLike[str], *, grid: dict[str, Any], symbol: str,
                    timeframe: str = "1h", objective: str | dict[str, Any] | None = None,
                    op_id: str | None = None, **fields: Any) -> AsyncOp:
        """A parameter sweep (``ktrdr backtest sweep``): ``grid`` maps each parameter to its values, a
        list or a ``"start:stop:step"`` / ``"a,b,c"`` text; ``objective`` a metric name or an
        Objective's fields (``{"metric": "sharpe_ratio", "min_trades": 5, "require": ["fast < slow"]}``)."""
        from ktrdr.optypes.sweep import SWEEP

        return await self.start(SWEEP.name, op_id=op_id, strategy=strategy, symbol=symbol, timeframe=timeframe,
                                grid=_grid(grid), objective=_objective(objective), **fields)

    async def walkforward(self, strategy: str | os.PathLike[str], *, symbol: str, timeframe: str = "1h",
                          grid: dict[str, Any] | None = None, objective: str | dict[str, Any] | None = None,
                          op_id: str | None = None, **fields: Any) -> AsyncOp:
        """A walk-forward analysis (``ktrdr backtest walkforward``): ``folds=`` or ``in_sample=`` and
        ``out_of_sample=`` (bars or durations such as ``"90d"``), ``grid`` for a rule-based strategy."""
        from ktrdr.optypes.walkforward import WALKFORWARD

        return await self.start(WALKFORWARD.name, op_id=op_id, strategy=strategy, symbol=symbol,
                                timeframe=timeframe, grid=_grid(grid) if grid is not None else None,
                                objective=_objective(objective), **fields)

    async def train(self, strategy: str | os.PathLike[str], *, symbol: str | None = None,
                    op_id: str | None = None, **fields: Any) -> AsyncOp:
        """A neuro-fuzzy training (``ktrdr train``): symbol, timeframes and model name default to the
        strategy's; ``epochs=``, ``start=``, ``end=``, ``seed=``..."""
        from ktrdr.optypes.training import TRAINING

        return await self.start(TRAINING.name, op_id=op_id, strategy=strategy,
                                symbols=[symbol] if symbol else None, **fields)

    def op(self, op: str | Operation) -> AsyncOp:
        """A handle on an op that exists already (by id)."""
        if isinstance(op, str):
            names.validate_token(op, what="operation id")
        return AsyncOp(self, op)

    async def ops(self, **query: Any) -> pd.DataFrame:
        """Operations as a DataFrame indexed by op id, newest first; ``query`` as ``ktrdr ops list``'s
        (``type=``, ``status=["completed"]``, ``limit=``, ``since=``, ``parent_id=``...)."""
        from ktrdr.client.results import ops_frame

        if isinstance(query.get("status"), str):
            query["status"] = [query["status"]]
        return ops_frame((await self.list(**query)).operations)

    async def results(self, op_id: str) -> OpResults:
        """The results of an op that has ended (:class:`~ktrdr.client.handles.OpFailed` if it did not complete)."""
        return await self.op(op_id).results()

    async def document(self, op: Operation) -> bytes | None:
        """The full result a completed op stored (its write-once artifact), or None."""
        from ktrdr.results import get_result

        if op.status is not OpStatus.COMPLETED:
            return None
        return await get_result(self._nc.jetstream(), op)


def _grid(grid: dict[str, Any]) -> dict[str, list[Any]]:
    from ktrdr.backtest.sweep import parse_values

    out: dict[str, list[Any]] = {}
    for name, values in grid.items():
        try:
            out[name] = parse_values(values) if isinstance(values, str) else list(values)
        except (TypeError, ValueError) as exc:
            raise Invalid(f"grid.{name}", str(exc)) from None
    return out


def _objective(objective: str | dict[str, Any] | None) -> dict[str, Any] | None:
    if objective is None or isinstance(objective, dict):
        return objective
    if hasattr(objective, "model_dump"):
        return objective.model_dump(mode="json")  # type: ignore[no-any-return]
    return {"metric": objective}
