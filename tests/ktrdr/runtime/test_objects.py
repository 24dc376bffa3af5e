"""Object stores read with direct gets and written with plain publishes: the layout nats-py and the
``nats`` CLI read, without the consumers and purges no role but the coordinator may use."""

from __future__ import annotations

import json

import nats.js.errors
import pytest
from nats.aio.client import Client
from nats.js.errors import BucketNotFoundError, ObjectNotFoundError

from ktrdr.runtime import direct
from ktrdr.runtime.objects import CHUNK_BYTES, DigestMismatch, ObjectBucket, ObjectTooLarge, collect_orphans
from ktrdr.runtime.topology import StoreLimits, ensure_topology
from subjects import names
from subjects.limits import MIB


@pytest.fixture
def results(nc: Client) -> ObjectBucket:
    """Any object store will do; ``data`` is one every role reads."""
    return ObjectBucket(js=nc.jetstream(), bucket=names.DATA_OBJECTS)


async def test_an_object_of_many_chunks_round_trips_and_nats_py_reads_it_too(results: ObjectBucket,
                                                                            nc: Client) -> None:
    blob = bytes(range(256)) * (3 * CHUNK_BYTES // 256 + 7)  # three chunks and a bit
    info = await results.put("op1", blob, description="a result")
    assert info.chunks == 4 and info.size == len(blob)
    assert await results.get("op1") == blob
    theirs = await (await nc.jetstream().object_store(names.DATA_OBJECTS)).get("op1")
    assert theirs.data == blob and theirs.info.description == "a result"


async def test_an_empty_object_and_a_missing_one(results: ObjectBucket) -> None:
    await results.put("empty", b"")
    assert await results.get("empty") == b""
    assert await results.info("nothing") is None
    with pytest.raises(ObjectNotFoundError):
        await results.get("nothing")


async def test_a_size_bound_refuses_before_reading_a_chunk(results: ObjectBucket) -> None:
    await results.put("big", b"x" * 1000)
    with pytest.raises(ObjectTooLarge, match="1000 bytes, more than the 999 accepted"):
        await results.get("big", max_bytes=999)


async def test_chunks_that_do_not_match_the_info_are_refused(results: ObjectBucket, nc: Client) -> None:
    info = await results.put("op1", b"the real result")
    forged = {**info.as_dict(), "digest": "SHA-256=" + "A" * 43 + "="}
    await nc.jetstream().publish(results.meta_subject("op1"), json.dumps(forged).encode(),
                                 headers={"Nats-Rollup": "sub"})
    with pytest.raises(DigestMismatch, match="does not match its digest"):
        await results.get("op1")


async def test_a_listing_pages_past_a_thousand_objects_and_skips_deleted_ones(results: ObjectBucket) -> None:
    for i in range(1100):
        await results.put(f"op{i}", b"r")
    await results.delete("op7")
    listed = [info.name for info in await results.list()]
    assert len(listed) == 1099 and "op7" not in listed and listed[0] == "op0"
    assert "op7" in [info.name for info in await results.list(include_deleted=True)]


async def test_a_store_that_does_not_exist_is_named_as_such(nc: Client) -> None:
    with pytest.raises(BucketNotFoundError):
        await ObjectBucket(js=nc.jetstream(), bucket="nosuch").info("x")
    with pytest.raises(direct.NoStream):
        await direct.batch(nc, "OBJ_nosuch", {"seq": 1, "batch": 1})


async def test_replaced_chunks_are_purged_on_the_second_sweep_and_the_object_still_reads(
        results: ObjectBucket, nc: Client) -> None:
    js = nc.jetstream()
    old = await results.put("op1", b"first" * 1000)
    await results.put("op1", b"second" * 1000)
    gone = await results.put("op2", b"deleted")
    await results.delete("op2")
    chunks = f"$O.{names.DATA_OBJECTS}.C."
    suspects = await collect_orphans(js, names.DATA_OBJECTS, suspects=set())
    assert suspects == {old.nuid, gone.nuid}  # an upload under way looks the same: not purged yet
    assert await collect_orphans(js, names.DATA_OBJECTS, suspects=suspects) == set()
    left = (await js.stream_info("OBJ_data", subjects_filter=f"{chunks}>")).state.subjects or {}
    assert {s.removeprefix(chunks) for s in left} == {(await results.info("op1")).nuid}  # type: ignore[union-attr]
    assert await results.get("op1") == b"second" * 1000


async def test_a_full_store_refuses_new_writes_and_keeps_what_it_holds(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_topology(js, lease_ttl_s=5.0, store_limits=StoreLimits(data=1 * MIB))
    results = ObjectBucket(js=js, bucket=names.DATA_OBJECTS)
    kept = await results.put("op1", bytes(600 * 1024))
    with pytest.raises(nats.js.errors.Error):  # what a worker flooding the store gets: an error, not an eviction
        await results.put("op2", bytes(600 * 1024))
    assert await results.get("op1") == bytes(600 * 1024)
    assert (await results.info("op1")).nuid == kept.nuid  # type: ignore[union-attr]
    assert await results.info("op2") is None
