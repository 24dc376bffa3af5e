"""Results and checkpoints are write-once artifacts: the server refuses a second write to any of
their subjects, whoever sends it, a host's key writes only under its own host name, and a reader
gets exactly the bytes the info's digest names, or an error."""

from __future__ import annotations

import json
from typing import Any

import nats.js.errors
import pytest
from nats.aio.client import Client

from coordinator.app import Coordinator
from ktrdr.results import get_result, put_result, results_store
from ktrdr.runtime.artifacts import (
    Artifact,
    ArtifactExists,
    ArtifactMissing,
    ArtifactStore,
    purge_artifact,
    purge_op_artifacts,
)
from ktrdr.runtime.objects import CHUNK_BYTES, DigestMismatch, ObjectTooLarge
from ktrdr.runtime.topology import StoreLimits, ensure_topology
from subjects import names, roles
from subjects.limits import MIB
from subjects.models import OpEvent, OpEventKind, OpStatus, SubmitRequest
from tests.coordinator.test_bounded_input import rejected
from tests.subjects.conftest import as_role, attempt  # noqa: F401 - as_role: the fixture
from tests.support import assert_eventually, claim_as, wait_status

LOCAL = roles.LOCAL_HOST


@pytest.fixture
def results(nc: Client) -> ArtifactStore:
    return results_store(nc.jetstream())


async def put(store: ArtifactStore, data: bytes, op_id: str = "op1", attempt: int = 1, **kw: Any) -> Artifact:
    return await store.put(data, host=LOCAL, op_id=op_id, attempt=attempt, **kw)


async def test_an_artifact_of_many_chunks_round_trips_under_a_name_that_says_whose_it_is(
        results: ArtifactStore) -> None:
    blob = bytes(range(256)) * (3 * CHUNK_BYTES // 256 + 7)  # three chunks and a bit
    written = await put(results, blob, description="a result")
    assert written.chunks == 4 and written.size == len(blob)
    assert names.artifact_owner(written.name) == (LOCAL, "op1", 1)
    assert await results.get(written.name) == blob
    again = await put(results, blob)
    assert again.name != written.name  # every write is a new artifact
    assert [a.name for a in await results.list(op_id="op1")] == [written.name, again.name]


async def test_an_empty_artifact_a_missing_one_and_a_size_bound(results: ArtifactStore) -> None:
    empty = await put(results, b"")
    assert await results.get(empty.name) == b""
    assert await results.info(f"{LOCAL}.op1.1.00000000") is None
    with pytest.raises(ArtifactMissing):
        await results.get(f"{LOCAL}.op1.1.00000000")
    big = await put(results, b"x" * 1000)
    with pytest.raises(ObjectTooLarge, match="1000 bytes, more than the 999 accepted"):
        await results.get(big.name, max_bytes=999)


async def test_no_credential_can_write_any_subject_of_an_artifact_twice(results: ArtifactStore, nc: Client) -> None:
    """Not even the coordinator's: the stream keeps one message per subject and refuses a second."""
    written = await put(results, b"the real result")
    js = nc.jetstream()
    forged = Artifact(**{**written.__dict__, "digest": "SHA-256=" + "A" * 43 + "="})
    for subject, payload in ((names.artifact_info(names.RESULTS_ARTIFACTS, written.name), forged.encode()),
                             (names.artifact_chunk(names.RESULTS_ARTIFACTS, written.name, 0), b"forged")):
        with pytest.raises(nats.js.errors.APIError) as refused:
            await js.publish(subject, payload, headers={"Nats-Rollup": "sub"})
        assert refused.value.err_code == 10111  # rollups are not permitted
        with pytest.raises(ArtifactExists):  # and the subject is full
            await results._publish(subject, payload)
    with pytest.raises(nats.js.errors.APIError):  # deleting a message is off for the stream
        await js.delete_msg(names.RESULTS_STREAM, written.first_seq)
    assert await results.get(written.name) == b"the real result"


async def test_chunks_that_do_not_match_the_info_are_refused(results: ArtifactStore, nc: Client) -> None:
    name = names.artifact_name(LOCAL, "op1", 1, "ab" * 8)
    js = nc.jetstream()
    await js.publish(names.artifact_chunk(names.RESULTS_ARTIFACTS, name, 0), b"one chunk")
    info = Artifact(name=name, size=9, chunks=2, digest="SHA-256=x", written_at="")
    await js.publish(names.artifact_info(names.RESULTS_ARTIFACTS, name), info.encode())
    with pytest.raises(DigestMismatch, match="has 1 of its 2 chunks"):
        await results.get(name)
    other = names.artifact_name(LOCAL, "op1", 1, "cd" * 8)
    await js.publish(names.artifact_chunk(names.RESULTS_ARTIFACTS, other, 0), b"not this")
    await js.publish(names.artifact_info(names.RESULTS_ARTIFACTS, other),
                     Artifact(name=other, size=8, chunks=1, digest="SHA-256=x", written_at="").encode())
    with pytest.raises(DigestMismatch, match="does not match its digest"):
        await results.get(other)


async def test_a_host_writes_artifacts_under_its_own_name_only(as_role) -> None:  # noqa: F811
    worker, denials = await as_role(roles.WORKER)
    mine = await put_result(worker.jetstream(), b"{}", host=LOCAL, op_id="op1", attempt=1)
    assert names.artifact_owner(mine.name)[0] == LOCAL
    theirs = names.artifact_name(roles.LOCAL_IB_HOST, "op1", 1, "ab" * 8)
    for store in names.ARTIFACT_STREAMS:
        for subject in (names.artifact_chunk(store, theirs, 0), names.artifact_info(store, theirs)):
            await attempt(worker.jetstream(timeout=0.5).publish(subject, b"squatted"))
            await denials.expect("publish", subject)
    assert await results_store(worker.jetstream()).info(theirs) is None


async def test_a_full_store_refuses_new_artifacts_and_keeps_what_it_holds(nc: Client) -> None:
    js = nc.jetstream()
    await ensure_topology(js, lease_ttl_s=5.0, store_limits=StoreLimits(results=1 * MIB))
    results = results_store(js)
    kept = await put(results, bytes(600 * 1024))
    with pytest.raises(nats.js.errors.Error):  # a worker flooding the store gets an error, not an eviction
        await put(results, bytes(600 * 1024), op_id="op2")
    assert await results.get(kept.name) == bytes(600 * 1024)


async def test_the_coordinator_purges_one_artifact_or_every_one_of_an_op(results: ArtifactStore,
                                                                        nc: Client) -> None:
    first, second = await put(results, b"1"), await put(results, b"2" * (CHUNK_BYTES + 1))
    other = await put(results, b"3", op_id="op2")
    await purge_artifact(nc.jetstream(), names.RESULTS_ARTIFACTS, first.name)
    assert [a.name for a in await results.list(op_id="op1")] == [second.name]
    await purge_op_artifacts(nc.jetstream(), names.RESULTS_ARTIFACTS, "op1")
    assert await results.list(op_id="op1") == []
    state = await nc.jetstream().stream_info(names.RESULTS_STREAM)
    assert state.state.messages == 2  # op2's chunk and info, nothing of op1's
    assert await results.get(other.name) == b"3"


async def test_an_outcome_naming_another_hosts_or_another_ops_artifact_is_refused(
        coordinator: Coordinator, nc: Client) -> None:
    """The op record names only an artifact its claimant's host wrote for that op and attempt."""
    js = nc.jetstream()
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    foreign = await put_result(js, b'{"forged": true}', host=roles.LOCAL_IB_HOST, op_id=op.op_id, attempt=1)
    elsewhere = await put_result(js, b'{"forged": true}', host=LOCAL, op_id="another-op", attempt=1)
    await claim_as(nc, op.op_id, 1, "w1")
    for name in (foreign.name, elsewhere.name, "not-an-artifact"):
        event = OpEvent(op_id=op.op_id, event=OpEventKind.COMPLETED, worker_id="w1", attempt=1, result_object=name)
        await js.publish(names.ops_events(op.op_id, LOCAL), event.encode())
    await assert_eventually(lambda: rejected(coordinator.metrics, "foreign artifact") == 3)
    assert coordinator.ops.get(op.op_id).status is OpStatus.PENDING  # type: ignore[union-attr]

    own = await put_result(js, json.dumps({"ok": 1}).encode(), host=LOCAL, op_id=op.op_id, attempt=1)
    event = OpEvent(op_id=op.op_id, event=OpEventKind.COMPLETED, worker_id="w1", attempt=1, result_object=own.name)
    await js.publish(names.ops_events(op.op_id, LOCAL), event.encode())
    done = await wait_status(coordinator, op.op_id, OpStatus.COMPLETED)
    assert done.result_object == own.name and await get_result(js, done) == b'{"ok": 1}'


async def test_a_replaced_checkpoint_is_deleted_and_a_completed_op_keeps_none(
        coordinator: Coordinator, nc: Client) -> None:
    """(That a retry resumes from the checkpoint its predecessor reported: tests/worker_training.)"""
    js = nc.jetstream()
    checkpoints = ArtifactStore(js=js, store=names.CHECKPOINTS_ARTIFACTS)
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    await claim_as(nc, op.op_id, 1, "w1")
    written = [await checkpoints.put(f"epoch {i}".encode(), host=LOCAL, op_id=op.op_id, attempt=1) for i in (1, 2)]
    for artifact in written:
        event = OpEvent(op_id=op.op_id, event=OpEventKind.INFO, worker_id="w1", attempt=1, checkpoint=artifact.name)
        await js.publish(names.ops_events(op.op_id, LOCAL), event.encode())
    await assert_eventually(lambda: coordinator.ops.get(op.op_id).checkpoint == written[1].name)  # type: ignore[union-attr]

    async def stored() -> list[str]:
        return [a.name for a in await checkpoints.list(op_id=op.op_id)]

    await assert_eventually(lambda: _equals(stored(), [written[1].name]), message="the replaced one is still stored")
    event = OpEvent(op_id=op.op_id, event=OpEventKind.COMPLETED, worker_id="w1", attempt=1)
    await js.publish(names.ops_events(op.op_id, LOCAL), event.encode())
    await wait_status(coordinator, op.op_id, OpStatus.COMPLETED)
    await assert_eventually(lambda: _equals(stored(), []), message="a completed op's checkpoint is still stored")


async def _equals(got: Any, wanted: list[str]) -> bool:
    return await got == wanted
