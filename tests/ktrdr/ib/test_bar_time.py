"""Bar times in every format IB sends end up in correct UTC (issue 16, item 5).

One case per format through the real ib_insync socket client and the fake gateway, plus the parser
on its own for the spellings the fake gateway does not produce.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from ktrdr.ib.bar_time import BadBarTime, bar_time
from ktrdr.ib.client import IbClient
from tests.ktrdr.ib.fake_gateway import FakeContract, FakeGateway, synthetic_bars

# Winter and summer: US/Eastern is 5 h, then 4 h, behind UTC.
WINTER = datetime(2024, 1, 10, tzinfo=UTC)
SUMMER = datetime(2024, 7, 10, tzinfo=UTC)


@pytest.mark.parametrize("style", ["epoch", "zoned", "naive", "utc_dash", "utc"])
@pytest.mark.parametrize("end", [WINTER, SUMMER], ids=["winter", "summer"])
async def test_intraday_bars_are_stored_in_utc_whatever_the_date_format(
        client: IbClient, gateway: FakeGateway, style: str, end: datetime) -> None:
    gateway.bar_dates = style
    frame = await client.historical_bars("AAPL", "1h", end, timedelta(days=1))
    expected = synthetic_bars(end - timedelta(days=1), end, timedelta(hours=1))
    assert str(frame.index.tz) == "UTC"
    assert list(frame.index) == list(expected.index)
    assert frame["close"].tolist() == expected["close"].tolist()


async def test_daily_bars_as_yyyymmdd_are_midnight_utc(client: IbClient, gateway: FakeGateway) -> None:
    gateway.bar_dates = "naive"  # daily bars are yyyymmdd whatever the style
    frame = await client.historical_bars("AAPL", "1d", datetime(2024, 2, 8, tzinfo=UTC), timedelta(days=3))
    assert list(frame.index) == list(pd.date_range("2024-02-05", periods=3, freq="D", tz="UTC"))


async def test_zone_less_times_use_the_contracts_own_exchange_zone(gateway: FakeGateway) -> None:
    gateway.contracts["SAP"] = FakeContract(symbol="SAP", con_id=14204, time_zone="Europe/Berlin")
    gateway.bar_dates = "naive"
    client = IbClient(request_timeout_s=5.0)
    await client.connect("127.0.0.1", gateway.port, client_id=12, timeout=3.0)
    try:
        frame = await client.historical_bars("SAP", "1h", WINTER, timedelta(hours=3))
    finally:
        await client.disconnect()
    assert list(frame.index) == [pd.Timestamp(WINTER - timedelta(hours=h)) for h in (3, 2, 1)]


async def test_a_bar_time_in_an_unknown_zone_is_a_clear_counted_error(gateway: FakeGateway) -> None:
    gateway.contracts["AAPL"] = FakeContract(symbol="AAPL", time_zone="Mars/Olympus")
    gateway.bar_dates = "naive"
    client = IbClient(request_timeout_s=5.0)
    await client.connect("127.0.0.1", gateway.port, client_id=13, timeout=3.0)
    try:
        with pytest.raises(BadBarTime, match="bars for AAPL not stored: unknown time zone 'Mars/Olympus'"):
            await client.historical_bars("AAPL", "1h", WINTER, timedelta(hours=2))
        assert client.counts["bad_bar_times"] == 1
    finally:
        await client.disconnect()


@pytest.mark.parametrize(
    ("raw", "zone", "expected"),
    [
        ("1704900600", None, "2024-01-10 15:30"),
        ("20240110", None, "2024-01-10 00:00"),
        ("20240110 10:30:00", "US/Eastern", "2024-01-10 15:30"),
        ("20240110  10:30:00", "US/Eastern", "2024-01-10 15:30"),  # older gateways: two spaces
        ("20240710 10:30:00", "US/Eastern", "2024-07-10 14:30"),
        ("20240110 10:30:00 US/Eastern", None, "2024-01-10 15:30"),
        ("20240110 16:30:00 Europe/Berlin", "US/Eastern", "2024-01-10 15:30"),  # its own zone wins
        ("20240110-15:30:00", "US/Eastern", "2024-01-10 15:30"),
        ("2024-01-10 10:30:00.0", "US/Eastern", "2024-01-10 15:30"),
        ("20240110 10:30:00", "EST (Eastern Standard Time)", "2024-01-10 15:30"),
    ],
)
def test_bar_time_formats(raw: str, zone: str | None, expected: str) -> None:
    assert bar_time(raw, exchange_tz=zone) == pd.Timestamp(expected, tz="UTC")


@pytest.mark.parametrize(("raw", "zone"), [("20240110 10:30:00", None), ("10/01/2024 10:30", "US/Eastern"),
                                           ("20240110 10:30:00 Nowhere/Land", "US/Eastern")])
def test_bar_times_that_cannot_be_placed_are_refused(raw: str, zone: str | None) -> None:
    with pytest.raises(BadBarTime):
        bar_time(raw, exchange_tz=zone)
