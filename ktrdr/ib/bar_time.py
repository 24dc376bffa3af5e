"""Bar times as IB sends them → UTC, whatever date format the gateway chose.

IB sends a bar's time as epoch seconds (``formatDate=2``), as ``yyyymmdd`` (daily and weekly bars,
whatever was asked), as ``yyyymmdd hh:mm:ss`` with a time-zone name, or, from older gateways and
``formatDate=1``, as ``yyyymmdd hh:mm:ss`` (sometimes two spaces) *without* one: that time is the
exchange's (the contract details' ``timeZoneId``), not UTC, and taking it as UTC puts US bars 4-5 h
off. ib_insync's own parser returns such times naive, and a zone name it does not know loses the
whole reply in its decoder's catch-all, so the IB client keeps the raw strings and converts them here.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, tzinfo
from functools import lru_cache
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import pandas as pd

from ktrdr.ib.errors import IbError

_EPOCH = re.compile(r"^\d{9,}$")
_DATE = re.compile(r"^(\d{8})$")
# 20240102 09:30:00 | 20240102  09:30:00 | 20240102-09:30:00 | 2024-01-02 09:30:00.0, then an optional zone.
_DATETIME = re.compile(
    r"^(?P<date>\d{8}|\d{4}-\d{2}-\d{2})(?P<sep>\s+|-)(?P<time>\d{2}:\d{2}:\d{2})(?:\.\d+)?(?:\s+(?P<zone>\S.*))?$")


class BadBarTime(IbError):
    """A bar time IB sent that cannot be placed in UTC (unknown format or time zone)."""


@lru_cache(maxsize=64)
def zone_of(name: str) -> tzinfo:
    """An IB time-zone id as a tzinfo. IB mostly sends IANA names (``US/Eastern``), some gateways a
    name followed by a description (``EST (Eastern Standard Time)``)."""
    for candidate in (name.strip(), name.strip().split(" ", 1)[0]):
        if not candidate:
            continue
        try:
            return ZoneInfo(candidate)
        except (ZoneInfoNotFoundError, ValueError):
            continue
    raise BadBarTime(f"unknown time zone {name!r}")


def bar_time(raw: str, *, exchange_tz: str | None) -> pd.Timestamp:
    """One bar's start in UTC. ``exchange_tz`` (the contract's ``timeZoneId``) places times sent
    without a zone; daily and weekly ``yyyymmdd`` dates are midnight UTC of that date, as ktrdr
    stores them for every source."""
    value = raw.strip()
    if _EPOCH.match(value):
        return pd.Timestamp(int(value), unit="s", tz="UTC")
    if _DATE.match(value):
        return pd.Timestamp(datetime.strptime(value, "%Y%m%d").replace(tzinfo=UTC))
    match = _DATETIME.match(value)
    if match is None:
        raise BadBarTime(f"unrecognised bar time {raw!r}")
    day = match["date"].replace("-", "")
    naive = datetime.strptime(f"{day} {match['time']}", "%Y%m%d %H:%M:%S")
    if match["zone"]:
        zone = zone_of(match["zone"])
    elif match["sep"] == "-":
        zone = UTC  # IB's newer "yyyymmdd-hh:mm:ss" form is UTC by definition
    elif exchange_tz:
        zone = zone_of(exchange_tz)
    else:
        raise BadBarTime(f"bar time {raw!r} has no time zone and the contract names none")
    # fold=0: in the repeated autumn hour the first (daylight) reading, as IB's bars come in order.
    return pd.Timestamp(naive.replace(tzinfo=zone).astimezone(UTC))
