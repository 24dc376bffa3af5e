"""The coordinator's feed of the OPS stream: applied in order per op, acknowledged in batches."""

from __future__ import annotations

import asyncio
import json

import httpx
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy, StreamConfig

from coordinator.app import Coordinator
from coordinator.feed import OpsFeed, _ack_seq, _Delivery
from coordinator.metrics import Metrics
from ktrdr.runtime.topology import ensure_topology
from subjects import names
from subjects.models import OpStatus, SubmitRequest
from tests.conftest import MakeWorker
from tests.support import assert_eventually, wait_status


async def _publish_events(nc: Client, count: int, op_id: str = "op-1") -> None:
    js = nc.jetstream()
    for i in range(count):
        await js.publish(names.ops_events(op_id, "local"), b'{"n": %d}' % i)


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


def _rejected(metrics: Metrics, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "ktrdr_rejected_messages_total", {"subject": names.COORDINATOR_DELIVER, "reason": reason})
    return value or 0.0


def test_only_our_own_consumers_acknowledgement_subjects_name_a_sequence() -> None:
    assert _ack_seq("$JS.ACK.OPS.coordinator.1.42.40.1796640054851160562.3") == 42
    assert _ack_seq("$JS.ACK.hub.ACCHASH.OPS.coordinator.2.42.40.1796640054851160562.3.rnd") == 42
    for reply in ("$JS.ACK.EVIL.coordinator.1.200000.1.1796640054851160562.0",  # another stream
                  "$JS.ACK.OPS.intruder.1.42.40.1796640054851160562.3",  # another consumer of OPS
                  "$JS.ACK.hub.ACCHASH.EVIL.coordinator.1.42.40.1796640054851160562.3",
                  "$JS.ACK.OPS.coordinator.1.4x2.40.1796640054851160562.3",  # not a number
                  "$JS.ACK.OPS.coordinator.1.\u0664\u0662.40.1796640054851160562.3",  # digits, not ASCII ones
                  "$JS.ACK.OPS.coordinator.1.0.40.1796640054851160562.3",
                  "$JS.ACK.OPS.coordinator.1.42.40.1796640054851160562",  # a token short
                  "_INBOX.OPS.coordinator.1.42.40.1796640054851160562.3",
                  "$JS.ACK.OPS.coordinator.1." + "9" * 300 + ".40.1.3"):
        assert _ack_seq(reply) is None, reply


async def _counting_feed(nc: Client) -> tuple[OpsFeed, list[bytes], Metrics]:
    """A started feed over the topology, recording what it applies and counting what it rejects."""
    await ensure_topology(nc.jetstream(), lease_ttl_s=5.0)
    applied: list[bytes] = []

    def apply(msg: Msg) -> None:
        applied.append(msg.data)

    metrics = Metrics()
    feed = OpsFeed(nc=nc, js=nc.jetstream(), apply=apply, metrics=metrics)
    await feed.start()
    return feed, applied, metrics


async def test_a_plain_publish_on_the_deliver_subject_is_dropped_whatever_its_reply_claims(nc: Client) -> None:
    feed, applied, metrics = await _counting_feed(nc)
    expected = feed._expected
    await nc.publish(names.COORDINATOR_DELIVER, b'{"n": 99}')
    await nc.publish(names.COORDINATOR_DELIVER, b'{"n": 98}', reply="_INBOX.OPS.coordinator.1.200000.1.0.0")
    await assert_eventually(lambda: _rejected(metrics, "foreign") == 2)
    # A reply in the exact shape of our consumer's acknowledgement subject, naming a huge sequence:
    # nats-server 2.15 refuses a client's publish with a $JS.ACK reply, so the test hands over what
    # a server without that check would deliver.
    await feed._on_msg(Msg(_client=nc, subject=names.COORDINATOR_DELIVER, data=b'{"n": 97}',
                           reply="$JS.ACK.OPS.coordinator.1.200000.1.1796640054851160562.0"))
    assert _rejected(metrics, "foreign") == 3
    assert applied == [] and feed._expected == expected
    assert not feed._unacked and not feed._gaps and not feed._tasks
    # The feed goes on following the stream, from where it was.
    await _publish_events(nc, 2)
    await assert_eventually(lambda: applied == [b'{"n": 0}', b'{"n": 1}'])
    await assert_eventually(lambda: _acked_through(nc, 2))
    await feed.stop()


async def test_a_delivery_naming_a_sequence_the_stream_never_reached_is_not_believed(nc: Client) -> None:
    feed, applied, metrics = await _counting_feed(nc)
    await _publish_events(nc, 2)
    await assert_eventually(lambda: len(applied) == 2)
    # Subject and reply as our consumer's own would be (no publisher can make both; this test hands
    # the message over itself): only the stream's state gives the sequence away.
    await feed._on_msg(Msg(_client=nc, subject=names.ops_events("op-1", "local"), data=b'{"n": 99}',
                           reply="$JS.ACK.OPS.coordinator.1.200000.3.1796640054851160562.0"))
    assert _rejected(metrics, "foreign") == 1
    assert feed._expected == 3 and not feed._gaps
    await _publish_events(nc, 1, op_id="op-2")
    await assert_eventually(lambda: len(applied) == 3)
    assert b'{"n": 99}' not in applied
    await assert_eventually(lambda: _acked_through(nc, 3))
    await feed.stop()


async def test_a_gap_of_sequences_gone_from_the_stream_costs_one_read_and_holds_nothing_back(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_topology(js, lease_ttl_s=5.0)
    received: list[Msg] = []

    async def dies_before_applying(msg: Msg) -> None:
        received.append(msg)

    dead = await nc.subscribe(names.COORDINATOR_DELIVER, cb=dies_before_applying)
    await _publish_events(nc, 50)
    await assert_eventually(lambda: len(received) == 50)
    await dead.unsubscribe()
    for seq in range(1, 50):  # all but the last one the dead coordinator received
        await js.delete_msg(names.OPS_STREAM, seq)

    applied: list[bytes] = []

    def apply(msg: Msg) -> None:
        applied.append(msg.data)

    feed = OpsFeed(nc=nc, js=js, apply=apply)
    await feed.start()
    await _publish_events(nc, 1, op_id="op-2")
    await assert_eventually(lambda: len(applied) == 2)
    assert sorted(applied) == [b'{"n": 0}', b'{"n": 49}']
    await assert_eventually(lambda: _acked_through(nc, 51))
    assert not feed._unacked and not feed._gaps
    await feed.stop()


async def test_a_gap_is_read_only_up_to_what_the_consumer_may_have_pending(nc: Client) -> None:
    await ensure_topology(nc.jetstream(), lease_ttl_s=5.0)
    await _publish_events(nc, 5)  # stored, and delivered to nobody: the feed has not subscribed
    applied: list[bytes] = []

    def apply(msg: Msg) -> None:
        applied.append(msg.data)

    metrics = Metrics()
    feed = OpsFeed(nc=nc, js=nc.jetstream(), apply=apply, metrics=metrics)
    gap = _Delivery(Msg(_client=nc))
    gap.waiting = 1
    feed._unacked.append(gap)
    # More messages in one gap than could be pending: two are read, the rest is not read one by one.
    await feed._read_gap(gap, 1, 6, limit=2)
    assert applied == [b'{"n": 0}', b'{"n": 1}']
    assert _rejected(metrics, "gap") == 1


async def test_a_foreign_consumer_aimed_at_the_deliver_subject_changes_nothing_and_health_stays_live(
        coordinator: Coordinator, api: httpx.AsyncClient, nc: Client, make_worker: MakeWorker) -> None:
    # The attack seen: a stream whose sequence was pushed to 200,000 by a purge, and a push consumer
    # of it delivering to the coordinator's deliver subject. The test's connection (the
    # coordinator's role) plays the attacker.
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="EVIL", subjects=["evil.>"]))
    for i in range(3):
        await js.publish("evil.x", b"%d" % i)
    purged = await nc.request("$JS.API.STREAM.PURGE.EVIL", json.dumps({"seq": 200_000}).encode())
    assert json.loads(purged.data)["success"] is True
    assert (await js.publish("evil.x", b"after the purge")).seq == 200_000
    await js.add_consumer("EVIL", ConsumerConfig(deliver_subject=names.COORDINATOR_DELIVER))
    # And another consumer of OPS itself, delivering every op's messages there a second time.
    await js.add_consumer(names.OPS_STREAM, ConsumerConfig(durable_name="intruder",
                                                           deliver_subject=names.COORDINATOR_DELIVER))
    feed = coordinator._feed
    assert feed is not None
    await assert_eventually(lambda: _rejected(coordinator.metrics, "foreign") >= 1)

    await make_worker("w1")
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0.5, "steps": 3}))
    loop = asyncio.get_running_loop()
    watch_until = loop.time() + 3.0
    slowest = 0.0
    while loop.time() < watch_until:
        asked = loop.time()
        assert (await api.get("/health/live", timeout=2.0)).status_code == 200
        slowest = max(slowest, loop.time() - asked)
        assert len(feed._unacked) < 100 and len(feed._tasks) < 100 and not feed._gaps
        await asyncio.sleep(0.1)
    assert slowest < 1.0, f"/health/live took {slowest:.2f} s"
    await wait_status(coordinator, op.op_id, OpStatus.COMPLETED)

    # Every copy the intruder delivered of what OPS holds was dropped too, and the feed still
    # expects the sequence after OPS's last, not one past 200,000.
    last = (await js.stream_info(names.OPS_STREAM)).state.last_seq
    await assert_eventually(lambda: _rejected(coordinator.metrics, "foreign") >= 1 + last)
    assert feed._expected is not None and feed._expected <= last + 1
    await assert_eventually(lambda: _acked_through(nc, last))
