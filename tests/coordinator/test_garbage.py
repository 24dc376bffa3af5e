"""What a stolen host key writes to fill a store is deleted: artifacts no op record names or will
name, two sweeps in a row, and at once when a store is past half full. What a record names, or an
attempt still running may name, stays."""

from __future__ import annotations

from nats.aio.client import Client

from coordinator.app import Coordinator
from coordinator.garbage import StoreSweep
from ktrdr.results import get_result, put_result, results_store
from ktrdr.runtime.artifacts import Artifact
from ktrdr.runtime.topology import StoreLimits, ensure_topology
from subjects import names, roles
from subjects.limits import MIB
from subjects.models import OpEvent, OpEventKind, OpStatus, SubmitRequest
from tests.conftest import MakeWorker
from tests.subjects.conftest import as_role  # noqa: F401 - the fixture
from tests.support import assert_eventually, claim_as, wait_status

LOCAL, OTHER = roles.LOCAL_HOST, roles.LOCAL_IB_HOST


def sweeper(coordinator: Coordinator, **kw: float) -> StoreSweep:
    return StoreSweep(js=coordinator.js, ops=coordinator.ops, metrics=coordinator.metrics,
                      claimant=coordinator.claims.holder, host_of=coordinator.registry.host_of,
                      **{"every_s": 3600.0, **kw})


async def stored(nc: Client) -> set[str]:
    return {a.name for a in await results_store(nc.jetstream()).list()}


async def chunks_only(nc: Client, host: str, op_id: str) -> str:
    """An upload under way, or one that never finished: chunks, no info."""
    name = names.artifact_name(host, op_id, 1, "ab" * 8)
    await nc.jetstream().publish(names.artifact_chunk(names.RESULTS_ARTIFACTS, name, 0), b"partial")
    return name


async def test_junk_goes_on_the_second_sweep_and_what_records_name_or_may_name_stays(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client) -> None:
    js = nc.jetstream()
    # An op completed with its claimant's result, and a second result of the same attempt nobody named.
    done = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    await claim_as(nc, done.op_id, 1, "w-gone")
    named = await put_result(js, b'{"ok": 1}', host=LOCAL, op_id=done.op_id, attempt=1)
    unnamed = await put_result(js, b"junk", host=LOCAL, op_id=done.op_id, attempt=1)
    await js.publish(names.ops_events(done.op_id, LOCAL), OpEvent(
        op_id=done.op_id, event=OpEventKind.COMPLETED, worker_id="w-gone", attempt=1,
        result_object=named.name).encode())
    await wait_status(coordinator, done.op_id, OpStatus.COMPLETED)
    # An op running on a worker of host `local`: its own host's result may still be named; another's never.
    await make_worker("w1")
    running = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 60}))
    await wait_status(coordinator, running.op_id, OpStatus.RUNNING)
    mine = await put_result(js, b"in progress", host=LOCAL, op_id=running.op_id, attempt=1)
    uploading = await chunks_only(nc, LOCAL, running.op_id)
    squatted = await put_result(js, b"junk", host=OTHER, op_id=running.op_id, attempt=1)
    old_attempt = await put_result(js, b"junk", host=LOCAL, op_id=running.op_id, attempt=7)
    nobodys = await put_result(js, b"junk", host=LOCAL, op_id="no-such-op", attempt=1)
    abandoned = await chunks_only(nc, LOCAL, "no-such-op-either")

    sweep = sweeper(coordinator)
    assert await sweep.sweep(names.RESULTS_ARTIFACTS) == 0  # the first sweep only suspects
    assert await sweep.sweep(names.RESULTS_ARTIFACTS) == 5
    assert await stored(nc) == {named.name, mine.name}
    subjects = (await js.stream_info(names.RESULTS_STREAM, subjects_filter="results.c.>")).state.subjects or {}
    assert {s.rpartition(".")[0].removeprefix("results.c.") for s in subjects} == {named.name, mine.name, uploading}
    for gone in (unnamed, squatted, old_attempt, nobodys):
        assert await results_store(js).info(gone.name) is None
    assert abandoned not in subjects
    assert await get_result(js, coordinator.ops.get(done.op_id)) == b'{"ok": 1}'  # type: ignore[arg-type]


async def test_a_store_past_half_full_is_swept_without_waiting_for_retention(
        coordinator: Coordinator, nc: Client) -> None:
    js = nc.jetstream()
    await ensure_topology(js, lease_ttl_s=5.0, store_limits=StoreLimits(results=1 * MIB))
    junk: list[Artifact] = [await put_result(js, bytes(200 * 1024), host=LOCAL, op_id=f"junk{i}", attempt=1)
                            for i in range(3)]
    sweep = sweeper(coordinator, check_s=0.05, min_gap_s=0.2)
    await sweep.start()
    try:
        async def emptied() -> bool:
            return not (await stored(nc)) & {a.name for a in junk}

        await assert_eventually(emptied, timeout=15, message="a store past half full was not swept")
        # Counted once the sweep has deleted them all (the deletions themselves show first).
        swept = coordinator.metrics.swept.labels(store=names.RESULTS_ARTIFACTS)
        await assert_eventually(lambda: swept._value.get() == 3, message="the sweep's deletions were not counted")
        # And the room is there again for a real result.
        await put_result(js, bytes(600 * 1024), host=LOCAL, op_id="real", attempt=1)
    finally:
        await sweep.stop()


async def test_subjects_that_name_no_artifact_are_swept_too_and_the_sweep_goes_on(
        coordinator: Coordinator, as_role) -> None:  # noqa: F811
    """What a host key can publish under its own name without being an artifact of ours."""
    worker, denials = await as_role(roles.WORKER)
    js = worker.jetstream()
    for subject in (f"results.m.{LOCAL}.junk", f"results.c.{LOCAL}.junk.0", f"results.c.{LOCAL}.a.b"):
        await js.publish(subject, b"junk")
    orphan = await put_result(coordinator.js, b"{}", host=LOCAL, op_id="no-such-op", attempt=1)
    sweep = sweeper(coordinator)
    assert await sweep.sweep(names.RESULTS_ARTIFACTS) == 0
    assert await sweep.sweep(names.RESULTS_ARTIFACTS) == 4  # the three subjects and the unknown op's result
    state = await coordinator.js.stream_info(names.RESULTS_STREAM)
    assert state.state.messages == 0 and denials.seen == []
    assert await results_store(coordinator.js).info(orphan.name) is None
