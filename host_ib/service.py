"""The active IB host's request-reply service (``nats micro ls`` shows ``ktrdr-ib``).

``nats req ib.contract '{"symbol":"AAPL"}'``, ``nats req ib.head '{"symbol":"AAPL"}'``,
``nats req ib.bars '{"symbol":"AAPL","timeframe":"1h","count":24}'``, ``nats req ib.status ''``.
Only the active host runs the service, so one instance answers and a standby never touches IB.
Errors come back as NATS service errors (headers ``Nats-Service-Error`` / ``-Code``) with a JSON
body ``{"error": ..., "code": ...}``. Every request is answered within ``reply_timeout_s``
(``KTRDR_IB_REPLY_TIMEOUT_S``): a gateway that does not answer in time is a 504 "IB gateway slow",
not a client-side timeout. A pacing violation met here is a penalty on the host's one pacer, so
downloads of that contract wait it out too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from nats.aio.client import Client
from nats.micro import Request, add_service
from nats.micro.service import Service

from host_ib.gateway import Gateway
from ktrdr import __version__
from ktrdr.ib.client import bars_to_frame
from ktrdr.ib.downloader import trim
from ktrdr.ib.errors import (
    ConnectionLost,
    IbError,
    NoData,
    NoSecurityDefinition,
    NotConnected,
    PacingViolation,
    RequestTimedOut,
)
from ktrdr.ib.limits import Segment, limit_for
from ktrdr.ib.pacing import Pacer
from subjects import names
from subjects.data import (
    Bar,
    BarsReply,
    BarsRequest,
    ContractReply,
    ContractRequest,
    HeadReply,
    HeadRequest,
    IbStatus,
)
from subjects.models import BadPayload, Payload, decode

log = logging.getLogger(__name__)


class ServiceFailure(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class IbService:
    def __init__(self, *, nc: Client, gateway: Gateway, pacer: Pacer, status: Callable[[], IbStatus],
                 max_wait_s: float, reply_timeout_s: float = 4.0) -> None:
        self.nc = nc
        self.gateway = gateway
        self.pacer = pacer
        self.status = status
        self.max_wait_s = max_wait_s
        self.reply_timeout_s = reply_timeout_s
        # bad_requests (400s), gateway_slow (504s), pacing_refused (429s): shown by ib.status.
        self.counts: Counter[str] = Counter()
        self._service: Service | None = None

    async def start(self) -> None:
        if self._service is not None:
            return
        self._service = await add_service(
            self.nc, name=names.IB_SERVICE_NAME, version=__version__,
            description="ktrdr IB host (active instance): contract details, head timestamp, bars, status")
        group = self._service.add_group(name=names.IB_SERVICE_GROUP)
        endpoints: dict[str, Callable[[bytes, _Deadline], Awaitable[Payload]]] = {
            names.IB_CONTRACT: self._contract, names.IB_HEAD: self._head,
            names.IB_BARS: self._bars, names.IB_STATUS: self._status,
        }
        for endpoint, handler in endpoints.items():
            await group.add_endpoint(name=endpoint, handler=self._wrap(handler))

    async def stop(self) -> None:
        if self._service is not None:
            service, self._service = self._service, None
            await service.stop()

    def _wrap(self, handler: Callable[[bytes, _Deadline], Awaitable[Payload]]) -> Callable[[Request], Awaitable[None]]:
        async def endpoint(req: Request) -> None:
            try:
                reply = await handler(req.data, _Deadline(self.reply_timeout_s))
            except ServiceFailure as exc:
                self._count(req.subject, exc.code, str(exc))
                await _error(req, exc.code, str(exc))
            except Exception as exc:
                code, message = _classify(exc)
                self._count(req.subject, code, message)
                await _error(req, code, message)
            else:
                await req.respond(reply.encode())
        return endpoint

    def _count(self, subject: str, code: int, message: str) -> None:
        kind = _COUNTED.get(code)
        if kind is not None:
            self.counts[kind] += 1
        if code >= 500 or code == 400:
            log.warning("%s failed (%d): %s", subject, code, message)

    async def _contract(self, data: bytes, deadline: _Deadline) -> ContractReply:
        req = decode(ContractRequest, data)
        await self._require_connection(deadline)
        info = await self.gateway.client.contract_details(
            req.symbol, sec_type=req.sec_type, exchange=req.exchange, currency=req.currency,
            timeout_s=deadline.left())
        return ContractReply(symbol=info.symbol, con_id=info.con_id, sec_type=info.sec_type,
                             exchange=info.exchange, primary_exchange=info.primary_exchange,
                             currency=info.currency, long_name=info.long_name, time_zone=info.time_zone)

    async def _head(self, data: bytes, deadline: _Deadline) -> HeadReply:
        req = decode(HeadRequest, data)
        await self._require_connection(deadline)
        earliest = await self.gateway.client.earliest_timestamp(req.symbol, what_to_show=req.what_to_show,
                                                                timeout_s=deadline.left())
        return HeadReply(symbol=req.symbol, earliest=earliest)

    async def _bars(self, data: bytes, deadline: _Deadline) -> BarsReply:
        req = decode(BarsRequest, data)
        limit = limit_for(req.timeframe)
        span = limit.bar * req.count
        if span > limit.max_duration:
            most = int(limit.max_duration / limit.bar)
            raise ServiceFailure(400, f"{req.count} {req.timeframe} bars do not fit one IB request; "
                                      f"ask for at most {most} (or run a data_load operation)")
        end = req.end or datetime.now(UTC)
        segment = Segment(end - span, end)
        await self._require_connection(deadline)
        key = (req.symbol, req.timeframe, segment.start, segment.end)
        # Direct requests share the host's pacer with downloads: IB counts them all, and its
        # penalties hold back both.
        wait = self.pacer.check(contract=req.symbol, key=key)
        if wait is not None and wait.seconds > min(self.max_wait_s, deadline.left()):
            raise ServiceFailure(429, f"IB pacing: retry in {wait.seconds:.1f} s ({wait.reason})")
        try:
            # Another request may take the slot first: the wait stays within the reply time.
            await asyncio.wait_for(self.pacer.acquire(contract=req.symbol, key=key), deadline.left())
        except TimeoutError:
            raise ServiceFailure(429, f"IB pacing: no request slot for {req.symbol} within "
                                      f"{self.reply_timeout_s:g} s; retry later") from None
        try:
            frame = await self.gateway.client.historical_bars(req.symbol, req.timeframe, end, span,
                                                              timeout_s=deadline.left())
        except NotConnected:
            self.pacer.unrecord(contract=req.symbol, key=key)  # nothing was sent
            raise
        except NoData:
            frame = bars_to_frame([])
        except PacingViolation as exc:
            penalty = self.pacer.violation(contract=req.symbol, code=exc.code, message=exc.message,
                                           source="ib.bars", connection_wide=exc.connection_wide)
            left = self.pacer.held_for(contract=req.symbol)
            raise ServiceFailure(429, f"IB pacing violation: retry in {left:.1f} s "
                                      f"({penalty.describe(self.pacer.now())})") from None
        self.pacer.answered(contract=req.symbol)
        frame = trim(frame, segment).tail(req.count)
        bars = [Bar(t=row.Index.to_pydatetime(), open=row.open, high=row.high, low=row.low, close=row.close,
                    volume=row.volume) for row in frame.itertuples()]
        return BarsReply(symbol=req.symbol, timeframe=req.timeframe, start=segment.start, end=segment.end,
                         bars=bars)

    async def _status(self, _data: bytes, _deadline: _Deadline) -> IbStatus:
        return self.status()

    async def _require_connection(self, deadline: _Deadline) -> None:
        # A short wait covers a reconnect in progress; a request must not hang on a dead gateway.
        await self.gateway.wait_connected(timeout=min(2.0, self.max_wait_s or 2.0, deadline.left()))


class _Deadline:
    """What is left of a request's reply time; past it, the gateway was too slow to answer."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = time.monotonic() + seconds

    def left(self) -> float:
        left = self._end - time.monotonic()
        if left <= 0:
            raise RequestTimedOut(f"no answer within {self.seconds:g} s")
        return left


_COUNTED = {400: "bad_requests", 429: "pacing_refused", 504: "gateway_slow"}


def _classify(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, BadPayload):
        return 400, str(exc)
    if isinstance(exc, ValueError):  # e.g. an unknown timeframe from the limits table
        return 400, str(exc)
    if isinstance(exc, NoSecurityDefinition):
        return 404, f"unknown symbol: {exc}"
    if isinstance(exc, ConnectionLost):
        return 503, str(exc)
    if isinstance(exc, PacingViolation):
        return 429, f"IB pacing violation, retry later: {exc}"
    if isinstance(exc, RequestTimedOut):
        return 504, f"IB gateway slow: {exc.message}"
    if isinstance(exc, IbError):
        return 502, str(exc)
    return 500, f"{type(exc).__name__}: {exc}"


async def _error(req: Request, code: int, message: str) -> None:
    await req.respond_error(str(code), message, data=json.dumps({"error": message, "code": code}).encode())
