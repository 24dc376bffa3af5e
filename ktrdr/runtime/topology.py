"""The streams, consumers, buckets and object stores of the wire contract.

The coordinator is the only role allowed to create them (:func:`ensure_topology`, at start and
again whenever one has gone missing); every other process binds to them (:func:`bind_topology`),
waiting with a clear message while one is missing. Storage is file-based: a restarted
nats-server keeps every operation, lease history and queued job.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from ktrdr.runtime.retry import RetryPolicy
from subjects import limits, names

log = logging.getLogger(__name__)

DAY = 24 * 3600.0
JOB_ACK_WAIT_S = 30.0
JOB_MAX_DELIVER = 10


@dataclass(frozen=True)
class Buckets:
    workers: KeyValue
    ops: KeyValue
    claims: KeyValue


@dataclass(frozen=True, kw_only=True)
class StoreLimits:
    """Byte limits of the buckets, object stores and the OPS stream (``subjects.limits``; the
    coordinator's settings)."""

    workers: int = limits.WORKERS_MAX_BYTES
    claims: int = limits.CLAIMS_MAX_BYTES
    ib_active: int = limits.IB_ACTIVE_MAX_BYTES
    ops: int = limits.OPS_BUCKET_MAX_BYTES
    ops_stream: int = limits.OPS_MAX_BYTES
    data: int = limits.DATA_MAX_BYTES
    results: int = limits.RESULTS_MAX_BYTES
    models: int = limits.MODELS_MAX_BYTES
    checkpoints: int = limits.CHECKPOINTS_MAX_BYTES


# Settings an existing stream is brought up to date with, so that upgrading applies them to
# streams an older version created. Replicas are only ever raised (:func:`_raise_replicas`).
_UPDATABLE = ("subjects", "max_msg_size", "max_bytes", "discard", "max_age", "max_msgs_per_subject")
STORAGE_RESOURCES_EXCEEDED = 10047  # JetStream: max_bytes cannot be reserved in the server's store


def _setting(config: StreamConfig, name: str) -> object:
    value = getattr(config, name)
    return sorted(value or ()) if name == "subjects" else value


async def _within_storage(call: Callable[[StreamConfig], Awaitable[object]], config: StreamConfig) -> None:
    """A server whose store is smaller than ``max_bytes`` refuses to reserve it: the stream then
    goes without a byte limit of its own (the server's store bounds it) rather than not at all."""
    try:
        await call(config)
    except APIError as exc:
        if exc.err_code != STORAGE_RESOURCES_EXCEEDED or not config.max_bytes or config.max_bytes < 0:
            raise
        log.warning("the nats-server's store cannot reserve %d bytes for the stream %s; it goes without "
                    "max_bytes (give JetStream more storage to have it)", config.max_bytes, config.name)
        await call(config.evolve(max_bytes=-1))


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    name = config.name
    if name is None:  # every stream the topology declares is named; nats-py's StreamConfig allows none
        raise ValueError(f"stream config without a name: {config}")
    try:
        info = await js.stream_info(name)
    except NotFoundError:
        log.info("creating the stream %s", config.name)
        await _within_storage(js.add_stream, config)
        return
    replicas = await _raise_replicas(js, name, config.num_replicas or 1)
    differs = [name for name in _UPDATABLE if _setting(info.config, name) != _setting(config, name)]
    if not differs:
        return
    log.info("updating the stream %s: %s", config.name, ", ".join(differs))
    try:
        await _within_storage(js.update_stream, config.evolve(num_replicas=replicas))
    except APIError as exc:
        # The stream as it is still works: a refused update must not keep the platform down.
        log.error("could not update the stream %s (%s): %s", config.name, ", ".join(differs), exc)


_REPLICAS_REFUSED: set[tuple[str, int]] = set()  # said once, not on every topology check


async def _raise_replicas(js: JetStreamContext, stream: str, replicas: int) -> int:
    """Bring a stream made with fewer replicas (a single-node start, an older version) up to the
    setting: on a cluster, an unreplicated bucket or object store is lost with the one node holding
    it. Never lowered: fewer replicas than configured is the only direction that loses data.
    Returns the stream's replicas now."""
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        return replicas
    have = info.config.num_replicas or 1
    if have >= replicas:
        return have
    try:
        await js.update_stream(info.config.evolve(num_replicas=replicas))
    except APIError as exc:
        if (stream, replicas) not in _REPLICAS_REFUSED:
            _REPLICAS_REFUSED.add((stream, replicas))
            log.error("could not raise the replicas of %s from %d to %d (does the cluster have %d nodes?): %s",
                      stream, have, replicas, replicas, exc)
        return have
    log.warning("raised the replicas of %s from %d to %d", stream, have, replicas)
    return replicas


async def _reconcile(js: JetStreamContext, stream: str, *, max_bytes: int, max_msg_size: int,
                     write_once: bool = False) -> None:
    """Bring a bucket's or object store's stream to the limits and direct gets every role reads by.

    Direct gets (``allow_direct``) are how every role but the coordinator reads (``ktrdr.runtime.direct``);
    a full store refuses new writes (discard new) rather than drop what it holds. ``write_once``: the
    server refuses a second write to a key (a put, a delete marker, a purge's rollup), whoever sends it.
    """
    try:
        config = (await js.stream_info(stream)).config
    except NotFoundError:
        return
    wanted: dict[str, object] = {"allow_direct": True, "max_bytes": max_bytes, "max_msg_size": max_msg_size,
                                 "discard": DiscardPolicy.NEW}
    if write_once:
        wanted |= {"max_msgs_per_subject": 1, "discard_new_per_subject": True, "allow_rollup_hdrs": False}
    differs = {k: v for k, v in wanted.items() if getattr(config, k) != v}
    # A server too small to reserve max_bytes left it unlimited (_within_storage): not a difference to retry.
    if differs.get("max_bytes") is not None and (config.max_bytes or -1) < 0 and _STORAGE_REFUSED.get(stream):
        differs.pop("max_bytes")
    if not differs:
        return
    log.info("updating the stream %s: %s", stream, ", ".join(differs))
    try:
        await _within_storage(js.update_stream, config.evolve(**differs))
    except APIError as exc:
        log.error("could not update the stream %s (%s): %s", stream, ", ".join(differs), exc)
        return
    if "max_bytes" in differs and ((await js.stream_info(stream)).config.max_bytes or -1) < 0:
        _STORAGE_REFUSED[stream] = True


_STORAGE_REFUSED: dict[str, bool] = {}


async def _ensure_bucket(js: JetStreamContext, config: KeyValueConfig, *,
                         max_value: int = limits.KV_MAX_VALUE_BYTES, write_once: bool = False) -> KeyValue:
    stream = names.kv_stream(config.bucket)
    try:
        await js.key_value(config.bucket)
    except BucketNotFoundError:
        log.info("creating the key-value bucket %s", config.bucket)
        await js.create_key_value(config.evolve(direct=True, max_bytes=None))
    await _raise_replicas(js, stream, config.replicas)
    await _reconcile(js, stream, max_bytes=config.max_bytes or -1, max_msg_size=max_value, write_once=write_once)
    # Bound after the update: a handle reads allow_direct when it binds.
    return await js.key_value(config.bucket)


async def _ensure_coordinator_consumer(js: JetStreamContext) -> None:
    """The coordinator's durable push consumer of OPS, acknowledged "all up to here" in batches.

    A store made before acknowledgements were batched has the consumer with per-message acks,
    which a consumer cannot change: it is replaced by one that starts after the old one's ack
    floor, so nothing is skipped and nothing already applied comes again.
    """
    start = DeliverPolicy.ALL
    start_seq: int | None = None
    try:
        info = await js.consumer_info(names.OPS_STREAM, names.COORDINATOR_CONSUMER)
    except NotFoundError:
        pass
    else:
        if info.config.ack_policy == AckPolicy.ALL:
            return
        await js.delete_consumer(names.OPS_STREAM, names.COORDINATOR_CONSUMER)
        start, start_seq = DeliverPolicy.BY_START_SEQUENCE, info.ack_floor.stream_seq + 1
    with contextlib.suppress(BadRequestError):  # another process created it meanwhile
        await js.add_consumer(names.OPS_STREAM, ConsumerConfig(
            durable_name=names.COORDINATOR_CONSUMER,
            deliver_subject=names.COORDINATOR_DELIVER,
            deliver_policy=start,
            opt_start_seq=start_seq,
            ack_policy=AckPolicy.ALL,
            ack_wait=30.0,
            max_ack_pending=20_000,
        ))


OBJECT_STORES = (names.DATA_OBJECTS, names.MODELS_OBJECTS)


async def _ensure_artifacts(js: JetStreamContext, store: str, replicas: int, max_bytes: int) -> None:
    """A write-once artifact store (``ktrdr.runtime.artifacts``): one message per subject, and a
    second write to a subject refused, whoever sends it; no rollups, no message deletes. Only a
    purge (the coordinator's) removes anything."""
    await _ensure_stream(js, StreamConfig(
        name=names.ARTIFACT_STREAMS[store],
        subjects=names.artifact_subjects(store),
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_msgs_per_subject=1,
        discard_new_per_subject=True,
        discard=DiscardPolicy.NEW,
        max_bytes=max_bytes,
        # A chunk or an info is one message: the server's max payload bounds it already.
        max_msg_size=limits.NATS_MAX_PAYLOAD,
        allow_direct=True,
        allow_rollup_hdrs=False,
        deny_delete=True,
    ))


async def _ensure_object_store(js: JetStreamContext, bucket: str, replicas: int, max_bytes: int) -> ObjectStore:
    stream = f"OBJ_{bucket}"
    await _raise_replicas(js, stream, replicas)
    try:
        await js.object_store(bucket)
    except BucketNotFoundError:
        log.info("creating the object store %s", bucket)
        with contextlib.suppress(BadRequestError):  # made by another coordinator meanwhile
            await js.create_object_store(bucket, config=ObjectStoreConfig(storage=StorageType.FILE, replicas=replicas))
    # A chunk or an info is one message: the server's max payload bounds it already.
    await _reconcile(js, stream, max_bytes=max_bytes, max_msg_size=limits.NATS_MAX_PAYLOAD)
    return await js.object_store(bucket)


async def ensure_topology(js: JetStreamContext, *, lease_ttl_s: float, replicas: int = 1,
                          ib_lock_ttl_s: float = 5.0, archive_days: float = 365.0,
                          store_limits: StoreLimits | None = None) -> Buckets:
    """Create what is missing (the coordinator's job). ``replicas`` > 1 on a cluster
    (nats/cluster/*.conf) keeps every stream, bucket and object store through a node loss."""
    sizes = store_limits or StoreLimits()
    await _ensure_stream(js, StreamConfig(
        name=names.JOBS_STREAM,
        # Only the declared capabilities: a job on any other subject is refused, not kept unseen.
        subjects=list(names.JOBS_SUBJECTS),
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=120.0,
        max_age=7 * DAY,
        max_msg_size=limits.JOBS_MAX_MSG_BYTES,
        max_bytes=limits.JOBS_MAX_BYTES,
        # A full queue refuses new offers (the submission fails, visibly) instead of dropping queued work.
        discard=DiscardPolicy.NEW,
    ))
    await _ensure_stream(js, StreamConfig(
        name=names.OPS_STREAM,
        # Only what we mean to keep: a stream on ops.> would answer cancel requests with a PubAck.
        subjects=[names.OPS_PROGRESS_ALL, names.OPS_EVENTS_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_age=7 * DAY,
        # The op record keeps the latest progress; the stream needs only recent history.
        max_msgs_per_subject=1000,
        max_msg_size=limits.OPS_MAX_MSG_BYTES,
        # Full, it refuses new reports (their workers send them again) rather than push out what the
        # coordinator has not read; the coordinator deletes what it has applied (coordinator.trim).
        max_bytes=sizes.ops_stream,
        discard=DiscardPolicy.NEW,
    ))
    await _ensure_stream(js, StreamConfig(
        name=names.OPS_ARCHIVE_STREAM,
        # Records past retention: the last one per op id, read by subject (direct get), kept for
        # archive_days (0: until the disk says otherwise).
        subjects=[names.OPS_ARCHIVE_ALL],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        num_replicas=replicas,
        max_age=archive_days * DAY if archive_days > 0 else 0,
        max_msgs_per_subject=1,
        max_bytes=-1,  # bounded by age; said explicitly, or every topology check would see a difference
        max_msg_size=limits.MAX_RECORD_BYTES * 2,
        duplicate_window=120.0,
        allow_direct=True,
        discard=DiscardPolicy.OLD,
    ))
    for capability in names.CAPABILITIES:
        durable = names.jobs_consumer(capability)
        try:
            await js.consumer_info(names.JOBS_STREAM, durable)
        except NotFoundError:
            await js.add_consumer(names.JOBS_STREAM, ConsumerConfig(
                durable_name=durable,
                filter_subject=names.jobs_subject(capability),
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=JOB_ACK_WAIT_S,
                max_deliver=JOB_MAX_DELIVER,
                max_ack_pending=10_000,
                max_waiting=4096,
            ))
    await _ensure_coordinator_consumer(js)
    workers = await _ensure_bucket(js, KeyValueConfig(
        bucket=names.WORKERS_BUCKET,
        history=1,
        ttl=lease_ttl_s,
        # Without limit markers an expired lease vanishes silently; with them watchers see it.
        limit_marker_ttl=max(1.0, lease_ttl_s),
        storage=StorageType.FILE,
        replicas=replicas,
        max_bytes=sizes.workers,
    ))
    ops = await _ensure_bucket(js, KeyValueConfig(
        bucket=names.OPS_BUCKET, history=5, storage=StorageType.FILE, replicas=replicas, max_bytes=sizes.ops),
        # A record is bounded (limits.MAX_RECORD_BYTES) before it is written; the payload bounds it again.
        max_value=limits.NATS_MAX_PAYLOAD)
    # A claim is the arbiter of who runs an attempt: once made, no credential can delete, purge or
    # overwrite it (a worker that could would take over another's op); it ages out after 30 days.
    claims = await _ensure_bucket(js, KeyValueConfig(
        bucket=names.CLAIMS_BUCKET, history=1, ttl=30 * DAY, storage=StorageType.FILE,
        replicas=replicas, max_bytes=sizes.claims), write_once=True)
    await _ensure_bucket(js, KeyValueConfig(
        bucket=names.IB_ACTIVE_BUCKET, history=1, ttl=ib_lock_ttl_s,
        # Markers let watchers (and `nats kv watch ib_active`) see an expired lock.
        limit_marker_ttl=max(1.0, ib_lock_ttl_s), storage=StorageType.FILE, replicas=replicas,
        max_bytes=sizes.ib_active))
    await _ensure_bucket(js, KeyValueConfig(
        bucket=names.MODEL_PINS_BUCKET, history=1, storage=StorageType.FILE, replicas=replicas,
        max_bytes=limits.MODEL_PINS_MAX_BYTES), write_once=True)
    for bucket in OBJECT_STORES:
        await _ensure_object_store(js, bucket, replicas, getattr(sizes, bucket))
    await _ensure_artifacts(js, names.RESULTS_ARTIFACTS, replicas, sizes.results)
    await _ensure_artifacts(js, names.CHECKPOINTS_ARTIFACTS, replicas, sizes.checkpoints)
    return Buckets(workers=workers, ops=ops, claims=claims)


class TopologyMissing(RuntimeError):
    """A stream or bucket this process needs does not exist (yet): only the coordinator makes them."""


BIND_BACKOFF_MAX_S = 10.0
# Waiting for the coordinator to create what a process binds to: soon at first, then every 10 s.
BIND_RETRY = RetryPolicy(first_s=0.25, max_s=BIND_BACKOFF_MAX_S)


async def bind_topology(js: JetStreamContext, *, object_stores: tuple[str, ...] = (),
                        wait: bool = True) -> Buckets:
    """Bind to the buckets a worker or client uses; while one is missing, say which and wait for
    the coordinator to create it (``wait=False``: raise :class:`TopologyMissing` instead)."""
    pauses = BIND_RETRY.delays()
    while True:
        delay = next(pauses)
        try:
            return await _bind(js, object_stores)
        except TopologyMissing as exc:
            if not wait:
                raise
            log.warning("%s; waiting %.1f s for the coordinator to create it", exc, delay)
        await asyncio.sleep(delay)


async def _bind(js: JetStreamContext, object_stores: tuple[str, ...]) -> Buckets:
    found: dict[str, KeyValue] = {}
    for bucket in (names.WORKERS_BUCKET, names.OPS_BUCKET, names.CLAIMS_BUCKET):
        try:
            found[bucket] = await js.key_value(bucket)
        except BucketNotFoundError:
            raise TopologyMissing(f"the key-value bucket {bucket!r} does not exist") from None
    for bucket in object_stores:
        try:
            await js.object_store(bucket)
        except BucketNotFoundError:
            raise TopologyMissing(f"the object store {bucket!r} does not exist") from None
    return Buckets(workers=found[names.WORKERS_BUCKET], ops=found[names.OPS_BUCKET],
                   claims=found[names.CLAIMS_BUCKET])
