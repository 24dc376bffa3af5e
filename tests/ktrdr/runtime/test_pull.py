"""Pull requests kept outstanding for exactly the free slots."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from nats.aio.msg import Msg

from ktrdr.runtime.pull import JobPuller
from ktrdr.runtime.topology import ensure_topology
from subjects import names
from tests.support import assert_eventually


async def _setup(nc: Client, expires_s: float = 0.5) -> tuple[JobPuller, list[Msg]]:
    await ensure_topology(nc.jetstream(), lease_ttl_s=5.0)
    delivered: list[Msg] = []

    async def on_job(msg: Msg) -> None:
        delivered.append(msg)

    puller = JobPuller(nc=nc, capability=names.CAP_DUMMY_ANY, on_job=on_job, expires_s=expires_s)
    await puller.start()
    return puller, delivered


async def _queue_jobs(nc: Client, count: int) -> None:
    js = nc.jetstream()
    for i in range(count):
        await js.publish(names.jobs_subject(names.CAP_DUMMY_ANY), b'{"n": %d}' % i)


async def test_never_more_jobs_than_free_slots(nc: Client) -> None:
    puller, delivered = await _setup(nc)
    await _queue_jobs(nc, 5)
    await puller.want(2)
    await puller.want(2)  # already covered: asks for nothing more
    await assert_eventually(lambda: len(delivered) == 2)
    await asyncio.sleep(1.0)  # the requests expire and are renewed for the 2 free slots: still 2
    assert len(delivered) == 2 and puller.outstanding == 0
    await puller.want(3)
    await assert_eventually(lambda: len(delivered) == 5)
    await puller.stop()


async def test_expired_requests_are_renewed_while_slots_are_free(nc: Client) -> None:
    puller, delivered = await _setup(nc, expires_s=0.2)
    await puller.want(1)
    await asyncio.sleep(1.0)  # several request lifetimes: each 408 renews the request
    assert puller.outstanding == 1
    await _queue_jobs(nc, 1)
    await assert_eventually(lambda: len(delivered) == 1)
    await puller.stop()


async def test_no_free_slots_means_no_requests(nc: Client) -> None:
    puller, delivered = await _setup(nc, expires_s=0.2)
    await puller.want(0)
    await _queue_jobs(nc, 2)
    await asyncio.sleep(0.6)
    assert delivered == [] and puller.outstanding == 0
    info = await nc.jetstream().consumer_info(names.JOBS_STREAM, names.jobs_consumer(names.CAP_DUMMY_ANY))
    assert info.num_pending == 2
    await puller.stop()


async def test_requests_resume_after_the_consumer_is_deleted_and_recreated(nc: Client) -> None:
    puller, delivered = await _setup(nc, expires_s=0.5)
    await puller.want(1)
    js = nc.jetstream()
    await js.delete_consumer(names.JOBS_STREAM, names.jobs_consumer(names.CAP_DUMMY_ANY))
    await ensure_topology(js, lease_ttl_s=5.0)
    await _queue_jobs(nc, 1)

    async def delivered_after_heartbeats() -> bool:
        # The worker's heartbeat calls want() every beat: it renews a request whose end went
        # unannounced (the deleted consumer took it along).
        await puller.want(1)
        return len(delivered) == 1

    await assert_eventually(delivered_after_heartbeats, interval=0.25, timeout=15)
    await puller.stop()
