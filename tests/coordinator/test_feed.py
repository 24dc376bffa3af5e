"""The coordinator's feed of the OPS stream: applied in order per op, acknowledged in batches."""

from __future__ import annotations

import asyncio

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy

from coordinator.feed import OpsFeed
from ktrdr.runtime.topology import ensure_topology
from subjects import names
from tests.support import assert_eventually


async def _publish_events(nc: Client, count: int, op_id: str = "op-1") -> None:
    js = nc.jetstream()
    for i in range(count):
        await js.publish(names.ops_events(op_id), b'{"n": %d}' % i)


async def _consumer(nc: Client) -> ConsumerInfo:
    return await nc.jetstream().consumer_info(names.OPS_STREAM, names.COORDINATOR_CONSUMER)


async def test_every_message_is_applied_and_acknowledged_in_batches(nc: Client) -> None:
    await ensure_topology(nc.jetstream(), lease_ttl_s=5.0)
    applied: list[bytes] = []

    def apply(msg: Msg) -> None:
        applied.append(msg.data)

    feed = OpsFeed(nc=nc, js=nc.jetstream(), apply=apply)
    await feed.start()
    await _publish_events(nc, 200)
    await assert_eventually(lambda: len(applied) == 200)
    assert applied == [b'{"n": %d}' % i for i in range(200)]
    info = await assert_eventually(
        lambda: _acked_through(nc, 200), message="the ack floor did not reach the last message")
    assert info.num_ack_pending == 0
    await feed.stop()


async def _acked_through(nc: Client, seq: int) -> ConsumerInfo | None:
    info = await _consumer(nc)
    return info if info.ack_floor.stream_seq >= seq else None


async def test_a_message_that_cannot_be_applied_yet_is_retried_and_holds_back_the_ack(nc: Client) -> None:
    await ensure_topology(nc.jetstream(), lease_ttl_s=5.0)
    applied: list[bytes] = []
    failures = 0
    unavailable = asyncio.Event()
    unavailable.set()

    def apply(msg: Msg) -> asyncio.Future[None]:
        # Committing the change fails while JetStream is "unavailable".
        nonlocal failures
        commit: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if msg.data == b'{"n": 1}' and unavailable.is_set():
            failures += 1
            commit.set_exception(RuntimeError("JetStream unavailable"))
        else:
            applied.append(msg.data)
            commit.set_result(None)
        return commit

    feed = OpsFeed(nc=nc, js=nc.jetstream(), apply=apply)
    await feed.start()
    await _publish_events(nc, 5)
    await assert_eventually(lambda: len(applied) == 4 and failures >= 2)
    await asyncio.sleep(0.3)
    # Messages after the stuck one are applied, but nothing from it on is acknowledged.
    assert (await _consumer(nc)).ack_floor.stream_seq == 1
    unavailable.clear()
    await assert_eventually(lambda: len(applied) == 5, timeout=5)
    await assert_eventually(lambda: _acked_through(nc, 5))
    await feed.stop()


async def test_a_consumer_from_before_batched_acks_is_replaced_from_its_ack_floor(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_topology(js, lease_ttl_s=5.0)
    await js.delete_consumer(names.OPS_STREAM, names.COORDINATOR_CONSUMER)
    await js.add_consumer(names.OPS_STREAM, ConsumerConfig(
        durable_name=names.COORDINATOR_CONSUMER, deliver_subject=names.COORDINATOR_DELIVER,
        deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.EXPLICIT, ack_wait=30.0))
    await _publish_events(nc, 6)
    legacy = await js.subscribe_bind(names.OPS_STREAM, (await _consumer(nc)).config,
                                     names.COORDINATOR_CONSUMER, manual_ack=True)
    for _ in range(4):
        await (await legacy.next_msg(timeout=5)).ack()
    await assert_eventually(lambda: _acked_through(nc, 4))
    await legacy.unsubscribe()

    await ensure_topology(js, lease_ttl_s=5.0)
    info = await _consumer(nc)
    assert info.config.ack_policy == AckPolicy.ALL
    applied: list[bytes] = []

    def apply(msg: Msg) -> None:
        applied.append(msg.data)

    feed = OpsFeed(nc=nc, js=nc.jetstream(), apply=apply)
    await feed.start()
    await assert_eventually(lambda: len(applied) == 2)
    assert applied == [b'{"n": 4}', b'{"n": 5}']
    await feed.stop()


async def test_what_a_dead_coordinator_received_but_never_applied_is_read_back_not_acked_away(
        nc: Client) -> None:
    await ensure_topology(nc.jetstream(), lease_ttl_s=5.0)
    # A coordinator receives three messages and dies before applying or acknowledging them: the
    # server redelivers them only after the AckWait (30 s), but newer ones right away.
    received: list[Msg] = []

    async def dies_before_applying(msg: Msg) -> None:
        received.append(msg)

    dead = await nc.subscribe(names.COORDINATOR_DELIVER, cb=dies_before_applying)
    await _publish_events(nc, 3)
    await assert_eventually(lambda: len(received) == 3)
    await dead.unsubscribe()

    applied: list[bytes] = []

    def apply(msg: Msg) -> None:
        applied.append(msg.data)

    feed = OpsFeed(nc=nc, js=nc.jetstream(), apply=apply)
    await feed.start()
    await _publish_events(nc, 2, op_id="op-2")
    # Long before any redelivery: the skipped ones were read from the stream and applied, so
    # acknowledging the newer ones loses nothing.
    await assert_eventually(lambda: len(applied) >= 5, timeout=10)
    assert sorted(applied) == sorted([b'{"n": %d}' % i for i in range(3)] + [b'{"n": 0}', b'{"n": 1}'])
    await assert_eventually(lambda: _acked_through(nc, 5))
    await feed.stop()
