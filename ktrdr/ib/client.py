"""A thin asyncio wrapper over ``ib_insync.IB`` that speaks ktrdr's vocabulary.

Only the ``*Async`` API of ib_insync is used: the sync API runs its own event loop and fails
inside ours. Every IB error a request can meet is turned into an exception from
:mod:`ktrdr.ib.errors`, so callers branch on types, not on codes and strings.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pandas as pd
from ib_insync import IB, BarDataList, Contract, Forex, Stock
from ib_insync.wrapper import RequestError

from ktrdr.ib.bar_time import BadBarTime, bar_time, zone_of
from ktrdr.ib.errors import (
    PACING_CODES,
    ConnectionLost,
    IbError,
    NoData,
    NoSecurityDefinition,
    NotConnected,
    RequestTimedOut,
    error_from_code,
    is_pacing_message,
)
from ktrdr.ib.limits import as_utc, duration_str, limit_for

log = logging.getLogger(__name__)

BAR_COLUMNS = ["open", "high", "low", "close", "volume"]

_CURRENCIES = frozenset({"USD", "EUR", "GBP", "JPY", "CHF", "AUD", "NZD", "CAD", "SEK", "NOK", "HKD", "SGD"})


@dataclass(frozen=True, kw_only=True)
class ConnectionState:
    connected: bool
    host: str
    port: int
    client_id: int
    server_version: int | None
    accounts: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class ContractInfo:
    symbol: str
    con_id: int
    sec_type: str
    exchange: str
    primary_exchange: str
    currency: str
    long_name: str
    time_zone: str
    contract: Contract  # the qualified ib_insync contract, for further requests


def make_contract(
    symbol: str, *, sec_type: str | None = None, exchange: str | None = None, currency: str = "USD"
) -> Contract:
    """An unqualified contract: six-letter currency pairs are forex (IDEALPRO), the rest stocks."""
    symbol = symbol.upper()
    if sec_type is None:
        is_pair = len(symbol) == 6 and symbol[:3] in _CURRENCIES and symbol[3:] in _CURRENCIES
        sec_type = "CASH" if is_pair else "STK"
    if sec_type == "CASH":
        return Forex(symbol, exchange=exchange or "IDEALPRO")
    if sec_type == "STK":
        return Stock(symbol, exchange or "SMART", currency)
    return Contract(secType=sec_type, symbol=symbol, exchange=exchange or "SMART", currency=currency)


def default_what_to_show(contract: Contract) -> str:
    # IB has no TRADES for forex; MIDPOINT is what ktrdr always stored for pairs.
    return "MIDPOINT" if contract.secType == "CASH" else "TRADES"


def bars_to_frame(bars: list[Any], *, exchange_tz: str | None = None) -> pd.DataFrame:
    """IB bars → OHLCV frame indexed by bar start (UTC), sorted, without duplicates.

    A bar's ``date`` is IB's raw string (see :mod:`ktrdr.ib.bar_time`; ``exchange_tz`` places times
    sent without a zone) or a date/datetime already parsed by ib_insync. Raises BadBarTime.
    """
    if not bars:
        return empty_bars()
    index = pd.DatetimeIndex([_bar_time(b.date, exchange_tz) for b in bars], name="timestamp")
    frame = pd.DataFrame(
        {
            "open": [float(b.open) for b in bars],
            "high": [float(b.high) for b in bars],
            "low": [float(b.low) for b in bars],
            "close": [float(b.close) for b in bars],
            "volume": [float(b.volume) for b in bars],
        },
        index=index,
    )
    frame = frame[~frame.index.duplicated(keep="last")]
    return frame.sort_index()


def empty_bars() -> pd.DataFrame:
    return pd.DataFrame(
        {col: pd.Series(dtype="float64") for col in BAR_COLUMNS},
        index=pd.DatetimeIndex([], tz="UTC", name="timestamp"),
    )


def _bar_time(value: str | datetime | date, exchange_tz: str | None) -> pd.Timestamp:
    if isinstance(value, str):
        return bar_time(value, exchange_tz=exchange_tz)
    if isinstance(value, datetime):
        if value.tzinfo is None:  # ib_insync's reading of a zone-less time: the exchange's clock
            if not exchange_tz:
                raise BadBarTime(f"bar time {value} has no time zone and the contract names none")
            value = value.replace(tzinfo=zone_of(exchange_tz))
        return pd.Timestamp(as_utc(value))
    # Daily and weekly bars are plain dates; ktrdr stores them as midnight UTC.
    return pd.Timestamp(datetime(value.year, value.month, value.day, tzinfo=UTC))


class IbClient:
    """One IB API connection. Not thread-safe: use it from the event loop that connected it."""

    def __init__(
        self,
        *,
        request_timeout_s: float = 60.0,
        head_timeout_s: float = 5.0,
        use_rth: bool = False,
        ib: IB | None = None,
    ) -> None:
        self._ib = ib or IB()
        # Request errors must fail the awaiting future instead of yielding an empty list.
        self._ib.RaiseRequestErrors = True
        self._ib.errorEvent += self._on_error
        self._ib.disconnectedEvent += self._on_disconnected
        # Bars keep IB's raw date strings (ktrdr.ib.bar_time converts them with the contract's zone):
        # the decoder looks this attribute up per message, so the instance's own method wins.
        self._ib.wrapper.historicalData = self._on_bar  # type: ignore[method-assign]
        self._request_timeout = request_timeout_s
        # Only an optimisation hangs on the head timestamp: a gateway that never answers it must
        # not hold every download for the full request timeout.
        self._head_timeout = head_timeout_s
        self._use_rth = use_rth
        self._host = ""
        self._port = 0
        self._client_id = 0
        self._connect_timeout = 4.0
        self._contracts: dict[tuple[str, str | None, str | None, str], ContractInfo] = {}
        self._heads: dict[tuple[int, str], datetime | _HeadMiss] = {}
        self._historical: dict[int, asyncio.Future[Any]] = {}
        self._disconnect_hooks: list[Callable[[], None]] = []
        # historical_sent: requests that went out; bad_bar_times: replies refused for their dates;
        # head_unanswered: head-timestamp lookups that met the head timeout.
        self.counts: Counter[str] = Counter()

    @property
    def ib(self) -> IB:
        return self._ib

    # -- connection ------------------------------------------------------------------------------

    async def connect(
        self, host: str = "127.0.0.1", port: int = 4002, client_id: int = 1, timeout: float = 4.0
    ) -> ConnectionState:
        self._host, self._port, self._client_id, self._connect_timeout = host, port, client_id, timeout
        try:
            # readonly: ktrdr never trades, and it saves the order-sync round trips.
            await self._ib.connectAsync(host, port, clientId=client_id, timeout=timeout, readonly=True)
        except (TimeoutError, OSError) as exc:
            raise ConnectionLost(f"cannot connect to IB at {host}:{port}: {exc!r}") from exc
        return self.state()

    async def reconnect(self) -> ConnectionState:
        """Connect again with the last parameters (one try: the caller's reconnect policy says when)."""
        if self._ib.isConnected():
            return self.state()
        self._ib.disconnect()
        return await self.connect(self._host, self._port, self._client_id, self._connect_timeout)

    async def disconnect(self) -> None:
        self._ib.disconnect()

    @property
    def connected(self) -> bool:
        return self._ib.isConnected()

    def state(self) -> ConnectionState:
        connected = self._ib.isConnected()
        client = self._ib.client
        return ConnectionState(
            connected=connected,
            host=self._host,
            port=self._port,
            client_id=self._client_id,
            server_version=client.serverVersion() if connected else None,
            accounts=tuple(client.getAccounts()) if connected else (),
        )

    def on_disconnect(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` whenever the connection goes down (dropped or closed)."""
        self._disconnect_hooks.append(hook)

    def _on_disconnected(self) -> None:
        lost = ConnectionLost("connection to IB lost")
        for fut in self._historical.values():
            if not fut.done():
                fut.set_exception(lost)
        for hook in list(self._disconnect_hooks):
            try:
                hook()
            except Exception:  # a faulty hook must not break ib_insync's event dispatch
                log.exception("disconnect hook failed")

    def _on_error(self, req_id: int, code: int, message: str, _contract: Any) -> None:
        # Pacing errors that IB sends without a request id (-1) would otherwise leave the
        # in-flight historical requests hanging until their timeout.
        if req_id < 0 and (code in PACING_CODES or is_pacing_message(message)):
            error = error_from_code(code, message, req_id=req_id)
            for fut in self._historical.values():
                if not fut.done():
                    fut.set_exception(error)

    def _require_connection(self) -> None:
        if not self._ib.isConnected():
            raise NotConnected("not connected to IB")

    def _timeout(self, timeout_s: float | None) -> float:
        return self._request_timeout if timeout_s is None else min(self._request_timeout, timeout_s)

    def _on_bar(self, req_id: int, bar: Any) -> None:
        results = self._ib.wrapper._results.get(req_id)
        if results is not None:
            results.append(bar)

    # -- requests --------------------------------------------------------------------------------

    async def contract_details(
        self,
        symbol: str,
        *,
        sec_type: str | None = None,
        exchange: str | None = None,
        currency: str = "USD",
        timeout_s: float | None = None,
    ) -> ContractInfo:
        key = (symbol.upper(), sec_type, exchange, currency)
        if key in self._contracts:
            return self._contracts[key]
        self._require_connection()
        timeout = self._timeout(timeout_s)
        contract = make_contract(symbol, sec_type=sec_type, exchange=exchange, currency=currency)
        try:
            details = await asyncio.wait_for(self._ib.reqContractDetailsAsync(contract), timeout)
        except TimeoutError as exc:
            raise RequestTimedOut(f"no contract details for {symbol} within {timeout:.1f} s") from exc
        except RequestError as exc:
            raise error_from_code(exc.code, exc.message, req_id=exc.reqId) from exc
        except ConnectionError as exc:
            raise ConnectionLost(str(exc)) from exc
        if not details:
            raise NoSecurityDefinition(f"no security definition for {symbol}", code=200)
        if len(details) > 1:
            raise IbError(f"ambiguous contract {symbol}: {len(details)} matches")
        cd = details[0]
        c = cd.contract
        assert c is not None
        if contract.exchange == "SMART":
            c.exchange = "SMART"  # IB answers with the listing exchange; SMART routing is wanted
        info = ContractInfo(
            symbol=symbol.upper(),
            con_id=c.conId,
            sec_type=c.secType,
            exchange=c.exchange,
            primary_exchange=c.primaryExchange,
            currency=c.currency,
            long_name=cd.longName,
            time_zone=cd.timeZoneId,
            contract=c,
        )
        self._contracts[key] = info
        return info

    async def earliest_timestamp(
        self, symbol: str, *, what_to_show: str | None = None, timeout_s: float | None = None
    ) -> datetime:
        """The first moment IB has data for (``reqHeadTimeStamp``), in UTC.

        Cached per contract and bar type (IB's answer does not move); a lookup that failed is not
        asked again for ``HEAD_MISS_TTL_S``, so a gateway that never answers costs one head timeout
        per contract, not one per download.
        """
        info = await self.contract_details(symbol, timeout_s=timeout_s)
        show = what_to_show or default_what_to_show(info.contract)
        key = (info.con_id, show)
        cached = self._heads.get(key)
        if isinstance(cached, datetime):
            return cached
        if cached is not None and cached.until > time.monotonic():
            raise cached.error
        self._require_connection()
        timeout = self._head_timeout if timeout_s is None else min(self._head_timeout, timeout_s)
        try:
            head = await asyncio.wait_for(
                self._ib.reqHeadTimeStampAsync(info.contract, show, self._use_rth, 2), timeout
            )
        except TimeoutError as exc:
            self.counts["head_unanswered"] += 1
            error: IbError = RequestTimedOut(f"no head timestamp for {symbol} within {timeout:.1f} s")
            self._heads[key] = _HeadMiss(error=error, until=time.monotonic() + HEAD_MISS_TTL_S)
            raise error from exc
        except RequestError as exc:
            error = error_from_code(exc.code, exc.message, req_id=exc.reqId)
            if isinstance(error, NoData):
                self._heads[key] = _HeadMiss(error=error, until=time.monotonic() + HEAD_MISS_TTL_S)
            raise error from exc
        except ConnectionError as exc:
            raise ConnectionLost(str(exc)) from exc
        earliest = as_utc(head) if isinstance(head, datetime) else datetime(head.year, head.month, head.day, tzinfo=UTC)
        self._heads[key] = earliest
        return earliest

    async def historical_bars(
        self,
        symbol: str,
        timeframe: str,
        end: datetime,
        duration: timedelta | str,
        *,
        what_to_show: str | None = None,
        timeout_s: float | None = None,
    ) -> pd.DataFrame:
        """Bars of ``timeframe`` ending at ``end`` (exclusive) covering ``duration``.

        ``duration`` is an IB ``durationStr`` or a span that is rounded up to one; IB may
        return bars slightly outside the span, which callers trim. ``timeout_s`` shortens the
        request timeout (contract details included). NotConnected: nothing was sent.
        """
        limit = limit_for(timeframe)
        deadline = time.monotonic() + self._timeout(timeout_s)
        info = await self.contract_details(symbol, timeout_s=timeout_s)
        self._require_connection()
        timeout = max(0.0, deadline - time.monotonic())
        dur = duration if isinstance(duration, str) else duration_str(duration, timeframe)
        show = what_to_show or default_what_to_show(info.contract)
        ib = self._ib
        # The request is issued by hand (as ib_insync's reqHistoricalDataAsync does) to know its
        # reqId: that lets a timeout cancel it on the gateway and id-less errors fail it.
        req_id = ib.client.getReqId()
        bars = BarDataList()
        bars.reqId = req_id
        bars.contract = info.contract
        future = ib.wrapper.startReq(req_id, info.contract, container=bars)
        self._historical[req_id] = future
        try:
            # formatDate=2: intraday bar times come back as epoch seconds, i.e. unambiguous UTC.
            ib.client.reqHistoricalData(
                req_id,
                info.contract,
                _format_end(end),
                dur,
                limit.bar_size,
                show,
                self._use_rth,
                2,
                False,
                [],
            )
            self.counts["historical_sent"] += 1
            result = await asyncio.wait_for(future, timeout)
        except TimeoutError as exc:
            if ib.isConnected():
                ib.client.cancelHistoricalData(req_id)
            raise RequestTimedOut(f"IB sent no bars for {symbol} within {timeout:.1f} s "
                                  f"(historical request {req_id})", req_id=req_id) from exc
        except RequestError as exc:
            raise error_from_code(exc.code, exc.message, req_id=exc.reqId) from exc
        except ConnectionError as exc:
            raise ConnectionLost(str(exc), req_id=req_id) from exc
        finally:
            self._historical.pop(req_id, None)
            ib.wrapper._futures.pop(req_id, None)  # a timed-out request would linger there
        try:
            return bars_to_frame(list(result), exchange_tz=info.time_zone)
        except BadBarTime as exc:
            self.counts["bad_bar_times"] += 1
            log.warning("IB's bars for %s refused: %s (contract time zone %r)", symbol, exc.message, info.time_zone)
            raise BadBarTime(f"bars for {symbol} not stored: {exc.message}", req_id=req_id) from None


@dataclass(frozen=True, kw_only=True)
class _HeadMiss:
    error: IbError
    until: float  # time.monotonic()


# How long a head timestamp IB did not give is not asked for again.
HEAD_MISS_TTL_S = 600.0


def _format_end(end: datetime) -> str:
    # IB accepts "yyyymmdd hh:mm:ss UTC"; an explicit zone avoids the gateway's local-time default.
    return as_utc(end).strftime("%Y%m%d %H:%M:%S UTC")
