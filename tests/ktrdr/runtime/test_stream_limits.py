"""JOBS and OPS store only their declared subjects, within size limits, and an upgrade applies them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import nats.errors
import pytest
from nats.aio.client import Client
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import APIError, NoStreamResponseError

import nats
from ktrdr.natsd import NatsServer
from ktrdr.runtime.topology import ensure_topology
from subjects import limits, names

NO_STREAM = (NoStreamResponseError, nats.errors.NoRespondersError, nats.errors.TimeoutError)


async def test_jobs_stores_only_the_declared_capability_subjects(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_topology(js, lease_ttl_s=2.0)
    info = await js.stream_info(names.JOBS_STREAM)
    assert sorted(info.config.subjects or []) == sorted(f"jobs.{c}" for c in names.CAPABILITIES)
    with pytest.raises(NO_STREAM):
        await js.publish("jobs.nosuch.cap", b"{}", timeout=1.0)
    assert (await js.stream_info(names.JOBS_STREAM)).state.messages == 0


async def test_an_oversized_message_is_refused_by_the_server(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_topology(js, lease_ttl_s=2.0)
    with pytest.raises(APIError) as refused:
        await js.publish(names.jobs_subject(names.CAP_DUMMY_ANY), b"x" * (limits.JOBS_MAX_MSG_BYTES + 1))
    assert "size" in (refused.value.description or "")
    jobs, ops = await js.stream_info(names.JOBS_STREAM), await js.stream_info(names.OPS_STREAM)
    assert (jobs.config.max_msg_size, jobs.config.max_bytes) == (limits.JOBS_MAX_MSG_BYTES, limits.JOBS_MAX_BYTES)
    assert (ops.config.max_msg_size, ops.config.max_bytes) == (limits.OPS_MAX_MSG_BYTES, limits.OPS_MAX_BYTES)


async def test_streams_made_by_an_older_version_are_brought_up_to_date(nc: Client) -> None:
    js = nc.jetstream()
    # As an older ktrdr made them: every jobs subject, no size limits.
    for stream in (names.JOBS_STREAM, names.OPS_STREAM):
        await js.delete_stream(stream)
    await js.add_stream(StreamConfig(name=names.JOBS_STREAM, subjects=["jobs.>"], retention=RetentionPolicy.WORK_QUEUE,
                                     storage=StorageType.FILE, duplicate_window=120.0, max_age=7 * 24 * 3600.0))
    await js.add_stream(StreamConfig(name=names.OPS_STREAM, subjects=[names.OPS_PROGRESS_ALL, names.OPS_EVENTS_ALL],
                                     storage=StorageType.FILE, max_msgs_per_subject=1000))

    await ensure_topology(js, lease_ttl_s=2.0)

    jobs, ops = await js.stream_info(names.JOBS_STREAM), await js.stream_info(names.OPS_STREAM)
    assert sorted(jobs.config.subjects or []) == sorted(names.JOBS_SUBJECTS)
    assert (jobs.config.max_msg_size, jobs.config.max_bytes) == (limits.JOBS_MAX_MSG_BYTES, limits.JOBS_MAX_BYTES)
    assert (ops.config.max_msg_size, ops.config.max_bytes) == (limits.OPS_MAX_MSG_BYTES, limits.OPS_MAX_BYTES)
    with pytest.raises(NO_STREAM):
        await js.publish("jobs.nosuch.cap", b"{}", timeout=1.0)


@pytest.fixture
def small_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server whose JetStream store is smaller than the streams' max_bytes."""
    conf = tmp_path / "small.conf"
    conf.write_text("jetstream { max_file_store: 256MB }\n")
    server = NatsServer(store_dir=tmp_path / "small", http_port=0, config_file=conf)
    server.start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_server_too_small_to_reserve_max_bytes_still_gets_every_stream(small_server: NatsServer) -> None:
    client = await nats.connect(small_server.url)
    try:
        js = client.jetstream()
        await ensure_topology(js, lease_ttl_s=2.0)
        jobs = await js.stream_info(names.JOBS_STREAM)
        assert jobs.config.max_msg_size == limits.JOBS_MAX_MSG_BYTES and jobs.config.max_bytes == -1
        assert sorted(jobs.config.subjects or []) == sorted(names.JOBS_SUBJECTS)
    finally:
        await client.close()
