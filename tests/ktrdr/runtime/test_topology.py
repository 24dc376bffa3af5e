"""Only the coordinator creates streams and buckets; it recreates what goes missing, and the others
wait, saying what is missing, instead of failing in a loop."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from nats.aio.client import Client

from coordinator.app import Coordinator
from ktrdr.natsd import NatsServer
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.topology import OBJECT_STORES
from ktrdr.runtime.worker import Worker
from subjects import names, roles
from subjects.models import OpStatus, SubmitRequest
from tests.conftest import FAST, MakeWorker, bounded, coordinator_settings, creds, fleet
from tests.support import assert_eventually, standin_handlers, wait_status


async def test_the_coordinator_recreates_a_deleted_bucket_and_new_ops_complete(
        nats_server: NatsServer, nc: Client, make_worker: MakeWorker, caplog: pytest.LogCaptureFixture) -> None:
    coordinator = Coordinator(settings=coordinator_settings(nats_server.url, topology_check_s=0.2))
    await coordinator.start()
    try:
        await make_worker("w1")
        js = nc.jetstream()
        await js.delete_key_value(names.CLAIMS_BUCKET)
        await js.delete_stream(names.RESULTS_STREAM)
        op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0, "steps": 1}))
        done = await wait_status(coordinator, op.op_id, OpStatus.COMPLETED, OpStatus.FAILED, timeout=20)
        assert done.status is OpStatus.COMPLETED
        assert await js.key_value(names.CLAIMS_BUCKET) and await js.stream_info(names.RESULTS_STREAM)
    finally:
        await bounded(coordinator.stop(), "the coordinator")
    tracebacks = [r for r in caplog.records if r.name == "ktrdr.runtime.worker" and r.exc_info]
    assert tracebacks == []


async def test_a_worker_waits_saying_what_is_missing_until_the_coordinator_creates_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    server = NatsServer(store_dir=tmp_path / "nats", config_file=fleet().config)
    server.start()
    worker = Worker(settings=WorkerSettings(nats_url=server.url, nats_creds=creds(roles.WORKER), worker_id="early",
                                            **{**FAST, "fetch_timeout_s": 0.3, "grace_s": 1.0}),
                    worker_type="test", capabilities=[names.CAP_DUMMY_ANY],
                    handlers=standin_handlers([names.CAP_DUMMY_ANY]))
    caplog.set_level(logging.WARNING, logger="ktrdr.runtime.topology")
    starting = asyncio.create_task(worker.start())
    try:
        await assert_eventually(lambda: any("does not exist" in r.getMessage() for r in caplog.records),
                                message="the worker never said what it was waiting for")
        assert not starting.done()
        coordinator = Coordinator(settings=coordinator_settings(server.url))
        await coordinator.start()
        try:
            await asyncio.wait_for(starting, 20)
            op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
            await wait_status(coordinator, op.op_id, OpStatus.COMPLETED, timeout=20)
            assert set(OBJECT_STORES) <= {name async for name in _object_stores(coordinator)}
        finally:
            await bounded(worker.stop(), "the worker")
            await bounded(coordinator.stop(), "the coordinator")
    finally:
        starting.cancel()
        server.stop()


async def _object_stores(coordinator: Coordinator):  # type: ignore[no-untyped-def]
    for bucket in OBJECT_STORES:
        try:
            await coordinator.js.object_store(bucket)
            yield bucket
        except Exception:
            continue
