"""The live feed on its own: coalescing, a page that falls behind, keeping nothing once stopped."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

from coordinator.dashboard.live import ERROR_CHARS, LiveFeed, op_summary
from subjects.models import Operation, OpStatus, Progress, WorkerLease, WorkerState


def op(op_id: str, percentage: float = 0.0, status: OpStatus = OpStatus.RUNNING) -> Operation:
    return Operation(op_id=op_id, type="dummy", status=status, progress=Progress(percentage=percentage))


def parse(chunk: bytes) -> tuple[str, object]:
    head, data = chunk.decode().strip().split("\n")
    return head.removeprefix("event: "), json.loads(data.removeprefix("data: "))


async def test_changes_to_one_op_are_sent_once_per_batch_as_it_is_now() -> None:
    feed = LiveFeed(flush_s=0.01)
    stream = feed.stream()
    assert parse(await anext(stream))[0] == "hello"
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    for pct in (10.0, 20.0, 30.0):
        feed.op_changed(op("a"), op("a", pct))
    feed.op_changed(op("b"), op("b", 5.0))
    name, batch = parse(await waiting)
    assert name == "ops"
    assert [(o["op_id"], o["progress"]["percentage"]) for o in batch] == [("a", 30.0), ("b", 5.0)]
    await feed.stop()
    assert [c async for c in stream] == []
    assert feed.subscribers == 0


async def test_a_page_that_falls_behind_is_told_to_reload_instead_of_sent_everything() -> None:
    feed = LiveFeed(flush_s=0.01, max_pending=10)
    stream = feed.stream()
    await anext(stream)
    waiting = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0)
    for i in range(50):
        feed.op_changed(op(f"op-{i}"), op(f"op-{i}", 1.0))
    assert parse(await waiting)[0] == "resync"
    await feed.stop()


async def test_without_pages_a_change_costs_nothing_and_summaries_are_bounded() -> None:
    feed = LiveFeed()
    feed.op_changed(op("a"), op("a"))  # no subscriber: nothing kept
    failed = op("x", status=OpStatus.FAILED)
    failed.error = "e" * 100_000
    assert len(op_summary(failed)["error"]) <= ERROR_CHARS
    assert not feed.full()


async def test_every_page_gets_the_same_batch_and_a_stalled_page_is_told_to_reload() -> None:
    feed = LiveFeed(flush_s=0.01, max_queued=3)
    reader, stalled = feed.stream(), feed.stream()
    await anext(reader)
    await anext(stalled)
    for round_ in range(5):
        feed.op_changed(op("a"), op("a", float(round_)))
        name, batch = parse(await anext(reader))
        assert (name, batch[0]["progress"]["percentage"]) == ("ops", float(round_))
    # The stalled page kept at most three batches, then lost them for one resync.
    names = [parse(await anext(stalled))[0] for _ in range(3)]
    assert names[0] == "resync" and names[1:] == ["ops", "ops"]
    await feed.stop()


async def test_viewer_pages_hold_at_most_half_the_slots_and_operator_pages_the_rest() -> None:
    feed = LiveFeed(flush_s=0.01, max_subscribers=4)
    assert feed.max_viewers == 2
    viewers = [feed.open("viewer") for _ in range(3)]
    assert viewers[2] is None and feed.full("viewer") and not feed.full("operator")
    operators = [feed.open("operator") for _ in range(3)]
    assert operators[2] is None and feed.subscribers == 4
    first = viewers[0]
    assert first is not None
    feed.release(first)
    feed.release(first)  # given back twice (the response and its stream both do): counted once
    assert feed.subscribers == 3 and not feed.full("viewer")
    # A slot's stream gives it back when it ends.
    second = viewers[1]
    assert second is not None
    stream = feed.stream(second)
    assert parse(await anext(stream))[0] == "hello"
    await stream.aclose()
    assert feed.subscribers == 2 and feed.open("viewer") is not None
    await feed.stop()
    assert feed.open("operator") is None


def lease(worker_id: str, beat: int, state: WorkerState = WorkerState.IDLE) -> WorkerLease:
    return WorkerLease(worker_id=worker_id, worker_type="backtest", capabilities=["backtest.cpu"], host="h",
                       pid=1, version="0", slots=1, state=state, running=[], lease_ttl_s=5.0,
                       started_at=datetime(2026, 1, 1, tzinfo=UTC),
                       heartbeat_at=datetime(2026, 1, 1, 0, 0, beat, tzinfo=UTC))


async def test_a_heartbeat_goes_to_pages_as_an_id_and_a_real_change_as_the_whole_lease() -> None:
    feed = LiveFeed(flush_s=0.01)
    stream = feed.stream()
    await anext(stream)
    feed.worker_changed("w1", lease("w1", 0))
    name, first = parse(await anext(stream))
    assert name == "workers" and [w["worker_id"] for w in first["changed"]] == ["w1"] and first["beats"] is None

    feed.worker_changed("w1", lease("w1", 2))
    feed.worker_changed("w2", lease("w2", 3))  # never seen: whole
    _, beats = parse(await anext(stream))
    assert [w["worker_id"] for w in beats["changed"]] == ["w2"]
    assert beats["beats"] == {"at": "2026-01-01T00:00:02Z", "ids": ["w1"]}

    feed.worker_changed("w1", lease("w1", 4, WorkerState.BUSY))
    feed.worker_changed("w2", None)
    _, change = parse(await anext(stream))
    assert [(w["worker_id"], w["state"]) for w in change["changed"]] == [("w1", "busy")]
    assert change["gone"] == ["w2"] and change["beats"] is None
    await feed.stop()
