"""Typed exceptions for what Interactive Brokers reports, so callers never parse error strings.

IB signals most failures as ``(reqId, code, message)`` triples; :func:`error_from_code` turns one
into the exception class the downloader reacts to (back off, give up, record a gap, reconnect).
"""

from __future__ import annotations

# Codes that always mean "you asked too fast": 100 = max messages per second exceeded,
# 420 = invalid real-time query / pacing violation. Code 162 is overloaded (pacing *or* a
# historical-data failure), so it is classified by its message.
MAX_MESSAGES_PER_SECOND = 100
PACING_CODES = frozenset({MAX_MESSAGES_PER_SECOND, 420})
HISTORICAL_DATA_ERROR = 162
NO_SECURITY_DEFINITION = 200


class IbError(Exception):
    """An error reported by IB (or the socket to it); ``code`` is IB's error code when there is one."""

    def __init__(self, message: str, *, code: int | None = None, req_id: int | None = None) -> None:
        super().__init__(message if code is None else f"IB error {code}: {message}")
        self.message = message
        self.code = code
        self.req_id = req_id


class PacingViolation(IbError):
    """IB refused a request for breaking its pacing rules; retrying later is the only remedy."""

    @property
    def connection_wide(self) -> bool:
        # 100 counts every message of the connection, and an error without a request id (-1) is
        # about the session: both hold back every contract, not only the one asked for.
        return self.code == MAX_MESSAGES_PER_SECOND or (self.req_id is not None and self.req_id < 0)


class NoSecurityDefinition(IbError):
    """IB does not know the contract (code 200); retrying will not help."""


class NoData(IbError):
    """The historical data farm had no bars for the requested range (162 "no data")."""


class ConnectionLost(IbError):
    """The socket to TWS / IB Gateway is closed (dropped or never opened)."""


class NotConnected(ConnectionLost):
    """There was no connection when a request was about to go out: nothing was sent."""


class RequestTimedOut(IbError):
    """IB sent no answer within the request timeout."""


def is_pacing_message(message: str) -> bool:
    return "pacing violation" in message.lower()


def is_no_data_message(message: str) -> bool:
    # IB says e.g. "HMDS query returned no data: AAPL@SMART Trades" (sometimes "No data of type ...").
    return "no data" in message.lower()


def error_from_code(code: int, message: str, *, req_id: int | None = None) -> IbError:
    """Classify one IB error report into the most specific exception."""
    cls: type[IbError] = IbError
    if code in PACING_CODES or (code == HISTORICAL_DATA_ERROR and is_pacing_message(message)):
        cls = PacingViolation
    elif code == NO_SECURITY_DEFINITION:
        cls = NoSecurityDefinition
    elif code == HISTORICAL_DATA_ERROR and is_no_data_message(message):
        cls = NoData
    return cls(message, code=code, req_id=req_id)
