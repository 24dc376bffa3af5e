"""Every download and every ``ib.*`` request ends in bounded time, whatever the gateway does (issue 16).

Each case runs against the fake gateway switched to one misbehaviour, with its bound configured small
and the other timeouts left long: it passes only if the bound, not a long timeout, ended it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from nats.aio.client import Client

from coordinator.app import Coordinator
from subjects import names
from subjects.data import IbStatus
from subjects.models import OpStatus, decode
from tests.host_ib.conftest import MakeHost
from tests.host_ib.test_download import params, progress_log, submit
from tests.host_ib.test_service import ask, error_of
from tests.ktrdr.ib.fake_gateway import FakeGateway, HistoricalRequest
from tests.support import assert_eventually, wait_status

# Long enough that a case that waits for it instead of its own bound fails its wait_status.
LONG_S = 60.0


async def ib_status(nc: Client) -> IbStatus:
    return decode(IbStatus, (await ask(nc, names.IB_STATUS, "")).data)


async def test_a_gateway_that_drops_every_request_fails_the_op_at_the_reconnect_cap(
        coordinator: Coordinator, make_host: MakeHost, gateway: FakeGateway) -> None:
    host = await make_host("ib1", ib_segment_max_reconnects=2, ib_reconnect_give_up_s=LONG_S)

    def drop_from_the_second(request: HistoricalRequest) -> bool:
        gateway.drop_historical = len(gateway.historical_requests) >= 2
        return True

    gateway.on_historical = drop_from_the_second
    op = await submit(coordinator, params(days=3))
    failed = await wait_status(coordinator, op.op_id, OpStatus.FAILED, timeout=20)

    assert failed.error is not None
    assert "DownloadGaveUp" in failed.error and "gave up on segment 2024-01-02 00:00" in failed.error
    assert "connection to IB was lost 3 times" in failed.error and "at most 2 reconnects" in failed.error
    # The segment before it is kept, as a cancel keeps it.
    assert failed.info["segments_completed"] == 1 and failed.info["reconnects"] == 3
    assert len(host.store.load("AAPL", "1m")) == 1440
    assert len(gateway.historical_requests) == 1 + 3 == failed.info["requests"]
    assert failed.progress is not None and (failed.progress.message or "").startswith("failed after 1 of 3")


async def test_a_head_timestamp_that_never_comes_costs_its_own_short_timeout_once(
        coordinator: Coordinator, make_host: MakeHost, gateway: FakeGateway) -> None:
    host = await make_host("ib1", ib_request_timeout_s=LONG_S, ib_head_timeout_s=0.3)
    gateway.answer_head = False
    first = await submit(coordinator, params(days=1))
    done = await wait_status(coordinator, first.op_id, OpStatus.COMPLETED, timeout=15)
    assert done.info["earliest_available"] is None
    assert "no head timestamp for AAPL within 0.3 s" in done.info["head_timestamp_problem"]
    assert len(host.store.load("AAPL", "1m")) == 1440

    # The miss is cached per contract and bar type: the next download does not ask (or wait) again.
    second = await submit(coordinator, params(days=2))
    await wait_status(coordinator, second.op_id, OpStatus.COMPLETED, timeout=15)
    assert gateway.head_requests == ["AAPL"]
    assert host.gateway.client.counts["head_unanswered"] == 1


async def test_pacing_violations_fail_the_op_at_the_give_up_and_the_state_is_visible(
        nc: Client, coordinator: Coordinator, make_host: MakeHost, gateway: FakeGateway) -> None:
    # IB's back-off (doubling from 1 s) would keep it going for 6 tries; the give-up ends it sooner.
    host = await make_host("ib1", ib_pacing_backoff_s=1.0, ib_pacing_give_up_s=2.5, ib_request_max_wait_s=0.0)
    log = await progress_log(nc)
    gateway.script_pacing_violation(times=100, code=162)
    op = await submit(coordinator, params(days=2))

    async def penalised() -> dict[str, Any] | None:
        penalties = (await ib_status(nc)).pacing["penalties"]
        return penalties[0] if penalties else None

    penalty = await assert_eventually(penalised, message="ib.status never showed the penalty")
    assert penalty["scope"] == "AAPL" and penalty["code"] == 162 and penalty["source"] == "a 1m download"
    assert "pacing violation" in penalty["message"] and penalty["ends_in_s"] > 0
    assert datetime.fromisoformat(penalty["ends_at"]) >= datetime.now(UTC).replace(microsecond=0)

    failed = await wait_status(coordinator, op.op_id, OpStatus.FAILED, timeout=15)
    assert failed.error is not None and "past the pacing give-up of 2.5 s" in failed.error
    assert len(gateway.historical_requests) == 2  # 1 s, then 2 s more would end past 2.5 s: given up
    # Progress said what held the download, and its last word is the failure, not a wait.
    assert any(m.startswith("held by an IB pacing penalty") for m in log.messages), log.messages
    assert failed.progress is not None and (failed.progress.message or "").startswith("failed after 0 of 2")

    # The penalty belongs to the contract, not to the op: ib.bars for it is held back too, until it ends.
    code, message = error_of(await ask(nc, names.IB_BARS, {"symbol": "AAPL", "timeframe": "1h", "count": 2}))
    assert code == 429 and "IB error 162 on AAPL, met by a 1m download" in message
    # ... and it ends when its time is up.
    await assert_eventually(lambda: not host.pacer.penalties(), timeout=5, message="the penalty never ended")


async def test_a_162_through_ib_bars_holds_back_a_download_of_that_contract(
        nc: Client, coordinator: Coordinator, make_host: MakeHost, gateway: FakeGateway) -> None:
    # Two 1-s slices of waiting: at least one "held" progress message gets past the progress throttle.
    host = await make_host("ib1", ib_pacing_backoff_s=2.0, ib_request_max_wait_s=0.0)
    log = await progress_log(nc)
    gateway.script_pacing_violation(times=1, code=162)
    code, message = error_of(await ask(nc, names.IB_BARS, {"symbol": "AAPL", "timeframe": "1h", "count": 2}))
    assert code == 429 and "IB pacing violation: retry in" in message
    violated_at = gateway.historical_requests[-1].received_at
    assert [p.source for p in host.pacer.penalties()] == ["ib.bars"]

    # Another contract is not held back; the same contract is, for downloads as for ib.bars.
    other = await ask(nc, names.IB_BARS, {"symbol": "MSFT", "timeframe": "1h", "count": 2})
    assert not (other.headers and "Nats-Service-Error" in other.headers)
    code, message = error_of(await ask(nc, names.IB_BARS, {"symbol": "AAPL", "timeframe": "1h", "count": 3}))
    assert code == 429 and "met by ib.bars" in message
    op = await submit(coordinator, params(days=1))
    await wait_status(coordinator, op.op_id, OpStatus.COMPLETED, timeout=15)
    assert any("held by an IB pacing penalty" in m and "met by ib.bars" in m for m in log.messages), log.messages
    download = [r for r in gateway.historical_requests if r.bar_size == "1 min"]
    assert download[0].received_at >= violated_at + 2.0 - 0.05


async def test_a_connection_wide_pacing_error_holds_back_every_contract(
        nc: Client, coordinator: Coordinator, make_host: MakeHost, gateway: FakeGateway) -> None:
    host = await make_host("ib1", ib_pacing_backoff_s=30.0, ib_request_max_wait_s=0.0)
    # 100 without a request id: the session's message rate, not one contract's.
    gateway.script_error(100, "Max rate of messages per second has been exceeded", req_id=-1)
    code, _ = error_of(await ask(nc, names.IB_BARS, {"symbol": "AAPL", "timeframe": "1h", "count": 2}))
    assert code == 429
    code, message = error_of(await ask(nc, names.IB_BARS, {"symbol": "MSFT", "timeframe": "1h", "count": 2}))
    assert code == 429 and "on all contracts" in message
    [penalty] = (await ib_status(nc)).pacing["penalties"]
    assert penalty["scope"] == "*" and penalty["code"] == 100 and penalty["source"] == "ib.bars"
    assert host.pacer.violations == 1


async def test_ib_bars_on_a_silent_gateway_answers_gateway_slow_in_time(
        nc: Client, make_host: MakeHost, gateway: FakeGateway) -> None:
    host = await make_host("ib1", ib_request_timeout_s=LONG_S, ib_reply_timeout_s=0.5)
    gateway.silent_historical = True
    code, message = error_of(await ask(nc, names.IB_BARS, {"symbol": "AAPL", "timeframe": "1h", "count": 2}))
    assert code == 504 and message.startswith("IB gateway slow: IB sent no bars for AAPL within")
    assert host.gateway.client.counts["historical_sent"] == 1
    status = await ib_status(nc)
    assert status.counters["historical_sent"] == 1 and status.counters["gateway_slow"] == 1
    assert status.ib == "connected"
