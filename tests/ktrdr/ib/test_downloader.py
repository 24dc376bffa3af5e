"""Segmented downloads against the fake gateway: progress, pacing, errors, drops, cancel, resume."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest

from ktrdr.cancel import CancelToken, OperationCancelled
from ktrdr.ib.client import IbClient
from ktrdr.ib.downloader import (
    Downloader,
    DownloadGaveUp,
    DownloadState,
    Mode,
    StoredRange,
    merge_bars,
    plan_download,
)
from ktrdr.ib.errors import ConnectionLost, NoSecurityDefinition
from ktrdr.ib.limits import Segment
from ktrdr.ib.pacing import Pacer, PacingRules
from ktrdr.runtime.retry import RetryPolicy
from tests.ktrdr.ib.conftest import ProgressLog
from tests.ktrdr.ib.fake_gateway import FakeGateway, HistoricalRequest, synthetic_bars

START = datetime(2024, 1, 1, tzinfo=UTC)
END = datetime(2024, 1, 11, tzinfo=UTC)
HOUR = timedelta(hours=1)
# Short windows keep the behaviour of IB's rules at a fraction of the wall-clock cost.
FAST_RULES = PacingRules(
    max_requests=60, window_s=600.0, max_per_contract=100, contract_window_s=0.01, identical_interval_s=0.05
)
FAST_PACING_BACKOFF = RetryPolicy(first_s=0.05, max_s=600.0, attempts=6)
# Standing in for the IB host's Gateway, which owns reconnecting: the client's reconnect, tried again.
FAST_RECONNECT = RetryPolicy(first_s=0.05, max_s=0.2, budget_s=10.0)


def reconnect_hook(client: IbClient) -> Callable[[CancelToken | None], Awaitable[object]]:
    async def reconnect(cancel: CancelToken | None) -> object:
        return await FAST_RECONNECT.run(client.reconnect, retry_on=lambda exc: isinstance(exc, ConnectionLost))

    return reconnect


def make_downloader(client: IbClient, rules: PacingRules = FAST_RULES, **bounds: Any) -> Downloader:
    # The pacer owns the penalties' lengths, the downloader how long a segment keeps trying.
    return Downloader(source=client, pacer=Pacer(rules=rules, backoff=FAST_PACING_BACKOFF),
                      reconnect=reconnect_hook(client), pacing_backoff=FAST_PACING_BACKOFF, **bounds)


def segment_of(request: HistoricalRequest) -> tuple[datetime, datetime]:
    return request.start, request.end


class Store:
    """Stands in for the market-data store: records each on_segment call."""

    def __init__(self) -> None:
        self.frames: list[pd.DataFrame] = []

    async def __call__(self, frame: pd.DataFrame) -> None:
        self.frames.append(frame)

    @property
    def bars(self) -> pd.DataFrame:
        return merge_bars(self.frames)


async def download_1h(downloader: Downloader, store: Store, **kwargs: object) -> object:
    return await downloader.download(
        symbol="AAPL",
        timeframe="1h",
        mode=Mode.FULL,
        start=START,
        end=END,
        on_segment=store,
        **kwargs,  # type: ignore[arg-type]
    )


def plan_1h() -> DownloadState:
    # 10 days in 3-day segments: four requests, the oldest one day long.
    return plan_download(
        symbol="AAPL", timeframe="1h", mode="full", start=START, end=END, max_duration=timedelta(days=3)
    )


async def test_multi_segment_download_with_progress(
    client: IbClient, gateway: FakeGateway, progress_log: ProgressLog
) -> None:
    store = Store()
    state = plan_download(
        symbol="AAPL", timeframe="1h", mode="full", start=START, end=datetime(2024, 3, 15, tzinfo=UTC)
    )
    assert len(state.segments) == 3  # 74 days at 30 days per request
    result = await make_downloader(client).run(state, on_segment=store, progress=progress_log)

    expected = synthetic_bars(START, datetime(2024, 3, 15, tzinfo=UTC), HOUR)
    assert len(result.bars) == len(expected) == 74 * 24
    assert result.bars.index.equals(expected.index)
    assert len(store.frames) == 3 and state.done and state.bars == 74 * 24
    assert [segment_of(r) for r in gateway.historical_requests] == [(s.start, s.end) for s in state.segments]
    last = progress_log.updates[-1]
    assert (last["percentage"], last["steps_done"], last["steps_total"]) == (100.0, 3, 3)
    assert last["items_done"] == 74 * 24
    assert [u["steps_done"] for u in progress_log.updates] == [0, 1, 2, 3]
    assert progress_log.messages[-1].endswith("720 bars")


def test_tail_and_backfill_plans() -> None:
    stored = StoredRange(first=datetime(2024, 1, 5, tzinfo=UTC), last=datetime(2024, 1, 8, 12, tzinfo=UTC))
    tail = plan_download(symbol="aapl", timeframe="1h", mode="tail", stored=stored, end=END)
    assert tail.symbol == "AAPL"
    assert tail.segments == [Segment(stored.last, END)]
    backfill = plan_download(
        symbol="AAPL", timeframe="1h", mode="backfill", start=datetime(2023, 10, 1, tzinfo=UTC), stored=stored
    )
    assert backfill.segments[0].end == stored.first  # newest first: stays contiguous with the store
    assert backfill.segments[-1].start == datetime(2023, 10, 1, tzinfo=UTC)
    assert backfill.segments == sorted(backfill.segments, reverse=True)
    clamped = plan_download(
        symbol="AAPL",
        timeframe="1d",
        mode="full",
        start=datetime(1990, 1, 1, tzinfo=UTC),
        end=END,
        earliest=datetime(2020, 6, 1, tzinfo=UTC),
    )
    assert clamped.segments[0].start == datetime(2020, 6, 1, tzinfo=UTC)
    with pytest.raises(ValueError, match="needs a start"):
        plan_download(symbol="AAPL", timeframe="1h", mode="tail", end=END)


async def test_burst_of_requests_is_spread_out(
    client: IbClient, gateway: FakeGateway, progress_log: ProgressLog
) -> None:
    rules = PacingRules(
        max_requests=60, window_s=600.0, max_per_contract=2, contract_window_s=0.3, identical_interval_s=0.05
    )
    downloader = make_downloader(client, rules)
    state = plan_download(
        symbol="AAPL", timeframe="1h", mode="full", start=START, end=END, max_duration=timedelta(days=1)
    )
    await downloader.run(state, progress=progress_log)
    times = [r.received_at for r in gateway.historical_requests]
    assert len(times) == 10
    # Never three requests for one contract inside the 0.3 s window.
    for a, b in zip(times, times[2:], strict=False):
        assert b - a >= 0.3 - 0.02
    waits = [m for m in progress_log.messages if m.startswith("waiting for pacing")]
    assert waits and "2 requests per contract per 0.3 s" in waits[0]
    assert downloader._pacer.budget().remaining == 50


async def test_pacing_violation_backs_off_and_retries(
    client: IbClient, gateway: FakeGateway, progress_log: ProgressLog
) -> None:
    gateway.script_pacing_violation(times=1, code=162)
    gateway.script_pacing_violation(times=1, code=420)
    store = Store()
    state = plan_1h()
    loop = asyncio.get_running_loop()
    started = loop.time()
    await make_downloader(client).run(state, on_segment=store, progress=progress_log)
    assert loop.time() - started >= 0.05 + 0.1 - 0.02  # backoff doubles after the second violation
    requests = gateway.historical_requests
    assert len(requests) == 6 and segment_of(requests[0]) == segment_of(requests[2])
    assert len(store.frames) == 4 and state.done and not state.gaps
    assert any("pacing violation (code 162)" in m for m in progress_log.messages)
    assert any("pacing violation (code 420)" in m for m in progress_log.messages)
    assert store.bars.index.equals(synthetic_bars(START, END, HOUR).index)


async def test_pacing_errors_past_the_backoff_policy_fail_the_download(
    client: IbClient, gateway: FakeGateway, progress_log: ProgressLog
) -> None:
    gateway.script_pacing_violation(times=3, code=162)
    policy = RetryPolicy(first_s=0.1, max_s=0.3, attempts=3)
    downloader = Downloader(source=client, pacer=Pacer(rules=FAST_RULES, backoff=policy), pacing_backoff=policy)
    with pytest.raises(DownloadGaveUp, match="3 pacing violations in a row"):
        await downloader.run(plan_1h(), progress=progress_log)
    assert len(gateway.historical_requests) == 3  # three tries: two pauses, then the error stands
    backoffs = [m.split("backing off ", 1)[1].split(" (")[0] for m in progress_log.messages if "backing off" in m]
    assert backoffs == ["0.1 s", "0.2 s"]  # doubled, as the policy says


async def test_no_data_records_a_gap_and_continues(client: IbClient, gateway: FakeGateway) -> None:
    gateway.script_no_data(times=1)
    store = Store()
    state = plan_1h()
    result = await make_downloader(client).run(state, on_segment=store)
    assert state.gaps == [state.segments[0]]
    assert state.done and len(store.frames) == 3
    assert result.bars.index[0] == pd.Timestamp(state.segments[1].start)


async def test_no_security_definition_fails_the_download(client: IbClient, gateway: FakeGateway) -> None:
    with pytest.raises(NoSecurityDefinition):
        await make_downloader(client).download(symbol="NOPE", timeframe="1d", mode="full", start=START, end=END)
    gateway.script_error(200, "No security definition has been found for the request", kind="contract")
    store = Store()
    with pytest.raises(NoSecurityDefinition):
        await download_1h(make_downloader(client), store)
    assert store.frames == [] and gateway.historical_requests == []


async def test_gateway_drop_resumes_from_last_completed_segment(
    client: IbClient, gateway: FakeGateway, progress_log: ProgressLog
) -> None:
    restarts: list[asyncio.Task[None]] = []

    def drop_on_third(request: HistoricalRequest) -> bool:
        if len(gateway.historical_requests) == 3 and not restarts:
            restarts.append(asyncio.create_task(gateway.restart_after(0.3)))
            return False  # never answered: the socket goes away instead
        return True

    gateway.on_historical = drop_on_third
    store = Store()
    state = plan_1h()
    await make_downloader(client).run(state, on_segment=store, progress=progress_log)
    await restarts[0]

    segments = [(s.start, s.end) for s in state.segments]
    assert [segment_of(r) for r in gateway.historical_requests] == segments[:3] + segments[2:]
    assert gateway.connections_accepted == 2
    assert len(store.frames) == 4 and state.done
    assert store.bars.index.equals(synthetic_bars(START, END, HOUR).index)
    assert any("reconnecting" in m for m in progress_log.messages)
    assert any("resuming" in m for m in progress_log.messages)


async def test_cancel_mid_download_keeps_stored_segments(client: IbClient, gateway: FakeGateway) -> None:
    token = CancelToken()
    store = Store()

    async def on_segment(frame: pd.DataFrame) -> None:
        await store(frame)
        if len(store.frames) == 2:
            token.cancel("user asked")

    state = plan_1h()
    with pytest.raises(OperationCancelled, match="user asked"):
        await make_downloader(client).run(state, on_segment=on_segment, cancel=token)
    assert len(gateway.historical_requests) == 2
    assert state.completed == state.segments[:2] and len(store.frames) == 2

    # A later run with the same state (here rebuilt from its dict) fetches only what is left.
    resumed = DownloadState.from_dict(state.to_dict())
    await make_downloader(client).run(resumed, on_segment=store)
    assert len(gateway.historical_requests) == 4 and resumed.done
    assert store.bars.index.equals(synthetic_bars(START, END, HOUR).index)


def test_merge_of_overlapping_segments_has_no_duplicates() -> None:
    a = synthetic_bars(START, START + timedelta(days=2), HOUR)
    b = synthetic_bars(START + timedelta(days=1, hours=12), START + timedelta(days=3), HOUR)
    b_changed = b.assign(close=b["close"] + 1.0)  # a re-fetched, since-completed bar wins
    merged = merge_bars([b_changed, a, b_changed])
    assert merged.index.is_unique and merged.index.is_monotonic_increasing
    assert len(merged) == 72
    assert merged.loc[b.index[0], "close"] == b_changed.loc[b.index[0], "close"]
    assert merge_bars([]).empty


async def test_overlapping_segment_edges_are_deduplicated(client: IbClient, gateway: FakeGateway) -> None:
    # Durations are rounded up to whole days, so IB answers beyond each segment; the
    # downloader trims to [start, end) and the merge keeps each bar once.
    state = plan_download(
        symbol="AAPL",
        timeframe="1h",
        mode="full",
        start=START + timedelta(hours=5),
        end=END - timedelta(hours=7),
        max_duration=timedelta(days=2, hours=6),
    )
    result = await make_downloader(client).run(state)
    # 2 days 6 h is asked as "3 D": each answer overlaps the next-older segment by 18 h.
    assert [r.duration for r in gateway.historical_requests][1:] == ["3 D"] * (len(state.segments) - 1)
    expected = synthetic_bars(START + timedelta(hours=5), END - timedelta(hours=7), HOUR)
    assert result.bars.index.equals(expected.index)


def test_a_retried_download_takes_over_what_a_lost_attempt_completed() -> None:
    start = datetime(2024, 1, 1, tzinfo=UTC)
    lost = plan_download(symbol="AAPL", timeframe="1m", mode="full", start=start, end=start + timedelta(days=5))
    lost.completed = lost.segments[:3]
    lost.gaps = [lost.segments[1]]
    lost.bars, lost.requests = 2 * 1440, 3
    saved = DownloadState.from_dict(lost.to_dict())  # through the checkpoint's JSON form

    # The retry plans again (with end = "now" the range may have grown); what both plans share counts.
    retry = plan_download(symbol="AAPL", timeframe="1m", mode="full", start=start, end=start + timedelta(days=6))
    assert retry.resume_from(saved) == 3
    assert retry.pending() == retry.segments[3:] and retry.gaps == [retry.segments[1]]
    assert (retry.bars, retry.requests) == (2 * 1440, 3)
    assert retry.resume_from(saved) == 0  # nothing taken twice

    other = plan_download(symbol="AAPL", timeframe="1m", mode="backfill", start=start, end=start + timedelta(days=5))
    assert other.resume_from(saved) == 0 and len(other.pending()) == 5


async def test_a_request_that_never_went_out_is_not_counted(client: IbClient, gateway: FakeGateway) -> None:
    await client.disconnect()  # the first try finds no connection: nothing is sent, the hook reconnects
    state = plan_1h()
    downloader = make_downloader(client)
    await downloader.run(state)
    assert state.done and state.requests == len(gateway.historical_requests) == 4
    assert downloader._pacer.budget().remaining == 60 - 4


async def test_a_segment_without_progress_fails_at_its_stall_bound(client: IbClient, gateway: FakeGateway) -> None:
    # The client's request timeout (5 s) would retry three times; the segment's bound ends it first.
    gateway.silent_historical = True
    state = plan_1h()
    with pytest.raises(DownloadGaveUp, match=r"gave up on segment 2024-01-01 00:00 .*: no progress for 0.3 s"):
        await make_downloader(client, segment_stall_s=0.3).run(state)
    assert len(gateway.historical_requests) == 1 and state.completed == []
