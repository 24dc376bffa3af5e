"""``data_load`` end to end: fake gateway → IB host → store and ``data`` bucket, via the coordinator."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from nats.aio.client import Client
from nats.aio.msg import Msg

from coordinator.app import Coordinator
from ktrdr.data.shared import fetch_dataset
from ktrdr.data.store import DataStore
from subjects import names, roles
from subjects.models import CancelRequest, Operation, OpStatus, ProgressUpdate, SubmitRequest, WorkerLease, decode
from tests.host_ib.conftest import MakeHost
from tests.ktrdr.ib.fake_gateway import FakeGateway, HistoricalRequest, synthetic_bars
from tests.support import assert_eventually, wait_status

START = datetime(2024, 1, 1, tzinfo=UTC)
DAY = timedelta(days=1)
MINUTE = timedelta(minutes=1)


def params(days: int = 3, **extra: Any) -> dict[str, Any]:
    # 1m bars: IB allows one day per request, so each day is one segment.
    return {"symbol": "AAPL", "timeframe": "1m", "mode": "full", "start": START.isoformat(),
            "end": (START + days * DAY).isoformat(), **extra}


async def submit(coordinator: Coordinator, p: dict[str, Any]) -> Operation:
    return await coordinator.dispatcher.submit(SubmitRequest(type="data_load", params=p))


class ProgressLog:
    def __init__(self) -> None:
        self.updates: list[ProgressUpdate] = []

    async def record(self, msg: Msg) -> None:
        self.updates.append(decode(ProgressUpdate, msg.data))

    @property
    def messages(self) -> list[str]:
        return [u.message or "" for u in self.updates]


async def progress_log(nc: Client) -> ProgressLog:
    log = ProgressLog()
    await nc.subscribe(names.OPS_PROGRESS_ALL, cb=log.record)
    return log


async def test_multi_segment_download_reaches_the_store_and_the_bucket(
        nc: Client, coordinator: Coordinator, make_host: MakeHost, gateway: FakeGateway, tmp_path: Path) -> None:
    host = await make_host("ib1")
    log = await progress_log(nc)
    # Slower than the progress throttle (0.1 s), so every segment's update gets published.
    gateway.response_delay_s = 0.15
    op = await submit(coordinator, params(days=3))
    done = await wait_status(coordinator, op.op_id, OpStatus.COMPLETED, timeout=20)

    assert done.worker_id == "ib1"
    assert done.result is not None
    assert done.result["segments"] == 3 and done.result["stored_bars"] == 3 * 1440
    assert done.result["new_bars"] == 3 * 1440
    assert done.info["segments_completed"] == 3 and done.info["no_data_gaps"] == []
    assert done.info["contract"]["con_id"] == 265598
    stored = host.store.load("AAPL", "1m")
    assert stored.index[0] == pd.Timestamp(START) and stored.index[-1] == pd.Timestamp(START + 3 * DAY - MINUTE)
    # Progress went segment by segment to 100 %.
    assert done.progress is not None and done.progress.steps_done == 3 and done.progress.percentage == 100
    assert any("3 of 3 segments to fetch" in m for m in log.messages), log.messages
    assert {1, 2, 3} <= {u.steps_done for u in log.updates}
    # Another machine gets exactly the stored bars from the shared bucket.
    elsewhere = DataStore(root=tmp_path / "elsewhere")
    await fetch_dataset(nc.jetstream(), elsewhere, "AAPL", "1m")
    pd.testing.assert_frame_equal(elsewhere.load("AAPL", "1m"), stored)


async def test_unknown_symbol_fails_the_op_with_ibs_reason(coordinator: Coordinator, make_host: MakeHost) -> None:
    await make_host("ib1")
    op = await submit(coordinator, params(symbol="ZZZZ"))
    failed = await wait_status(coordinator, op.op_id, OpStatus.FAILED)
    assert failed.error is not None
    assert "200" in failed.error and "unknown symbol ZZZZ" in failed.error
    assert "No security definition" in failed.error


async def test_no_data_segments_are_recorded_as_gaps(coordinator: Coordinator, make_host: MakeHost,
                                                     gateway: FakeGateway) -> None:
    host = await make_host("ib1")
    gateway.script_no_data(times=1)  # the oldest segment (full mode fetches oldest first)
    op = await submit(coordinator, params(days=2))
    done = await wait_status(coordinator, op.op_id, OpStatus.COMPLETED, timeout=20)
    assert done.info["no_data_gaps"] == [{"start": START.isoformat(), "end": (START + DAY).isoformat()}]
    assert len(host.store.load("AAPL", "1m")) == 1440


async def test_pacing_violations_back_off_and_the_op_completes(
        nc: Client, coordinator: Coordinator, make_host: MakeHost, gateway: FakeGateway) -> None:
    await make_host("ib1")
    log = await progress_log(nc)
    gateway.script_pacing_violation(times=2, code=162)
    gateway.script_pacing_violation(times=1, code=420)
    op = await submit(coordinator, params(days=2))
    done = await wait_status(coordinator, op.op_id, OpStatus.COMPLETED, timeout=20)
    assert done.result is not None
    assert done.result["segments"] == 2 and done.result["requests"] == 2 + 3
    assert done.result["stored_bars"] == 2 * 1440
    # The back-off held the next request, and progress said why.
    assert any("held by an IB pacing penalty" in m and "IB error 162 on AAPL" in m for m in log.messages), log.messages
    requests = gateway.historical_requests
    assert requests[1].received_at - requests[0].received_at >= 0.25


async def test_existing_data_is_merged_without_duplicates(coordinator: Coordinator, make_host: MakeHost,
                                                          gateway: FakeGateway) -> None:
    host = await make_host("ib1")
    # Already stored: the first day and a half, one bar of it different from what IB now says.
    seeded = synthetic_bars(START, START + DAY + DAY / 2, MINUTE)
    last = seeded.index[-1]
    seeded.loc[last, "close"] = seeded.loc[last, "open"]
    seeded.index.name = "timestamp"
    host.store.save("AAPL", "1m", seeded)

    tail = await submit(coordinator, params(days=3, mode="tail", start=None))
    done = await wait_status(coordinator, tail.op_id, OpStatus.COMPLETED, timeout=20)
    stored = host.store.load("AAPL", "1m")
    assert stored.index.is_unique and stored.index.is_monotonic_increasing
    assert len(stored) == 3 * 1440
    assert done.result is not None and done.result["new_bars"] == 3 * 1440 - len(seeded)
    # The re-fetched last bar replaced the stored one (IB's revision wins).
    assert stored.loc[last, "close"] == synthetic_bars(last, last + MINUTE, MINUTE)["close"].iloc[0]
    # Tail started at the last stored bar (it may still have been forming), not at the start.
    assert gateway.historical_requests[0].end == START + 2 * DAY

    again = await submit(coordinator, params(days=3))
    done = await wait_status(coordinator, again.op_id, OpStatus.COMPLETED, timeout=20)
    assert done.result is not None and done.result["new_bars"] == 0
    assert len(host.store.load("AAPL", "1m")) == 3 * 1440


async def test_cancel_mid_download_keeps_the_stored_segments(
        nc: Client, coordinator: Coordinator, make_host: MakeHost, gateway: FakeGateway, tmp_path: Path) -> None:
    host = await make_host("ib1")
    gateway.response_delay_s = 0.2
    op = await submit(coordinator, params(days=8))
    await assert_eventually(
        lambda: (o := coordinator.ops.get(op.op_id)) and o.progress and (o.progress.steps_done or 0) >= 2,
        timeout=15, message="two segments never completed")
    await nc.request(names.ops_cancel(op.op_id), CancelRequest(reason="enough").encode(), timeout=2)
    cancelled = await wait_status(coordinator, op.op_id, OpStatus.CANCELLED, timeout=10)

    completed = cancelled.info["segments_completed"]
    assert 2 <= completed < 8
    stored = host.store.load("AAPL", "1m")
    assert len(stored) == completed * 1440
    # What was stored also reached the bucket.
    elsewhere = DataStore(root=tmp_path / "elsewhere")
    await fetch_dataset(nc.jetstream(), elsewhere, "AAPL", "1m")
    assert len(elsewhere.load("AAPL", "1m")) == len(stored)


async def test_gateway_drop_mid_download_reconnects_and_resumes(
        nc: Client, coordinator: Coordinator, make_host: MakeHost, gateway: FakeGateway) -> None:
    host = await make_host("ib1")
    ib_states: list[str] = []

    async def watch_lease() -> None:
        watcher = await (await nc.jetstream().key_value(names.WORKERS_BUCKET)).watch(
            names.lease_key(roles.LOCAL_IB_HOST, "ib1"))
        async for entry in watcher:
            if entry is not None and entry.value:
                ib_states.append(decode(WorkerLease, entry.value).status.get("ib", ""))

    watching = asyncio.create_task(watch_lease())
    dropped: list[HistoricalRequest] = []

    def drop_on_third(request: HistoricalRequest) -> bool:
        if len(gateway.historical_requests) == 3 and not dropped:
            dropped.append(request)
            asyncio.ensure_future(gateway.restart_after(1.0))  # down long enough for a heartbeat or two
            return False  # never answered: the connection goes away under it
        return True

    gateway.on_historical = drop_on_third
    op = await submit(coordinator, params(days=4))
    done = await wait_status(coordinator, op.op_id, OpStatus.COMPLETED, timeout=20)
    await assert_eventually(lambda: ib_states and ib_states[-1] == "connected", message="lease not back")
    watching.cancel()

    assert dropped and gateway.connections_accepted >= 2
    assert "disconnected" in ib_states
    assert done.info["reconnects"] == 1
    # Resumed with the segment in flight: each earlier segment was asked for exactly once.
    ends = [r.end for r in gateway.historical_requests]
    assert ends == [START + DAY, START + 2 * DAY, START + 3 * DAY, START + 3 * DAY, START + 4 * DAY]
    assert len(host.store.load("AAPL", "1m")) == 4 * 1440
