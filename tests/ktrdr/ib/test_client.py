"""IbClient against the fake gateway, through the real ib_insync 0.9.86 socket client."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pandas as pd
import pytest

from ktrdr.ib.client import IbClient
from ktrdr.ib.errors import ConnectionLost, IbError, NoData, NoSecurityDefinition, PacingViolation
from tests.ktrdr.ib.fake_gateway import PACING_MESSAGE, FakeGateway, synthetic_bars

END = datetime(2024, 3, 1, tzinfo=UTC)


async def test_connect_reports_state(client: IbClient, gateway: FakeGateway) -> None:
    state = client.state()
    assert state.connected and state.server_version == 176
    assert state.accounts == ("DU1234567",)
    assert (state.host, state.port, state.client_id) == ("127.0.0.1", gateway.port, 11)
    await client.disconnect()
    assert not client.state().connected


async def test_connect_to_nothing_raises_connection_lost(gateway: FakeGateway) -> None:
    port = gateway.port
    await gateway.stop()
    with pytest.raises(ConnectionLost):
        await IbClient().connect("127.0.0.1", port, client_id=1, timeout=1.0)


async def test_qualify_contract_and_head_timestamp(client: IbClient, gateway: FakeGateway) -> None:
    info = await client.contract_details("aapl")
    assert (info.symbol, info.con_id, info.exchange, info.primary_exchange) == ("AAPL", 265598, "SMART", "NASDAQ")
    assert info.long_name == "APPLE INC"
    assert await client.contract_details("AAPL") is info  # cached: no second round trip
    assert gateway.contract_requests == ["AAPL"]
    fx = await client.contract_details("EURUSD")
    assert (fx.sec_type, fx.currency) == ("CASH", "USD")
    assert await client.earliest_timestamp("AAPL") == datetime(2000, 1, 3, tzinfo=UTC)


async def test_unknown_symbol_is_no_security_definition(client: IbClient) -> None:
    with pytest.raises(NoSecurityDefinition) as info:
        await client.contract_details("NOPE")
    assert info.value.code == 200


async def test_historical_bars_are_utc_ohlcv(client: IbClient, gateway: FakeGateway) -> None:
    frame = await client.historical_bars("AAPL", "1h", END, timedelta(days=2))
    assert list(frame.columns) == ["open", "high", "low", "close", "volume"]
    assert str(frame.index.tz) == "UTC"
    assert len(frame) == 48
    assert frame.index[0] == pd.Timestamp("2024-02-28", tz="UTC")
    assert frame.index[-1] == pd.Timestamp("2024-02-29 23:00", tz="UTC")
    request = gateway.historical_requests[-1]
    assert (request.bar_size, request.duration, request.end, request.format_date) == ("1 hour", "2 D", END, 2)
    expected = synthetic_bars(END - timedelta(days=2), END, timedelta(hours=1))
    pd.testing.assert_frame_equal(frame, expected, check_names=False, check_index_type=False, check_freq=False)


async def test_daily_bars_and_scripted_frames(client: IbClient, gateway: FakeGateway) -> None:
    index = pd.date_range("2024-02-01", periods=10, freq="D", tz="UTC")
    given = pd.DataFrame({"open": 1.0, "high": 2.0, "low": 0.5, "close": 1.5, "volume": 7.0}, index=index)
    gateway.set_bars("AAPL", "1 day", given)
    frame = await client.historical_bars("AAPL", "1d", datetime(2024, 2, 8, tzinfo=UTC), timedelta(days=5))
    assert list(frame.index) == list(index[2:7])
    assert frame["close"].tolist() == [1.5] * 5


@pytest.mark.parametrize(
    ("code", "message", "expected"),
    [
        (162, PACING_MESSAGE, PacingViolation),
        (162, "Historical Market Data Service error message:HMDS query returned no data: AAPL@SMART", NoData),
        (420, "Invalid Real-time Query:Historical data request pacing violation", PacingViolation),
        (100, "Max rate of messages per second has been exceeded", PacingViolation),
        (200, "No security definition has been found for the request", NoSecurityDefinition),
        (321, "Error validating request", IbError),
    ],
)
async def test_errors_map_to_types(
    client: IbClient, gateway: FakeGateway, code: int, message: str, expected: type[IbError]
) -> None:
    gateway.script_error(code, message)
    with pytest.raises(expected) as info:
        await client.historical_bars("AAPL", "1h", END, timedelta(days=1))
    assert info.value.code == code
    # The next request is unaffected.
    assert len(await client.historical_bars("AAPL", "1h", END, timedelta(days=1))) == 24


async def test_pacing_error_without_request_id_fails_the_request_in_flight(
    client: IbClient, gateway: FakeGateway
) -> None:
    gateway.script_error(100, "Max rate of messages per second has been exceeded", req_id=-1)
    with pytest.raises(PacingViolation):
        await client.historical_bars("AAPL", "1h", END, timedelta(days=1))


async def test_dropped_connection_raises_connection_lost_and_reconnects(client: IbClient, gateway: FakeGateway) -> None:
    lost: list[bool] = []
    client.on_disconnect(lambda: lost.append(True))
    gateway.on_historical = lambda _request: gateway.drop_connections()  # type: ignore[func-returns-value]
    with pytest.raises(ConnectionLost):
        await client.historical_bars("AAPL", "1h", END, timedelta(days=1))
    assert lost and not client.connected
    with pytest.raises(ConnectionLost):
        await client.historical_bars("AAPL", "1h", END, timedelta(days=1))
    gateway.on_historical = None
    await client.reconnect()
    assert client.connected
    assert len(await client.historical_bars("AAPL", "1h", END, timedelta(days=1))) == 24
