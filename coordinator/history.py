"""The coordinator's index of every operation record: an SQLite file beside it.

The ``ops`` bucket stays the source of truth; this is derived from it so that the coordinator need
not hold the whole history in memory, nor read all of it on every start. Each committed record
lands here (compressed, with the fields queries filter on), in batches; the file also keeps the
``KV_ops`` stream sequence it has caught up to, so a restart reads only what changed since. Lost or
from another bucket, it is rebuilt from the stream (and the archive).

Measured before choosing (bench/README.md): at a million records a filtered page of 50 is a few
milliseconds and a get by id well under one, from a file of a few hundred MB, where the in-memory
mirror it replaces took 5 GB and two minutes to reload.
"""

from __future__ import annotations

import sqlite3
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from subjects.models import ListRequest, Operation, OpStatus

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ops (
    op_id TEXT PRIMARY KEY,
    type TEXT NOT NULL,
    status TEXT NOT NULL,
    parent_id TEXT,
    worker_id TEXT,
    created_at INTEGER NOT NULL,
    completed_at INTEGER,
    revision INTEGER NOT NULL,
    archived INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
-- The records apart: the rows that filters and counts walk stay small.
CREATE TABLE IF NOT EXISTS records (op_id TEXT PRIMARY KEY, record BLOB NOT NULL) WITHOUT ROWID;
-- Text in an id, by trigram (three characters or more): a substring search of a million ids
-- otherwise reads every one of them.
CREATE VIRTUAL TABLE IF NOT EXISTS ids USING fts5(op_id, tokenize='trigram', detail='none');
CREATE INDEX IF NOT EXISTS ops_created ON ops (created_at);
CREATE INDEX IF NOT EXISTS ops_parent ON ops (parent_id, created_at);
CREATE INDEX IF NOT EXISTS ops_worker ON ops (worker_id, created_at);
CREATE INDEX IF NOT EXISTS ops_expiry ON ops (archived, completed_at);
CREATE INDEX IF NOT EXISTS ops_live ON ops (status) WHERE status IN ('pending', 'running');
CREATE INDEX IF NOT EXISTS ops_top ON ops (created_at) WHERE parent_id IS NULL AND archived = 0;
CREATE INDEX IF NOT EXISTS ops_top_status ON ops (status, created_at) WHERE parent_id IS NULL AND archived = 0;
CREATE INDEX IF NOT EXISTS ops_top_type ON ops (type, status, created_at) WHERE parent_id IS NULL AND archived = 0;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- Records by type, status, archived and whether top-level, kept by triggers: the gauges and the
-- exact totals of the common lists read it at once, where a GROUP BY over a million rows took over
-- a second.
CREATE TABLE IF NOT EXISTS counts (type TEXT NOT NULL, status TEXT NOT NULL, archived INTEGER NOT NULL,
    top INTEGER NOT NULL, n INTEGER NOT NULL, PRIMARY KEY (type, status, archived, top)) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS ops_counted_in AFTER INSERT ON ops BEGIN
    INSERT INTO counts VALUES (new.type, new.status, new.archived, new.parent_id IS NULL, 1)
        ON CONFLICT (type, status, archived, top) DO UPDATE SET n = n + 1;
END;
CREATE TRIGGER IF NOT EXISTS ops_counted_out AFTER DELETE ON ops BEGIN
    UPDATE counts SET n = n - 1 WHERE type = old.type AND status = old.status AND archived = old.archived
        AND top = (old.parent_id IS NULL);
END;
CREATE TRIGGER IF NOT EXISTS ops_counted_change AFTER UPDATE OF type, status, archived, parent_id ON ops BEGIN
    UPDATE counts SET n = n - 1 WHERE type = old.type AND status = old.status AND archived = old.archived
        AND top = (old.parent_id IS NULL);
    INSERT INTO counts VALUES (new.type, new.status, new.archived, new.parent_id IS NULL, 1)
        ON CONFLICT (type, status, archived, top) DO UPDATE SET n = n + 1;
END;
"""
_LIVE = (OpStatus.PENDING.value, OpStatus.RUNNING.value)
# Counting every match of a broad filter over a million rows costs more than the page itself:
# past this many the total is reported as this many (``OpList.total_capped``).
COUNT_CAP = 1_000
SCHEMA_VERSION = 1
# Statistics for the planner from this many rows on, again each time the table doubles.
ANALYSE_FROM_ROWS = 10_000
# Ids a text search looks up one by one; past this many it filters by the pattern instead.
MAX_CANDIDATES = 5_000


def _us(when: datetime | None) -> int | None:
    return None if when is None else int(when.timestamp() * 1_000_000)


def _pack(op: Operation) -> bytes:
    return zlib.compress(op.encode(), 1)


def unpack(blob: bytes) -> Operation:
    return Operation.model_validate_json(zlib.decompress(blob))


@dataclass(frozen=True)
class Page:
    total: int
    capped: bool
    records: list[bytes]  # packed: ``unpack`` each


class OpsIndex:
    """One file, one connection (the coordinator's event loop is its only user)."""

    def __init__(self, *, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # Derived data: a lost write is caught up from the stream, so no fsync per batch.
        self._db.executescript("PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF; PRAGMA cache_size=-32768;"
                               "PRAGMA temp_store=MEMORY; PRAGMA busy_timeout=5000;")
        if self._db.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            # Another layout (an older ktrdr): derived data, so start again; the caller rebuilds it.
            tables = [r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                                      "AND name NOT LIKE 'sqlite_%' AND name NOT LIKE 'ids_%'")]
            for table in tables:
                self._db.execute(f'DROP TABLE IF EXISTS "{table}"')
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    # --- meta -----------------------------------------------------------------------------------

    def meta(self, key: str) -> str | None:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = "
                         "excluded.value", (key, value))

    def reset(self) -> None:
        """Forget everything (a new bucket): the caller rebuilds from the stream."""
        self._db.executescript("DELETE FROM ops; DELETE FROM records; DELETE FROM ids; DELETE FROM meta; "
                               "DELETE FROM counts;")

    def analysis_due(self) -> bool:
        """Whether the planner's statistics are missing or from a table half the size it is now:
        without them it may scan a million rows for a filter an index answers."""
        rows = self.size()
        analysed = int(self.meta("analysed_rows") or 0)
        return rows >= ANALYSE_FROM_ROWS and rows >= 2 * analysed

    def analyse(self) -> None:
        """``ANALYZE`` on a connection of its own (run it in a thread: a second or two at a million rows)."""
        db = sqlite3.connect(self.path, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=5000")
            rows = int(db.execute("SELECT COUNT(*) FROM ops").fetchone()[0])
            db.execute("ANALYZE")
            db.execute("INSERT INTO meta (key, value) VALUES ('analysed_rows', ?) ON CONFLICT(key) DO UPDATE "
                       "SET value = excluded.value", (str(rows),))
        finally:
            db.close()

    # --- writing ---------------------------------------------------------------------------------

    def upsert(self, records: Iterable[tuple[Operation, int]], *, last_seq: int | None = None,
               archived: bool = False) -> int:
        records = list(records)
        rows = [(op.op_id, op.type, op.status.value, op.parent_id, op.worker_id, _us(op.created_at),
                 _us(op.completed_at), revision, int(archived)) for op, revision in records]
        with self._transaction():
            self._db.executemany("INSERT INTO ids (op_id) SELECT ?1 WHERE NOT EXISTS "
                                 "(SELECT 1 FROM ops WHERE op_id = ?1)", [(op.op_id,) for op, _ in records])
            newer = [op for op, revision in records if self._newer(op.op_id, revision, archived)]
            self._db.executemany(
                "INSERT INTO ops (op_id, type, status, parent_id, worker_id, created_at, completed_at, revision,"
                " archived) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(op_id) DO UPDATE SET"
                " type = excluded.type, status = excluded.status, parent_id = excluded.parent_id,"
                " worker_id = excluded.worker_id, created_at = excluded.created_at,"
                " completed_at = excluded.completed_at, revision = excluded.revision, archived = excluded.archived"
                " WHERE excluded.archived = 1 OR ops.revision <= excluded.revision", rows)
            self._db.executemany("INSERT INTO records (op_id, record) VALUES (?, ?) ON CONFLICT(op_id) DO UPDATE "
                                 "SET record = excluded.record", [(op.op_id, _pack(op)) for op in newer])
            if last_seq is not None:
                self._set_last_seq(last_seq)
        return len(rows)

    def write(self, records: list[tuple[Operation, int, bytes]], *, new: Iterable[str], last_seq: int) -> None:
        """The coordinator's own committed writes (the hot path): each the newest revision of its op,
        with the JSON already encoded for the bucket; ``new``: the ids written for the first time."""
        rows = [(op.op_id, op.type, op.status.value, op.parent_id, op.worker_id, _us(op.created_at),
                 _us(op.completed_at), revision, 0) for op, revision, _ in records]
        with self._transaction():
            self._db.executemany("INSERT INTO ids (op_id) VALUES (?)", [(i,) for i in new])
            self._db.executemany(
                "INSERT INTO ops (op_id, type, status, parent_id, worker_id, created_at, completed_at, revision,"
                " archived) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(op_id) DO UPDATE SET"
                " type = excluded.type, status = excluded.status, parent_id = excluded.parent_id,"
                " worker_id = excluded.worker_id, created_at = excluded.created_at,"
                " completed_at = excluded.completed_at, revision = excluded.revision", rows)
            self._db.executemany("INSERT INTO records (op_id, record) VALUES (?, ?) ON CONFLICT(op_id) DO UPDATE "
                                 "SET record = excluded.record",
                                 [(op.op_id, zlib.compress(payload, 1)) for op, _, payload in records])
            self._set_last_seq(last_seq)

    def _newer(self, op_id: str, revision: int, archived: bool) -> bool:
        if archived:
            return True
        row = self._db.execute("SELECT revision FROM ops WHERE op_id = ?", (op_id,)).fetchone()
        return row is None or int(row[0]) <= revision

    def mark_archived(self, op_ids: Iterable[str], *, last_seq: int | None = None) -> None:
        with self._transaction():
            self._db.executemany("UPDATE ops SET archived = 1 WHERE op_id = ?", [(i,) for i in op_ids])
            if last_seq is not None:
                self._set_last_seq(last_seq)

    def delete(self, op_ids: Iterable[str], *, last_seq: int | None = None) -> None:
        with self._transaction():
            ids = [(i,) for i in op_ids]
            self._db.executemany("DELETE FROM ops WHERE op_id = ?", ids)
            self._db.executemany("DELETE FROM records WHERE op_id = ?", ids)
            if last_seq is not None:
                self._set_last_seq(last_seq)

    def _set_last_seq(self, seq: int) -> None:
        current = self.meta("last_seq")
        if current is None or int(current) < seq:
            self.set_meta("last_seq", str(seq))

    def _transaction(self) -> _Tx:
        return _Tx(self._db)

    # --- reading ---------------------------------------------------------------------------------

    @property
    def last_seq(self) -> int:
        return int(self.meta("last_seq") or 0)

    def get(self, op_id: str) -> tuple[bytes, int, bool] | None:
        """(packed record, revision, archived) of ``op_id``."""
        row = self._db.execute("SELECT r.record, o.revision, o.archived FROM ops o JOIN records r USING (op_id) "
                               "WHERE o.op_id = ?", (op_id,)).fetchone()
        return None if row is None else (bytes(row[0]), int(row[1]), bool(row[2]))

    def live(self) -> Iterator[tuple[bytes, int]]:
        """Every record not yet ended (what the coordinator must hold to act)."""
        cursor = self._db.execute("SELECT r.record, o.revision FROM ops o INDEXED BY ops_live JOIN records r "
                                  "USING (op_id) WHERE o.status IN ('pending', 'running') AND o.archived = 0")
        for record, revision in cursor:
            yield bytes(record), int(revision)

    def recent_terminal(self, limit: int) -> list[tuple[bytes, int]]:
        rows = self._db.execute("SELECT r.record, o.revision FROM ops o INDEXED BY ops_created JOIN records r "
                                "USING (op_id) WHERE o.status NOT IN (?, ?) AND o.archived = 0 "
                                "ORDER BY o.created_at DESC LIMIT ?", (*_LIVE, limit)).fetchall()
        return [(bytes(r), int(v)) for r, v in rows]

    def children(self, parent_id: str) -> list[tuple[bytes, int]]:
        rows = self._db.execute("SELECT r.record, o.revision FROM ops o JOIN records r USING (op_id) "
                                "WHERE o.parent_id = ?", (parent_id,)).fetchall()
        return [(bytes(r), int(v)) for r, v in rows]

    def expired(self, before: datetime, *, limit: int, offset: int = 0) -> list[str]:
        """Ended, not archived, completed before ``before``: what retention moves out, oldest first."""
        rows = self._db.execute(
            "SELECT op_id FROM ops WHERE archived = 0 AND completed_at IS NOT NULL AND completed_at < ? "
            "AND status NOT IN (?, ?) ORDER BY completed_at, op_id LIMIT ? OFFSET ?",
            (_us(before), *_LIVE, limit, offset)).fetchall()
        return [str(r[0]) for r in rows]

    def archived_before(self, before: datetime, *, limit: int) -> list[str]:
        rows = self._db.execute("SELECT op_id FROM ops WHERE archived = 1 AND completed_at < ? "
                                "ORDER BY completed_at LIMIT ?", (_us(before), limit)).fetchall()
        return [str(r[0]) for r in rows]

    def counts(self) -> list[tuple[str, str, int]]:
        """(type, status, count) of the records not archived: the ``ktrdr_operations`` gauge."""
        return [(str(t), str(s), int(n)) for t, s, n in self._db.execute(
            "SELECT type, status, SUM(n) FROM counts WHERE archived = 0 GROUP BY type, status HAVING SUM(n) > 0")]

    def size(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM ops").fetchone()[0])

    def _counted(self, query: ListRequest) -> int | None:
        found = _count_filters(query)
        if found is None:
            return None
        where, args = found
        return int(self._db.execute(f"SELECT COALESCE(SUM(n), 0) FROM counts WHERE {where}", args).fetchone()[0])

    def _candidates(self, text: str | None) -> list[str] | None:
        """Ids holding ``text``, from the trigram index (three characters or more; it takes no
        ESCAPE, so '_' matches any character there and the exact pattern is checked after). None:
        too short, or too common to be worth listing; the pattern alone filters then."""
        if text is None or len(text) < 3:
            return None
        rows = self._db.execute("SELECT op_id FROM ids WHERE op_id LIKE ? LIMIT ?",
                                (f"%{text}%", MAX_CANDIDATES + 1)).fetchall()
        return None if len(rows) > MAX_CANDIDATES else [str(r[0]) for r in rows]

    def query(self, query: ListRequest, *, limit: int) -> Page:
        where, args = _filters(query, self._candidates(query.q))
        sql_where = f" WHERE {' AND '.join(where)}" if where else ""
        exact = self._counted(query)
        if exact is not None:
            total = exact
        else:
            # Counted up to a cap (COUNT_CAP): an exact count of a million matches is a full index scan.
            total = int(self._db.execute(f"SELECT COUNT(*) FROM (SELECT 1 FROM ops{sql_where} LIMIT ?)",
                                         (*args, COUNT_CAP + 1)).fetchone()[0])
            if total > COUNT_CAP:
                total = COUNT_CAP + 1
        ids = [r[0] for r in self._db.execute(f"SELECT op_id FROM ops{sql_where} ORDER BY created_at DESC, op_id DESC "
                                              "LIMIT ? OFFSET ?", (*args, limit, query.offset))]
        found = dict(self._db.execute(f"SELECT op_id, record FROM records WHERE op_id IN "
                                      f"({', '.join('?' for _ in ids)})", ids).fetchall()) if ids else {}
        return Page(total=min(total, COUNT_CAP) if exact is None else total, capped=exact is None and total > COUNT_CAP,
                    records=[bytes(found[i]) for i in ids if i in found])


def _count_filters(q: ListRequest) -> tuple[str, list[object]] | None:
    """The ``counts`` table's answer to ``q``, when only what it keeps is filtered on."""
    if q.parent_id or q.worker_id or q.since or q.until or q.q:
        return None
    # archived IN (0, 1) with archived ones, (0, 0) without; top IN (1, 0) with children, (1, 1) without.
    where = ["archived IN (0, ?)", "top IN (1, ?)"]
    args: list[object] = [int(q.include_archived), 0 if q.include_children else 1]
    statuses = [s.value for s in q.status] if q.status else None
    if q.active_only:
        statuses = [s for s in (statuses or list(_LIVE)) if s in _LIVE]
    if statuses is not None:
        where.append(f"status IN ({', '.join('?' for _ in statuses) or 'NULL'})")
        args += statuses
    if q.type:
        where.append("type = ?")
        args.append(q.type)
    return " AND ".join(where), args


def _filters(q: ListRequest, candidates: list[str] | None = None) -> tuple[list[str], list[object]]:
    where: list[str] = []
    args: list[object] = []
    if q.status:
        where.append(f"status IN ({', '.join('?' for _ in q.status)})")
        args += [s.value for s in q.status]
    if q.active_only:
        where.append("status IN (?, ?)")
        args += list(_LIVE)
    if q.type:
        where.append("type = ?")
        args.append(q.type)
    if q.parent_id:
        where.append("parent_id = ?")
        args.append(q.parent_id)
    elif not q.include_children:
        where.append("parent_id IS NULL")
    if q.worker_id:
        where.append("worker_id = ?")
        args.append(q.worker_id)
    if q.since is not None:
        where.append("created_at >= ?")
        args.append(_us(_aware(q.since)))
    if q.until is not None:
        where.append("created_at <= ?")
        args.append(_us(_aware(q.until)))
    if q.q:
        if candidates is not None:
            # Given as values, the planner looks each up by key instead of scanning and testing them.
            where.append(f"op_id IN ({', '.join('?' for _ in candidates) or 'NULL'})")
            args += candidates
        # Ids are tokens of [A-Za-z0-9_-]: escape LIKE's own wildcard '_'.
        where.append("op_id LIKE ? ESCAPE '\\'")
        args.append("%" + q.q.replace("_", "\\_") + "%")
    if not q.include_archived:
        where.append("archived = 0")
    return where, args


def _aware(when: datetime) -> datetime:
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN")

    def __exit__(self, kind: object, exc: object, tb: object) -> None:
        self.db.execute("COMMIT" if kind is None else "ROLLBACK")
