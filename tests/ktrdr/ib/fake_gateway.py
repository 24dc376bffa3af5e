"""A fake TWS / IB Gateway: just enough of the socket protocol for ib_insync 0.9.86.

It answers the connect handshake, contract details (9 → 10, 52), head timestamps (87 → 88)
and historical bars (20 → 17), can answer any request with a scripted error (4), records every
historical request with the time it arrived, and can drop all connections and come back on
the same port, like a gateway restart.

Misbehaviours seen from other gateways, switched on per test: drop the socket on every historical
request (``drop_historical``), leave historical or head-timestamp requests unanswered
(``silent_historical``, ``answer_head``), and send bar times in a given format whatever was asked
(``bar_dates``: epoch, zoned or naive exchange time, IB's UTC dash form).
"""

from __future__ import annotations

import asyncio
import math
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd

BAR_SIZES: dict[str, timedelta] = {
    "1 min": timedelta(minutes=1),
    "5 mins": timedelta(minutes=5),
    "15 mins": timedelta(minutes=15),
    "30 mins": timedelta(minutes=30),
    "1 hour": timedelta(hours=1),
    "4 hours": timedelta(hours=4),
    "1 day": timedelta(days=1),
    "1 week": timedelta(weeks=1),
}
_UNIT_DAYS = {"D": 1, "W": 7, "M": 30, "Y": 365}
# Weekly bars start on Mondays; 1970-01-05 was the first Monday after the epoch.
_FIRST_MONDAY = datetime(1970, 1, 5, tzinfo=UTC)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

PACING_MESSAGE = "Historical Market Data Service error message:Historical data request pacing violation"
NO_DATA_MESSAGE = "Historical Market Data Service error message:HMDS query returned no data: {symbol}@SMART Trades"
NO_SECURITY_MESSAGE = "No security definition has been found for the request"


@dataclass(frozen=True, kw_only=True)
class FakeContract:
    symbol: str
    sec_type: str = "STK"
    currency: str = "USD"
    con_id: int = 265598
    primary_exchange: str = "NASDAQ"
    long_name: str = ""
    head: datetime = datetime(2000, 1, 3, tzinfo=UTC)  # first bar IB has
    time_zone: str = "US/Eastern"  # contract details' timeZoneId: the exchange's clock


@dataclass(frozen=True, kw_only=True)
class HistoricalRequest:
    req_id: int
    symbol: str
    end: datetime
    duration: str
    bar_size: str
    what_to_show: str
    use_rth: bool
    format_date: int
    received_at: float  # event-loop time
    received_wall: float

    @property
    def start(self) -> datetime:
        return self.end - parse_duration(self.duration)


@dataclass(kw_only=True)
class ScriptedError:
    code: int
    message: str
    times: int = 1
    kind: str = "historical"  # historical | contract | head
    symbol: str | None = None
    req_id: int | None = None  # None: the request's id; -1 for connection-wide errors


@dataclass(eq=False)
class _Conn:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    server_version: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


def parse_duration(value: str) -> timedelta:
    amount, unit = value.split()
    if unit == "S":
        return timedelta(seconds=int(amount))
    return timedelta(days=int(amount) * _UNIT_DAYS[unit])


def parse_end(value: str, now: datetime) -> datetime:
    if not value:
        return now
    if "-" in value:  # 20240102-12:00:00 is UTC in IB's newer syntax
        return datetime.strptime(value, "%Y%m%d-%H:%M:%S").replace(tzinfo=UTC)
    day, clock, *zone = value.split(" ")
    naive = datetime.strptime(day + clock, "%Y%m%d%H:%M:%S")
    return naive.replace(tzinfo=ZoneInfo(zone[0]) if zone else UTC).astimezone(UTC)


def align(t: datetime, bar: timedelta) -> datetime:
    origin = _FIRST_MONDAY if bar == timedelta(weeks=1) else _EPOCH
    return origin + ((t - origin) // bar) * bar


def synthetic_bars(start: datetime, end: datetime, bar: timedelta) -> pd.DataFrame:
    """Deterministic OHLCV bars starting in [start, end): the same time always gets the same bar."""
    t = align(start, bar)
    if t < start:
        t += bar
    rows = []
    index = []
    while t < end:
        x = (t - _EPOCH).total_seconds() / 3600.0
        base = 100.0 + 10.0 * math.sin(x / 50.0) + 0.01 * x / 24.0
        close = base + math.sin(x) * 0.5
        rows.append((base, max(base, close) + 0.25, min(base, close) - 0.25, close, 1000.0 + (x % 97)))
        index.append(t)
        t += bar
    frame = pd.DataFrame(rows, columns=["open", "high", "low", "close", "volume"])
    frame.index = pd.DatetimeIndex(index, tz="UTC") if index else pd.DatetimeIndex([], tz="UTC")
    return frame


class FakeGateway:
    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        server_version: int = 176,
        accounts: tuple[str, ...] = ("DU1234567",),
        contracts: tuple[FakeContract, ...] | None = None,
        now: datetime | None = None,
        response_delay_s: float = 0.0,
    ) -> None:
        self.host = host
        self.port = port
        self.server_version = server_version
        self.accounts = accounts
        self.contracts = {
            c.symbol: c
            for c in (
                contracts
                or (
                    FakeContract(symbol="AAPL", con_id=265598, long_name="APPLE INC"),
                    FakeContract(symbol="MSFT", con_id=272093, long_name="MICROSOFT CORP"),
                    FakeContract(
                        symbol="EUR",
                        sec_type="CASH",
                        currency="USD",
                        con_id=12087792,
                        primary_exchange="",
                        long_name="European Monetary Union Euro",
                    ),
                )
            )
        }
        self.now = now
        self.response_delay_s = response_delay_s
        self.historical_requests: list[HistoricalRequest] = []
        self.contract_requests: list[str] = []
        self.head_requests: list[str] = []
        # Drop every connection as each historical request arrives (the request is never answered).
        self.drop_historical = False
        # Leave historical requests unanswered (a gateway that went quiet, connection kept).
        self.silent_historical = False
        # Leave reqHeadTimeStamp unanswered (some gateways never answer it).
        self.answer_head = True
        # Intraday bar times in this format whatever formatDate asked: "epoch", "zoned"
        # ("yyyymmdd hh:mm:ss <contract zone>"), "naive" (the same without the zone, as older
        # gateways send) or "utc_dash" ("yyyymmdd-hh:mm:ss"). None: what formatDate asked.
        self.bar_dates: str | None = None
        self.frames: dict[tuple[str, str], pd.DataFrame] = {}
        self.errors: list[ScriptedError] = []
        # Called with each historical request before it is answered; return False to leave it
        # unanswered (e.g. after dropping the connection from inside the hook).
        self.on_historical: Callable[[HistoricalRequest], bool] | None = None
        self.connections_accepted = 0
        self._server: asyncio.Server | None = None
        self._conns: set[_Conn] = set()

    # -- control ---------------------------------------------------------------------------------

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Close the listener and every connection (clients see the peer hang up)."""
        if self._server is not None:
            self._server.close()
            self._server = None
        self.drop_connections()
        await asyncio.sleep(0)

    def drop_connections(self) -> None:
        for conn in list(self._conns):
            conn.writer.close()
            for task in conn.tasks:
                task.cancel()
        self._conns.clear()

    async def restart_after(self, delay_s: float) -> None:
        """Stop now and listen again on the same port after ``delay_s``."""
        await self.stop()
        await asyncio.sleep(delay_s)
        await self.start()

    @property
    def running(self) -> bool:
        return self._server is not None

    def set_bars(self, symbol: str, bar_size: str, frame: pd.DataFrame) -> None:
        """Serve these bars (UTC DatetimeIndex, OHLCV columns) instead of synthetic ones."""
        self.frames[(symbol, bar_size)] = frame

    def script_error(
        self,
        code: int,
        message: str,
        *,
        times: int = 1,
        kind: str = "historical",
        symbol: str | None = None,
        req_id: int | None = None,
    ) -> None:
        self.errors.append(
            ScriptedError(code=code, message=message, times=times, kind=kind, symbol=symbol, req_id=req_id)
        )

    def script_pacing_violation(self, *, times: int = 1, code: int = 162) -> None:
        message = PACING_MESSAGE if code == 162 else "Max rate of messages per second has been exceeded"
        self.script_error(code, message, times=times)

    def script_no_data(self, *, times: int = 1, symbol: str = "AAPL") -> None:
        self.script_error(162, NO_DATA_MESSAGE.format(symbol=symbol), times=times)

    # -- protocol --------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(reader, writer)
        self._conns.add(conn)
        self.connections_accepted += 1
        try:
            if await reader.readexactly(4) != b"API\0":
                return
            await self._read_msg(reader)  # "v157..176": we answer with our own version
            conn.server_version = self.server_version
            self._send(conn, str(self.server_version), "20240102 12:00:00 US/Eastern")
            while True:
                fields = await self._read_msg(reader)
                self._dispatch(conn, fields)
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._conns.discard(conn)
            writer.close()

    @staticmethod
    async def _read_msg(reader: asyncio.StreamReader) -> list[str]:
        (size,) = struct.unpack(">I", await reader.readexactly(4))
        payload = await reader.readexactly(size)
        return payload.decode().split("\0")[:-1]

    def _send(self, conn: _Conn, *fields: object) -> None:
        if conn.writer.is_closing():
            return
        payload = b"".join(str(f).encode() + b"\0" for f in fields)
        conn.writer.write(struct.pack(">I", len(payload)) + payload)

    def _error(self, conn: _Conn, req_id: int, code: int, message: str) -> None:
        self._send(conn, 4, 2, req_id, code, message, "")  # trailing JSON field: server >= 166

    def _take_error(self, kind: str, symbol: str) -> ScriptedError | None:
        for err in self.errors:
            if err.kind == kind and err.times > 0 and err.symbol in (None, symbol):
                err.times -= 1
                return err
        return None

    def _dispatch(self, conn: _Conn, f: list[str]) -> None:
        msg_id = int(f[0])
        if msg_id == 71:  # startApi: connect waits for managedAccounts and nextValidId
            self._send(conn, 15, 1, ",".join(self.accounts))
            self._send(conn, 9, 1, 1)
        elif msg_id == 61:
            self._send(conn, 62, 1)
        elif msg_id == 5:
            self._send(conn, 53, 1)
        elif msg_id == 99:
            self._send(conn, 102)
        elif msg_id == 6:
            self._send(conn, 54, 1, f[3])
        elif msg_id == 76:
            self._send(conn, 74, 1, f[2])
        elif msg_id == 7:
            self._send(conn, 55, 1, f[2])
        elif msg_id == 9:
            self._contract_details(conn, f)
        elif msg_id == 20:
            self._later(conn, self._historical(conn, f))
        elif msg_id == 87:
            self._head_timestamp(conn, f)
        # 25 cancelHistoricalData, 90 cancelHeadTimeStamp and others need no answer.

    def _later(self, conn: _Conn, coro: object) -> None:
        task = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        conn.tasks.add(task)
        task.add_done_callback(conn.tasks.discard)

    def _lookup(self, symbol: str, sec_type: str) -> FakeContract | None:
        c = self.contracts.get(symbol)
        return c if c is not None and c.sec_type == sec_type else None

    def _contract_details(self, conn: _Conn, f: list[str]) -> None:
        # 9|8|reqId|conId|symbol|secType|lastTradeDate|strike|right|multiplier|exchange|primaryExch|...
        req_id, symbol, sec_type, exchange = int(f[2]), f[4], f[5], f[10]
        self.contract_requests.append(symbol)
        err = self._take_error("contract", symbol)
        contract = self._lookup(symbol, sec_type)
        if err is not None or contract is None:
            code, message = (err.code, err.message) if err else (200, NO_SECURITY_MESSAGE)
            self._error(conn, req_id, code, message)
            return
        c = contract
        exch = exchange or ("IDEALPRO" if c.sec_type == "CASH" else "SMART")
        local = f"{c.symbol}.{c.currency}" if c.sec_type == "CASH" else c.symbol
        self._send(
            conn,
            10,
            req_id,
            c.symbol,
            c.sec_type,
            "",
            0,
            "",
            exch,
            c.currency,
            local,
            local,
            local,
            c.con_id,
            0.01,
            "",
            "LMT,MKT",
            f"{exch},NASDAQ",
            1,
            0,
            c.long_name,
            c.primary_exchange,
            "",
            "Technology",
            "Computers",
            "Computers",
            c.time_zone,
            "",
            "",
            "",
            "",
            0,  # numSecIds
            1,
            "",
            "",
            "26",
            "",
            "COMMON",
            "0.0001",
            "0.0001",
            "100",
        )
        self._send(conn, 52, 1, req_id)

    def _head_timestamp(self, conn: _Conn, f: list[str]) -> None:
        # 87|reqId|<12 contract fields>|includeExpired|useRTH|whatToShow|formatDate
        req_id, symbol, sec_type, format_date = int(f[1]), f[3], f[4], f[17]
        self.head_requests.append(symbol)
        if not self.answer_head:
            return
        err = self._take_error("head", symbol)
        contract = self._lookup(symbol, sec_type)
        if err is not None or contract is None:
            code, message = (err.code, err.message) if err else (200, NO_SECURITY_MESSAGE)
            self._error(conn, req_id, code, message)
            return
        head = contract.head
        value = str(int(head.timestamp())) if format_date == "2" else head.strftime("%Y%m%d-%H:%M:%S")
        self._send(conn, 88, req_id, value)

    async def _historical(self, conn: _Conn, f: list[str]) -> None:
        # 20|reqId|<12 contract fields>|includeExpired|end|barSize|duration|useRTH|whatToShow|formatDate|...
        now = self.now or datetime.now(UTC)
        loop = asyncio.get_running_loop()
        request = HistoricalRequest(
            req_id=int(f[1]),
            symbol=f[3],
            end=parse_end(f[15], now),
            bar_size=f[16],
            duration=f[17],
            use_rth=f[18] == "1",
            what_to_show=f[19],
            format_date=int(f[20]),
            received_at=loop.time(),
            received_wall=time.time(),
        )
        self.historical_requests.append(request)
        if self.on_historical is not None and self.on_historical(request) is False:
            return
        if self.drop_historical:
            self.drop_connections()
            return
        if self.silent_historical:
            return
        if self.response_delay_s:
            await asyncio.sleep(self.response_delay_s)
        err = self._take_error("historical", request.symbol)
        if err is not None:
            self._error(conn, request.req_id if err.req_id is None else err.req_id, err.code, err.message)
            return
        contract = self._lookup(request.symbol, f[4])
        if contract is None:
            self._error(conn, request.req_id, 200, NO_SECURITY_MESSAGE)
            return
        bar = BAR_SIZES[request.bar_size]
        start = max(request.start, contract.head)
        frame = self.frames.get((request.symbol, request.bar_size))
        if frame is None:
            bars = synthetic_bars(start, request.end, bar)
        else:
            bars = frame[(frame.index >= pd.Timestamp(start)) & (frame.index < pd.Timestamp(request.end))]
        if bars.empty:
            self._error(conn, request.req_id, 162, NO_DATA_MESSAGE.format(symbol=request.symbol))
            return
        fields: list[object] = [17, request.req_id, _fmt(start, bar, 1), _fmt(request.end, bar, 1), len(bars)]
        for ts, row in bars.iterrows():
            t = pd.Timestamp(ts).to_pydatetime()
            fields += [
                _fmt(t, bar, request.format_date, style=self.bar_dates, zone=contract.time_zone),
                row["open"],
                row["high"],
                row["low"],
                row["close"],
                row["volume"],
                row["close"],
                10,
            ]
        self._send(conn, *fields)


def _fmt(t: datetime, bar: timedelta, format_date: int, *, style: str | None = None,
         zone: str = "US/Eastern") -> str:
    # Real IB sends daily and weekly bar dates as yyyymmdd whatever formatDate says.
    if bar >= timedelta(days=1):
        return t.strftime("%Y%m%d")
    if style is None:
        style = "epoch" if format_date == 2 else "utc"
    if style == "epoch":
        return str(int(t.timestamp()))
    if style == "utc":
        return t.astimezone(UTC).strftime("%Y%m%d %H:%M:%S") + " UTC"
    if style == "utc_dash":
        return t.astimezone(UTC).strftime("%Y%m%d-%H:%M:%S")
    try:
        clock: tzinfo = ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):  # a zone the client cannot place either: any clock will do
        clock = UTC
    local = t.astimezone(clock).strftime("%Y%m%d %H:%M:%S")
    if style == "zoned":
        return f"{local} {zone}"
    if style == "naive":
        return local
    raise ValueError(f"unknown bar date style {style!r}")
