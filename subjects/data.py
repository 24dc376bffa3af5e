"""Payloads of the market-data capability: ``data_load`` params, the IB host's request-reply
service (``ib.contract``, ``ib.head``, ``ib.bars``, ``ib.status``) and its active-instance lock.

Self-contained on purpose (no ktrdr imports): these are the wire contract a ``nats`` CLI user
types against, so their limits are spelled out here.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from subjects.fields import Timeframe
from subjects.models import Payload, Request, utcnow

LoadMode = Literal["tail", "backfill", "full"]

# One ib.bars request is answered from one IB request: at most this many bars.
MAX_BARS_PER_REQUEST = 1000

_SYMBOL = re.compile(r"^[A-Za-z0-9.-]{1,32}$")


def _symbol(value: str) -> str:
    if not _SYMBOL.match(value):
        raise ValueError(f"invalid symbol {value!r}: 1-32 letters, digits, '.' or '-'")
    return value.upper()


def _utc(value: datetime | None) -> datetime | None:
    # Naive times are UTC, as everywhere in ktrdr.
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class DataLoadParams(BaseModel):
    """``data_load``: download a symbol's bars from IB into the store and the ``data`` bucket.

    ``tail`` fetches from the last stored bar to ``end`` (default now), ``backfill`` from before
    the first stored bar back to ``start``, ``full`` the whole ``[start, end)`` range. ``start``
    is required for ``full``, and for the other modes when nothing is stored yet.
    """

    model_config = ConfigDict(extra="forbid")

    symbol: str
    timeframe: Timeframe = "1h"
    start: datetime | None = None
    end: datetime | None = None
    mode: LoadMode = "tail"

    _s = field_validator("symbol")(_symbol)

    @field_validator("start", "end")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        return _utc(v)

    @model_validator(mode="after")
    def _range(self) -> DataLoadParams:
        if self.mode == "full" and self.start is None:
            raise ValueError("mode full needs a start")
        if self.start is not None and self.end is not None and self.start >= self.end:
            raise ValueError("start must be before end")
        return self


# --- the IB host's request-reply service --------------------------------------------------------

class ContractRequest(Request):
    symbol: str
    sec_type: str | None = Field(default=None, description="STK, CASH...; default: pairs are CASH")
    exchange: str | None = None
    currency: str = "USD"

    _s = field_validator("symbol")(_symbol)


class ContractReply(Payload):
    symbol: str
    con_id: int
    sec_type: str
    exchange: str
    primary_exchange: str
    currency: str
    long_name: str
    time_zone: str


class HeadRequest(Request):
    symbol: str
    what_to_show: str | None = Field(default=None, description="TRADES, MIDPOINT...; default by type")

    _s = field_validator("symbol")(_symbol)


class HeadReply(Payload):
    symbol: str
    earliest: datetime


class BarsRequest(Request):
    """The ``count`` bars of ``timeframe`` ending at ``end`` (exclusive; default now)."""

    symbol: str
    timeframe: Timeframe = "1h"
    end: datetime | None = None
    count: int = Field(default=100, ge=1, le=MAX_BARS_PER_REQUEST)

    _s = field_validator("symbol")(_symbol)

    @field_validator("end")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        return _utc(v)


class Bar(BaseModel):
    t: datetime
    open: float
    high: float
    low: float
    close: float
    volume: float


class BarsReply(Payload):
    symbol: str
    timeframe: str
    start: datetime
    end: datetime
    bars: list[Bar]


class IbStatus(Payload):
    """``ib.status`` and the ``status`` of an IB host's lease."""

    worker_id: str
    role: Literal["active", "standby"]
    ib: Literal["connected", "connecting", "disconnected", "idle"]
    gateway: str
    client_id: int
    server_version: int | None = None
    accounts: list[str] = Field(default_factory=list)
    last_error: str | None = None
    pacing: dict[str, Any] = Field(default_factory=dict)  # budget, and the penalties in force (at most 20)
    counters: dict[str, int] = Field(default_factory=dict)  # e.g. historical_sent, bad_bar_times
    active_since: datetime | None = None
    active_instance: str | None = None  # the worker id holding the lock, as last seen


class ActiveLock(Payload):
    """Value of ``ib_active/active``: which host talks to IB; refreshed by that host."""

    worker_id: str
    host: str
    pid: int
    acquired_at: datetime = Field(default_factory=utcnow)
    refreshed_at: datetime = Field(default_factory=utcnow)
