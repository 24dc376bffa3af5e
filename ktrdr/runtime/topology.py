"""Create the streams, consumers and buckets of the wire contract if they are missing.

Every process calls :func:`ensure_topology` at start, so no start order is required. Storage
is file-based: a restarted nats-server keeps every operation, lease history and queued job.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from subjects import names

DAY = 24 * 3600.0
JOB_ACK_WAIT_S = 30.0
JOB_MAX_DELIVER = 10


@dataclass(frozen=True)
class Buckets:
    workers: KeyValue
    ops: KeyValue
    claims: KeyValue


async def _ensure_stream(js: JetStreamContext, config: StreamConfig) -> None:
    try:
        await js.stream_info(config.name)
    except NotFoundError:
        await js.add_stream(config)


async def _ensure_bucket(js: JetStreamContext, config: KeyValueConfig) -> KeyValue:
    try:
        return await js.key_value(config.bucket)
    except BucketNotFoundError:
        return await js.create_key_value(config)


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


async def ensure_topology(js: JetStreamContext, *, lease_ttl_s: float, replicas: int = 1) -> Buckets:
    """``replicas`` > 1 on a cluster (nats/cluster/*.conf) keeps every stream through a node loss."""
    await _ensure_stream(js, StreamConfig(
        name=names.JOBS_STREAM,
        subjects=[names.JOBS_SUBJECTS],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=120.0,
        max_age=7 * DAY,
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
    ))
    ops = await _ensure_bucket(js, KeyValueConfig(
        bucket=names.OPS_BUCKET, history=5, storage=StorageType.FILE, replicas=replicas))
    claims = await _ensure_bucket(js, KeyValueConfig(
        bucket=names.CLAIMS_BUCKET, history=1, ttl=30 * DAY, storage=StorageType.FILE,
        replicas=replicas))
    return Buckets(workers=workers, ops=ops, claims=claims)
