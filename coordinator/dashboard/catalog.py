"""What the dashboard shows beside ops and workers, read from JetStream on request: job queues,
an op's lifecycle events, stored models and datasets.

Every answer is bounded: events per op, models listed, and the dataset size the coordinator will
read to summarise one (its range, bars and gaps, computed once per content digest and kept).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.js.object_store import ObjectStore

from coordinator.errors import InvalidRequest
from ktrdr.data.gaps import find_gaps
from ktrdr.data.shared import data_bucket
from ktrdr.data.store import bars_from_bytes
from ktrdr.data.validation import DatasetTooLarge, size_text
from ktrdr.models.registry import list_models
from subjects import limits, names
from subjects.limits import bounded_text

log = logging.getLogger(__name__)

MAX_EVENTS = 200  # an op with more (a job offered over and over) shows its first ones
EVENT_TEXT_CHARS = 2_000
MAX_MODELS = 1_000
MAX_DATASETS = 1_000
SUMMARIES_KEPT = 64
GAPS_LISTED = 20


def _stream_time(text: str | None) -> datetime | None:
    """A JetStream timestamp (RFC 3339 with nanoseconds) as a datetime."""
    if not text:
        return None
    head, _, frac = text.rstrip("Z").partition(".")
    try:
        stamp = datetime.fromisoformat(head).replace(tzinfo=UTC)
    except ValueError:
        return None
    return stamp.replace(microsecond=int((frac + "000000")[:6])) if frac.isdigit() else stamp


async def queues(js: JetStreamContext, *, now: datetime) -> list[dict[str, Any]]:
    """Per job subject: jobs waiting, jobs being worked, idle pulls, and how long the oldest has waited."""
    # Per-subject counts of every subject the stream holds: one per capability (names.JOBS_SUBJECTS).
    info = await js.stream_info(names.JOBS_STREAM, subjects_filter=">")
    counts: dict[str, int] = dict(info.state.subjects or {})
    out: list[dict[str, Any]] = []
    for capability in names.CAPABILITIES:
        subject = names.jobs_subject(capability)
        row: dict[str, Any] = {"subject": subject, "capability": capability, "stored": counts.get(subject, 0),
                               "pending": None, "in_progress": None, "waiting_pulls": None,
                               "oldest_offered_at": None, "oldest_wait_s": None}
        try:
            consumer = await js.consumer_info(names.JOBS_STREAM, names.jobs_consumer(capability))
            row.update(pending=consumer.num_pending, in_progress=consumer.num_ack_pending,
                       waiting_pulls=consumer.num_waiting)
        except NotFoundError:
            pass
        if row["stored"]:
            try:
                msg = await js.get_msg(names.JOBS_STREAM, seq=info.state.first_seq or 1, subject=subject, next=True)
                offered = _offered_at(msg.data) or _stream_time(msg.time)  # type: ignore[arg-type]
                if offered is not None:
                    row["oldest_offered_at"] = offered.isoformat()
                    row["oldest_wait_s"] = max(0.0, (now - offered).total_seconds())
            except NotFoundError:
                pass
        out.append(row)
    return out


def _offered_at(data: bytes | None) -> datetime | None:
    try:
        value = json.loads(data or b"").get("offered_at")
        return datetime.fromisoformat(value) if isinstance(value, str) else None
    except (ValueError, AttributeError):
        return None


async def events(js: JetStreamContext, op_id: str) -> tuple[list[dict[str, Any]], bool]:
    """The lifecycle events of ``op_id`` still in the OPS stream, oldest first; True if cut at MAX_EVENTS."""
    subject = names.ops_events(op_id, names.ANY_HOST)
    found: list[dict[str, Any]] = []
    seq = 1
    while len(found) < MAX_EVENTS:
        try:
            msg = await js.get_msg(names.OPS_STREAM, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return found, False
        seq = (msg.seq or seq) + 1
        try:
            event = json.loads(msg.data or b"")
        except ValueError:
            continue
        if not isinstance(event, dict):
            continue
        entry = {k: event.get(k) for k in ("event", "worker_id", "attempt", "timestamp")}
        for key in ("error", "message"):
            if isinstance(event.get(key), str):
                entry[key] = bounded_text(event[key], EVENT_TEXT_CHARS)
        found.append(entry)
    return found, True


async def models(js: JetStreamContext) -> list[dict[str, Any]]:
    versions = sorted(await list_models(js), key=lambda v: (v.name, -v.version))[:MAX_MODELS]
    out = []
    for v in versions:
        meta = v.metadata
        out.append({"ref": v.ref, "name": v.name, "version": v.version, "size": v.size,
                    "created_at": v.created_at, "op_id": meta.get("op_id"), "strategy": meta.get("strategy"),
                    "symbol": meta.get("symbol"), "timeframes": meta.get("timeframes"),
                    "start": meta.get("start"), "end": meta.get("end"),
                    "metrics": {k: val for k, val in (meta.get("metrics") or {}).items()
                                if isinstance(val, int | float | str | bool) or val is None}})
    return out


@dataclass(frozen=True)
class _Summary:
    start: str | None
    end: str | None
    bars: int
    gaps: int
    unexpected: int
    unexpected_gaps: list[dict[str, Any]]


class Datasets:
    """The shared datasets (the ``data`` object store), each summarised once per content digest."""

    def __init__(self) -> None:
        self._summaries: OrderedDict[str, _Summary] = OrderedDict()
        # Why a version was refused: asked again, it is answered without being downloaded again.
        self._refused: OrderedDict[str, str] = OrderedDict()

    async def list(self, js: JetStreamContext) -> list[dict[str, Any]]:
        try:
            infos = await (await data_bucket(js)).list()
        except NotFoundError:
            return []
        out = []
        for info in sorted(infos, key=lambda i: i.name or "")[:MAX_DATASETS]:
            if info.deleted or not info.name or "/" not in info.name:
                continue
            symbol, timeframe = info.name.split("/", 1)
            row = {"symbol": symbol, "timeframe": timeframe, "size": int(info.size or 0),
                   "digest": str(info.digest or ""), "modified": str(info.mtime or "")}
            known = self._summaries.get(row["digest"])
            out.append({**row, **(_as_dict(known) if known else {})})
        return out

    async def show(self, js: JetStreamContext, symbol: str, timeframe: str) -> dict[str, Any] | None:
        bucket = await data_bucket(js)
        name = f"{symbol}/{timeframe}"
        try:
            info = await bucket.get_info(name)
        except NotFoundError:
            return None
        row: dict[str, Any] = {"symbol": symbol, "timeframe": timeframe, "size": int(info.size or 0),
                               "digest": str(info.digest or ""), "modified": str(info.mtime or "")}
        # Read whole into the coordinator's memory to be summarised: a valid dataset is never larger
        # than its arrays (limits.MAX_DATASET_BYTES), so past that the page says so instead.
        if row["size"] > limits.MAX_DATASET_BYTES:
            return {**row, "note": f"larger than {size_text(limits.MAX_DATASET_BYTES)}: not summarised here "
                                   "(`ktrdr data show` on a host that holds it)"}
        known = self._summaries.get(row["digest"])
        if known is None:
            refused = self._refused.get(row["digest"])
            if refused is None:
                try:
                    known = await asyncio.to_thread(_summarise, await _download(bucket, name), name, timeframe)
                except ValueError as exc:
                    refused = str(exc)
                    log.warning("dataset %s (%s) refused: %s", name, row["digest"], refused)
                    _keep(self._refused, row["digest"], refused)
            if refused is not None:
                # The request was fine; the dataset is not: a 422 naming it, counted with the API's errors.
                raise InvalidRequest(refused, field="dataset")
            _keep(self._summaries, row["digest"], known)
        return {**row, **_as_dict(known)}


def _keep(kept: OrderedDict[str, Any], digest: str, value: Any) -> None:
    kept[digest] = value
    while len(kept) > SUMMARIES_KEPT:
        kept.popitem(last=False)


class _Capped:
    """Where an object's chunks are written as they arrive: kept up to ``limit`` bytes, the rest only
    counted, so that an object larger than its info says never grows past the limit in memory."""

    def __init__(self, *, limit: int) -> None:
        self.limit = limit
        self.size = 0
        self.parts: list[bytes] = []

    def write(self, chunk: bytes) -> int:
        self.size += len(chunk)
        if self.size <= self.limit:
            self.parts.append(chunk)
        else:
            self.parts.clear()
        return len(chunk)


async def _download(bucket: ObjectStore, name: str) -> bytes:
    sink = _Capped(limit=limits.MAX_DATASET_BYTES)
    await bucket.get(name, writeinto=sink)  # type: ignore[arg-type]
    if sink.size > sink.limit:
        raise DatasetTooLarge(f"dataset {name}: an object of more than {size_text(sink.limit)} "
                              "(MAX_DATASET_BYTES, the limit of a dataset)")
    return b"".join(sink.parts)


def _summarise(data: bytes, name: str, timeframe: str) -> _Summary:
    frame = bars_from_bytes(data, source=f"dataset {name}")
    gaps = find_gaps(frame.index, timeframe) if len(frame) else []
    unexpected = [g.to_dict() for g in gaps if not g.weekend]
    return _Summary(start=frame.index[0].isoformat() if len(frame) else None,
                    end=frame.index[-1].isoformat() if len(frame) else None,
                    bars=len(frame), gaps=len(gaps), unexpected=len(unexpected),
                    unexpected_gaps=unexpected[:GAPS_LISTED])


def _as_dict(summary: _Summary) -> dict[str, Any]:
    return {"start": summary.start, "end": summary.end, "bars": summary.bars, "gaps": summary.gaps,
            "unexpected": summary.unexpected, "unexpected_gaps": summary.unexpected_gaps}
