"""The operations index answers every filter as a scan of the records would, counts included."""

from __future__ import annotations

import itertools
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from coordinator.history import COUNT_CAP, OpsIndex, unpack
from subjects.models import ListRequest, Operation, OpStatus

T0 = datetime(2026, 1, 1, tzinfo=UTC)
STATUSES = list(OpStatus)


def records() -> list[Operation]:
    ops = []
    for i in range(120):
        status = STATUSES[i % len(STATUSES)]
        ops.append(Operation(op_id=f"{'sweep' if i % 10 == 0 else 'dummy'}-{i:04d}ab_{i % 7}",
                             type="sweep" if i % 10 == 0 else "dummy", status=status,
                             parent_id=None if i % 4 else f"sweep-{(i // 10) * 10:04d}ab_0", worker_id=f"w{i % 3}",
                             created_at=T0 + timedelta(minutes=i),
                             completed_at=T0 + timedelta(minutes=i + 1) if status.terminal else None))
    return ops


@pytest.fixture
def index(tmp_path: Path) -> OpsIndex:
    idx = OpsIndex(path=tmp_path / "ops.sqlite3")
    ops = records()
    idx.upsert([(op, n + 1) for n, op in enumerate(ops)], last_seq=len(ops))
    idx.mark_archived([op.op_id for op in ops[:15] if op.status.terminal])
    return idx


def scan(query: ListRequest, archived: set[str]) -> list[str]:
    """The answer a plain filter over every record gives, newest first."""
    out = []
    for op in records():
        if query.status and op.status not in query.status:
            continue
        if query.active_only and op.status.terminal:
            continue
        if query.type and op.type != query.type:
            continue
        if query.parent_id and op.parent_id != query.parent_id:
            continue
        if not query.parent_id and not query.include_children and op.parent_id is not None:
            continue
        if query.worker_id and op.worker_id != query.worker_id:
            continue
        if query.since and op.created_at < query.since:
            continue
        if query.until and op.created_at > query.until:
            continue
        if query.q and query.q.lower() not in op.op_id.lower():
            continue
        if not query.include_archived and op.op_id in archived:
            continue
        out.append(op)
    return [op.op_id for op in sorted(out, key=lambda o: (o.created_at, o.op_id), reverse=True)]


QUERIES = [ListRequest(**dict(zip(("include_children", "include_archived", "active_only"), flags, strict=True)))
           for flags in itertools.product((False, True), repeat=3)] + [
    ListRequest(status=[OpStatus.FAILED, OpStatus.CANCELLED]),
    ListRequest(type="dummy", status=[OpStatus.COMPLETED], include_children=True),
    ListRequest(parent_id="sweep-0010ab_0"),
    ListRequest(worker_id="w1", include_archived=True),
    ListRequest(since=T0 + timedelta(minutes=30), until=T0 + timedelta(minutes=60), include_children=True),
    ListRequest(q="ab_3", include_children=True),
    ListRequest(q="b_", include_children=True),  # '_' is a character here, not LIKE's wildcard
    ListRequest(q="0012", include_archived=True),
]


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.model_dump_json(exclude_defaults=True))
def test_every_filter_answers_as_a_scan_of_the_records_would(index: OpsIndex, query: ListRequest) -> None:
    archived = {op.op_id for op in records()[:15] if op.status.terminal}
    expected = scan(query, archived)
    page = index.query(query.model_copy(update={"limit": 1000}), limit=1000)
    assert [unpack(r).op_id for r in page.records] == expected
    assert page.total == len(expected) and not page.capped


def test_a_broad_count_stops_at_the_cap(tmp_path: Path) -> None:
    idx = OpsIndex(path=tmp_path / "ops.sqlite3")
    ops = [Operation(op_id=f"dummy-{i:06d}", type="dummy", worker_id="w1", created_at=T0 + timedelta(seconds=i))
           for i in range(COUNT_CAP + 5)]
    idx.upsert([(op, 1) for op in ops])
    exact = idx.query(ListRequest(), limit=5)  # from the kept counts: exact however many
    assert (exact.total, exact.capped) == (COUNT_CAP + 5, False)
    capped = idx.query(ListRequest(worker_id="w1"), limit=5)  # counted: up to the cap
    assert (capped.total, capped.capped) == (COUNT_CAP, True)
    assert [unpack(r).op_id for r in capped.records] == [op.op_id for op in reversed(ops[-5:])]


def test_an_older_revision_never_replaces_a_newer_one(index: OpsIndex) -> None:
    op = records()[1]
    stale = op.model_copy(update={"status": OpStatus.PENDING})
    index.upsert([(stale, 0)])
    assert unpack(index.get(op.op_id)[0]).status is op.status  # type: ignore[index]


def test_counts_follow_every_change(index: OpsIndex) -> None:
    live = {(op.type, op.status.value) for op in records()}
    counted = {(t, s): n for t, s, n in index.counts()}
    archived = {op.op_id for op in records()[:15] if op.status.terminal}
    for key in live:
        assert counted.get(key, 0) == sum(1 for op in records() if (op.type, op.status.value) == key
                                          and op.op_id not in archived)
    index.delete([records()[1].op_id])
    after = {(t, s): n for t, s, n in index.counts()}
    key = (records()[1].type, records()[1].status.value)
    assert after.get(key, 0) == counted[key] - 1


def test_an_index_of_another_layout_is_started_again(tmp_path: Path) -> None:
    path = tmp_path / "ops.sqlite3"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE ops (op_id TEXT PRIMARY KEY, record BLOB)")
    old.execute("INSERT INTO ops VALUES ('x', x'00')")
    old.commit()
    old.close()
    idx = OpsIndex(path=path)
    assert idx.size() == 0 and idx.last_seq == 0
