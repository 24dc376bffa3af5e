"""Acknowledged publishes sent now and awaited later, and key-value writes through them."""

from __future__ import annotations

import asyncio
import json

import nats.errors
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig, StreamConfig
from nats.js.errors import KeyWrongLastSequenceError

from ktrdr.runtime.publish import AckedPublisher, _plain_ack_seq
from subjects import names


async def test_sends_leave_at_once_and_acknowledge_in_order(nc: Client) -> None:
    js = nc.jetstream()
    await js.add_stream(StreamConfig(name="T", subjects=["t.>"]))
    async with AckedPublisher(nc=nc) as publisher:
        futures = [await publisher.send(f"t.{i}", b"%d" % i) for i in range(50)]
        sequences = await asyncio.gather(*futures)
    assert sequences == list(range(1, 51))
    assert (await js.get_msg("T", 50)).data == b"49"


async def test_key_value_create_is_a_claim_and_update_checks_the_revision(nc: Client) -> None:
    bucket = await nc.jetstream().create_key_value(KeyValueConfig(bucket="claims_t"))
    async with AckedPublisher(nc=nc) as publisher:
        first = await publisher.kv_create("claims_t", "op-1_1", b"mine")
        with pytest.raises(KeyWrongLastSequenceError):
            await publisher.kv_create("claims_t", "op-1_1", b"theirs")
        with pytest.raises(KeyWrongLastSequenceError):
            await publisher.kv_update("claims_t", "op-1_1", b"stale", last=first + 7)
        second = await publisher.kv_update("claims_t", "op-1_1", b"updated", last=first)
    entry = await bucket.get("op-1_1")
    assert (entry.value, entry.revision) == (b"updated", second)


async def test_a_subject_no_stream_captures_fails_at_once(nc: Client) -> None:
    async with AckedPublisher(nc=nc) as publisher:
        with pytest.raises(nats.errors.NoRespondersError):
            await asyncio.wait_for(publisher.publish("nowhere.at.all", b"x"), 5)


async def test_an_acknowledgement_that_never_comes_times_out(nc: Client) -> None:
    async def silent(msg: Msg) -> None:  # takes the message, never answers
        pass

    await nc.subscribe("silent.listener", cb=silent)
    async with AckedPublisher(nc=nc, timeout_s=0.3) as publisher:
        with pytest.raises(nats.errors.TimeoutError):
            await asyncio.wait_for(publisher.publish("silent.listener", b"x"), 5)


@pytest.mark.parametrize("err_code", [10071, 10164])
async def test_either_wrong_last_sequence_is_a_lost_key_race(nc: Client, err_code: int) -> None:
    # 10164: what a replicated stream answers while another write of the key is still in flight.
    async def stream(msg: Msg) -> None:
        await msg.respond(json.dumps({"error": {"code": 400, "err_code": err_code,
                                                "description": "wrong last sequence"}}).encode())

    await nc.subscribe("$KV.claims_r.op-1_1", cb=stream)
    async with AckedPublisher(nc=nc) as publisher:
        with pytest.raises(KeyWrongLastSequenceError):
            await asyncio.wait_for(publisher.kv_create("claims_r", "op-1_1", b"mine"), 5)


def test_key_subjects_are_validated() -> None:
    assert names.kv_key_subject("ops", "dummy-1") == "$KV.ops.dummy-1"
    for bad in ("a.b", "a b", "*", ">", ""):
        with pytest.raises(names.InvalidToken):
            names.kv_key_subject("ops", bad)


@pytest.mark.parametrize(("ack", "seq"), [
    (b'{"stream":"KV_ops","seq":12}', 12),
    (b'{"stream":"JOBS","domain":"hub","seq":4,"duplicate":true}', 4),
    (b'{"error":{"code":400,"err_code":10071,"description":"wrong last sequence: 3"}}', None),
    (b'{"stream":"JOBS","seq":}', None),
    (b'{"stream":"JOBS","seq":7x}', None),
    (b'{"stream":"JOBS","seq":123456789012345678901234}', None),
    (b'not json', None),
])
def test_a_plain_acknowledgement_is_read_without_json_and_anything_else_is_left_to_json(
        ack: bytes, seq: int | None) -> None:
    assert _plain_ack_seq(ack) == seq
