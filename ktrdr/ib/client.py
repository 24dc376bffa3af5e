"""A thin asyncio wrapper over ``ib_insync.IB`` that speaks ktrdr's vocabulary.

Only the ``*Async`` API of ib_insync is used: the sync API runs its own event loop and fails
inside ours. Every IB error a request can meet is turned into an exception from
:mod:`ktrdr.ib.errors`, so callers branch on types, not on codes and strings.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pandas as pd
from ib_insync import IB, BarDataList, Contract, Forex, Stock
from ib_insync.wrapper import RequestError

from ktrdr.ib.errors import (
    PACING_CODES,
    ConnectionLost,
    IbError,
    NoSecurityDefinition,
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


def bars_to_frame(bars: list[Any]) -> pd.DataFrame:
    """ib_insync bars → OHLCV frame indexed by bar start (UTC), sorted, without duplicates."""
    if not bars:
        return empty_bars()
    index = pd.DatetimeIndex([_bar_time(b.date) for b in bars], name="timestamp")
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


def _bar_time(value: datetime | date) -> pd.Timestamp:
    # Daily and weekly bars come back as plain dates; ktrdr treats them as midnight UTC.
    if isinstance(value, datetime):
        return pd.Timestamp(as_utc(value))
    return pd.Timestamp(datetime(value.year, value.month, value.day, tzinfo=UTC))


class IbClient:
    """One IB API connection. Not thread-safe: use it from the event loop that connected it."""

    def __init__(
        self,
        *,
        request_timeout_s: float = 60.0,
        use_rth: bool = False,
        ib: IB | None = None,
    ) -> None:
        self._ib = ib or IB()
        # Request errors must fail the awaiting future instead of yielding an empty list.
        self._ib.RaiseRequestErrors = True
        self._ib.errorEvent += self._on_error
        self._ib.disconnectedEvent += self._on_disconnected
        self._request_timeout = request_timeout_s
        self._use_rth = use_rth
        self._host = ""
        self._port = 0
        self._client_id = 0
        self._connect_timeout = 4.0
        self._contracts: dict[tuple[str, str | None, str | None, str], ContractInfo] = {}
        self._historical: dict[int, asyncio.Future[Any]] = {}
        self._disconnect_hooks: list[Callable[[], None]] = []

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
            raise ConnectionLost("not connected to IB")

    # -- requests --------------------------------------------------------------------------------

    async def contract_details(
        self, symbol: str, *, sec_type: str | None = None, exchange: str | None = None, currency: str = "USD"
    ) -> ContractInfo:
        key = (symbol.upper(), sec_type, exchange, currency)
        if key in self._contracts:
            return self._contracts[key]
        self._require_connection()
        contract = make_contract(symbol, sec_type=sec_type, exchange=exchange, currency=currency)
        try:
            details = await asyncio.wait_for(self._ib.reqContractDetailsAsync(contract), self._request_timeout)
        except TimeoutError as exc:
            raise RequestTimedOut(f"no contract details for {symbol}") from exc
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

    async def earliest_timestamp(self, symbol: str, *, what_to_show: str | None = None) -> datetime:
        """The first moment IB has data for (``reqHeadTimeStamp``), in UTC."""
        info = await self.contract_details(symbol)
        self._require_connection()
        show = what_to_show or default_what_to_show(info.contract)
        try:
            head = await asyncio.wait_for(
                self._ib.reqHeadTimeStampAsync(info.contract, show, self._use_rth, 2), self._request_timeout
            )
        except TimeoutError as exc:
            raise RequestTimedOut(f"no head timestamp for {symbol}") from exc
        except RequestError as exc:
            raise error_from_code(exc.code, exc.message, req_id=exc.reqId) from exc
        except ConnectionError as exc:
            raise ConnectionLost(str(exc)) from exc
        if isinstance(head, datetime):
            return as_utc(head)
        return datetime(head.year, head.month, head.day, tzinfo=UTC)

    async def historical_bars(
        self,
        symbol: str,
        timeframe: str,
        end: datetime,
        duration: timedelta | str,
        *,
        what_to_show: str | None = None,
    ) -> pd.DataFrame:
        """Bars of ``timeframe`` ending at ``end`` (exclusive) covering ``duration``.

        ``duration`` is an IB ``durationStr`` or a span that is rounded up to one; IB may
        return bars slightly outside the span, which callers trim.
        """
        limit = limit_for(timeframe)
        info = await self.contract_details(symbol)
        self._require_connection()
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
            result = await asyncio.wait_for(future, self._request_timeout)
        except TimeoutError as exc:
            if ib.isConnected():
                ib.client.cancelHistoricalData(req_id)
            raise RequestTimedOut(f"historical request {req_id} for {symbol} timed out", req_id=req_id) from exc
        except RequestError as exc:
            raise error_from_code(exc.code, exc.message, req_id=exc.reqId) from exc
        except ConnectionError as exc:
            raise ConnectionLost(str(exc), req_id=req_id) from exc
        finally:
            self._historical.pop(req_id, None)
            ib.wrapper._futures.pop(req_id, None)  # a timed-out request would linger there
        return bars_to_frame(list(result))


def _format_end(end: datetime) -> str:
    # IB accepts "yyyymmdd hh:mm:ss UTC"; an explicit zone avoids the gateway's local-time default.
    return as_utc(end).strftime("%Y%m%d %H:%M:%S UTC")
