"""What the dashboard shows beside ops and workers, read from JetStream on request: job queues,
an op's lifecycle events, stored models and datasets.

Every answer is bounded: events per op, models listed, and the dataset size the coordinator will
read to summarise one (its range, bars and gaps, computed once per content digest and kept).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
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
from ktrdr.models.registry import ModelNotFoundError, list_models, show_model
from subjects import limits, names
from subjects.limits import bounded_text

log = logging.getLogger(__name__)

MAX_EVENTS = 200  # an op with more (a job offered over and over) shows its first ones
EVENT_TEXT_CHARS = 2_000
CONTEXT_FACTS = 20  # an info event's facts shown, the first ones
MAX_PROGRESS_READ = 2_000  # progress messages read for one answer about a training's epochs
EPOCH_FIGURES = ("train_loss", "val_loss", "train_accuracy", "val_accuracy")
MAX_MODELS = 1_000
MAX_FEATURES = 500  # a model's feature names listed on its page
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
        for key in ("error", "message", "checkpoint"):
            if isinstance(event.get(key), str):
                entry[key] = bounded_text(event[key], EVENT_TEXT_CHARS)
        # An info event's facts (the epoch a training resumed from, its last checkpoint's): the
        # timeline shows them, each value cut short.
        context = event.get("context")
        if isinstance(context, dict) and context:
            entry["context"] = {bounded_text(str(k), 80): _fact(v)
                                for k, v in list(context.items())[:CONTEXT_FACTS]}
        found.append(entry)
    return found, True


def _fact(value: Any) -> Any:
    """A value to show: a number or a short text; a short list of those stays a list; anything else
    is its JSON, cut short."""
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, list) and len(value) <= 50 and all(
            v is None or isinstance(v, bool | int | float | str) for v in value):
        return [bounded_text(v, 200) if isinstance(v, str) else v for v in value]
    return bounded_text(value if isinstance(value, str) else json.dumps(value, default=str), 200)


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return value if math.isfinite(value) else None


async def epochs(js: JetStreamContext, op_id: str, *, since: int = 0) -> dict[str, Any]:
    """A running training's loss and accuracy per epoch, from the progress its worker published
    (``ops.<id>.progress.*`` in the OPS stream: each epoch's last report carries ``train_loss``),
    after stream sequence ``since``; at most ``MAX_PROGRESS_READ`` messages a call (``more``: ask
    again from ``last_seq``). An epoch reported twice (a resumed attempt) keeps its later figures;
    an attempt that starts over drops the epochs after the one it reports. Best effort: the stream
    keeps an op's last 1,000 progress messages, a worker publishes at most ten a second (an epoch
    shorter than that may be left out), and the stored history replaces all this once it completes."""
    subject = names.ops_progress(op_id, names.ANY_HOST)
    by_epoch: dict[int, dict[str, Any]] = {}
    seq, last, read, total = since + 1, since, 0, None
    while read < MAX_PROGRESS_READ:
        try:
            msg = await js.get_msg(names.OPS_STREAM, seq=seq, subject=subject, next=True)
        except NotFoundError:
            break
        read += 1
        last = msg.seq or seq
        seq = last + 1
        try:
            update = json.loads(msg.data or b"")
        except ValueError:
            continue
        context = update.get("context") if isinstance(update, dict) else None
        if not isinstance(context, dict):
            continue
        epoch = context.get("epoch")
        if isinstance(epoch, bool) or not isinstance(epoch, int):
            continue
        if isinstance(context.get("total_epochs"), int):
            total = context["total_epochs"]
        if _number(context.get("train_loss")) is None:
            continue  # a report from within an epoch
        for later in [e for e in by_epoch if e > epoch]:
            del by_epoch[later]
        by_epoch[epoch] = {"epoch": epoch, "attempt": update.get("attempt"),
                           **{k: _number(context.get(k)) for k in EPOCH_FIGURES}}
    return {"op_id": op_id, "epochs": [by_epoch[e] for e in sorted(by_epoch)], "total_epochs": total,
            "last_seq": last, "more": read >= MAX_PROGRESS_READ}


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


async def model(js: JetStreamContext, name: str, version: str) -> dict[str, Any] | None:
    """One model version's record with its whole metadata (what trained it, on which bars, its
    metrics and features), None when there is no such version."""
    try:
        found = await show_model(js, name, version)
    except ModelNotFoundError:
        return None
    meta = found.metadata
    plain = {k: _fact(v) for k, v in meta.items() if k not in ("metrics", "feature_names")}
    metrics = m if isinstance(m := meta.get("metrics"), dict) else {}
    features = f if isinstance(f := meta.get("feature_names"), list) else []
    return {"ref": found.ref, "name": found.name, "version": found.version, "size": found.size,
            "digest": found.digest, "created_at": found.created_at, "op_id": meta.get("op_id"),
            "metadata": plain, "metrics": {str(k): _fact(v) for k, v in metrics.items()},
            "feature_names": [bounded_text(str(f), 200) for f in features[:MAX_FEATURES]],
            "features": len(features)}


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
            row: dict[str, Any] = {"symbol": symbol, "timeframe": timeframe, "size": int(info.size or 0),
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
            assert known is not None  # summarised above, or refused
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
