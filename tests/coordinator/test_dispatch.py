"""Routing: one owner per op, GPU first, CPU after a timeout or at once without a GPU worker."""

from __future__ import annotations

import asyncio
import contextlib

import nats.errors
from nats.aio.client import Client

from coordinator.app import Coordinator
from coordinator.dispatcher import UNCLAIMED_REOFFERS
from ktrdr.runtime.context import JobContext
from ktrdr.runtime.topology import JOB_MAX_DELIVER
from ktrdr.runtime.worker import STARTED_DELAY_S
from subjects import names
from subjects.models import Claim, JobMessage, OpEvent, OpStatus, SubmitRequest, decode
from tests.backtesting import backtest_params
from tests.conftest import MakeWorker
from tests.support import assert_eventually, wait_status


async def submit(coordinator: Coordinator, op_type: str = "dummy", **params: object) -> str:
    op = await coordinator.dispatcher.submit(SubmitRequest(type=op_type, params=params))
    return op.op_id


async def submit_training(coordinator: Coordinator) -> str:
    """A training op as far as routing goes; the workers below run a stand-in, not the trainer."""
    return await submit(coordinator, "training", strategy="neuro_mean_reversion")


def ran_on(ctx, params):  # type: ignore[no-untyped-def]
    return {"ran_on": ctx.worker_id}


TRAINING_STANDIN = {"training": ran_on}


async def runs_of(nc: Client, op_id: str) -> list[OpEvent]:
    """The outcome events stored for ``op_id``: one per run of it (an op that ends within the started
    event's delay has no started event, so the outcomes are what counts runs)."""
    js = nc.jetstream()
    sub = await js.subscribe(names.ops_events(op_id, names.ANY_HOST), ordered_consumer=True)
    events: list[OpEvent] = []
    try:
        while True:
            msg = await sub.next_msg(timeout=0.5)
            event = decode(OpEvent, msg.data)
            if event.event in ("completed", "failed", "cancelled"):
                events.append(event)
    except Exception:
        pass
    await sub.unsubscribe()
    return events


async def test_dummy_op_completes_with_progress_and_result(coordinator: Coordinator, make_worker: MakeWorker) -> None:
    await make_worker("w1")
    op_id = await submit(coordinator, duration=0.6, steps=3)
    op = await wait_status(coordinator, op_id, OpStatus.COMPLETED)
    assert op.worker_id == "w1" and op.attempt == 1
    assert op.result == {"steps": 3, "duration": 0.6}
    assert op.progress is not None and op.progress.steps_done == 3
    assert op.started_at is not None and op.completed_at is not None and op.completed_at >= op.started_at


async def events_of(nc: Client, op_id: str, *, count: int) -> list[str]:
    """The kinds of the first ``count`` events OPS stores for ``op_id``, in its order."""
    sub = await nc.jetstream().subscribe(names.ops_events(op_id, names.ANY_HOST), ordered_consumer=True)
    try:
        return [decode(OpEvent, (await sub.next_msg(timeout=5)).data).event.value for _ in range(count)]
    finally:
        await sub.unsubscribe()


async def test_an_op_done_within_the_started_delay_is_recorded_by_its_outcome_alone(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client) -> None:
    await make_worker("w1")
    quick = await submit(coordinator, duration=0, steps=1)
    op = await wait_status(coordinator, quick, OpStatus.COMPLETED)
    assert op.worker_id == "w1" and op.started_at is not None and op.attempts[-1].worker_id == "w1"
    assert await events_of(nc, quick, count=1) == ["completed"]
    # One that runs longer is seen running first: its started event precedes its progress.
    slow = await submit(coordinator, duration=STARTED_DELAY_S * 6, steps=2)
    assert (await wait_status(coordinator, slow, OpStatus.RUNNING)).worker_id == "w1"
    await wait_status(coordinator, slow, OpStatus.COMPLETED)
    assert await events_of(nc, slow, count=2) == ["started", "completed"]


async def test_failing_op_ends_failed_with_its_error(coordinator: Coordinator, make_worker: MakeWorker) -> None:
    await make_worker("w1")
    op_id = await submit(coordinator, duration=0, steps=1, fail="boom at the end")
    op = await wait_status(coordinator, op_id, OpStatus.FAILED)
    assert "boom at the end" in (op.error or "")


async def test_training_goes_to_the_gpu_when_a_gpu_worker_holds_a_lease(
        coordinator: Coordinator, make_worker: MakeWorker) -> None:
    await make_worker("cpu1", capabilities=[names.CAP_TRAINING_CPU], handlers=TRAINING_STANDIN)
    await make_worker("gpu1", capabilities=[names.CAP_TRAINING_GPU], gpu=True, handlers=TRAINING_STANDIN)
    await assert_eventually(lambda: len(coordinator.registry.workers) == 2)
    op_id = await submit_training(coordinator)
    op = await wait_status(coordinator, op_id, OpStatus.COMPLETED)
    assert op.worker_id == "gpu1"
    assert op.route == "gpu" and op.offered == [names.CAP_TRAINING_GPU]


async def test_training_goes_straight_to_cpu_without_a_gpu_worker(
        coordinator: Coordinator, make_worker: MakeWorker) -> None:
    await make_worker("cpu1", capabilities=[names.CAP_TRAINING_CPU], handlers=TRAINING_STANDIN)
    await assert_eventually(lambda: "cpu1" in coordinator.registry.workers)
    op_id = await submit_training(coordinator)
    op = await wait_status(coordinator, op_id, OpStatus.COMPLETED)
    assert op.worker_id == "cpu1"
    assert op.route_reason == "cpu: no gpu worker"


async def test_training_falls_back_to_cpu_after_the_gpu_timeout_and_runs_once(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client) -> None:
    await make_worker("gpu1", capabilities=[names.CAP_TRAINING_GPU, names.CAP_DUMMY_ANY], gpu=True,
                      handlers=TRAINING_STANDIN)
    await make_worker("cpu1", capabilities=[names.CAP_TRAINING_CPU], handlers=TRAINING_STANDIN)
    await assert_eventually(lambda: len(coordinator.registry.workers) == 2)
    # Keep the only GPU busy (its one slot) so that nobody claims the GPU offer within the timeout.
    busy = await submit(coordinator, duration=3, steps=3)
    await wait_status(coordinator, busy, OpStatus.RUNNING)
    op_id = await submit_training(coordinator)
    op = await wait_status(coordinator, op_id, OpStatus.COMPLETED)
    assert op.worker_id == "cpu1"
    assert op.route_reason == "cpu: gpu timeout after 1 s"
    assert op.offered == [names.CAP_TRAINING_GPU, names.CAP_TRAINING_CPU]
    # When the GPU frees up it fetches the stale GPU offer, loses the claim and drops it.
    await wait_status(coordinator, busy, OpStatus.COMPLETED)
    js = nc.jetstream()

    async def gpu_queue_empty() -> bool:
        info = await js.consumer_info(names.JOBS_STREAM, names.jobs_consumer(names.CAP_TRAINING_GPU))
        return info.num_pending == 0 and info.num_ack_pending == 0
    await assert_eventually(gpu_queue_empty)
    assert [e.worker_id for e in await runs_of(nc, op_id)] == ["cpu1"]


async def test_two_workers_racing_for_one_op_only_one_runs_it(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client) -> None:
    op_id = await submit(coordinator, duration=0.3, steps=1)
    # A second copy of the same offer (as after a GPU->CPU fallback): both workers get one.
    op = coordinator.ops.get(op_id)
    assert op is not None
    job = JobMessage(op_id=op_id, type="dummy", params=op.params, attempt=1, capability=names.CAP_DUMMY_ANY)
    await nc.jetstream().publish(names.jobs_subject(names.CAP_DUMMY_ANY), job.encode(),
                                 headers={"Nats-Msg-Id": "duplicate-offer"})
    await asyncio.gather(make_worker("w1"), make_worker("w2"))
    await wait_status(coordinator, op_id, OpStatus.COMPLETED)
    await assert_eventually(lambda: _stream_empty(nc), message="the losing copy was not acked")
    assert len(await runs_of(nc, op_id)) == 1


async def _stream_empty(nc: Client) -> bool:
    return (await nc.jetstream().stream_info(names.JOBS_STREAM)).state.messages == 0


async def test_worker_never_fetches_beyond_its_slots(coordinator: Coordinator, make_worker: MakeWorker,
                                                     nc: Client) -> None:
    worker = await make_worker("w1", slots=1)
    ids = [await submit(coordinator, duration=0.4, steps=1) for _ in range(3)]
    js = nc.jetstream()
    peak = 0
    while not all(coordinator.ops.get(i).status is OpStatus.COMPLETED for i in ids):  # type: ignore[union-attr]
        info = await js.consumer_info(names.JOBS_STREAM, names.jobs_consumer(names.CAP_DUMMY_ANY))
        peak = max(peak, info.num_ack_pending, len(worker.lease().running))
        await asyncio.sleep(0.02)
    assert peak == 1


async def test_a_handler_can_record_facts_in_the_op_record(coordinator: Coordinator, make_worker: MakeWorker) -> None:
    def noting(ctx, params):  # type: ignore[no-untyped-def]
        ctx.info(resumed_from_epoch=7)
        return {"ok": True}

    await make_worker("w1", handlers={"dummy": noting})
    op_id = await submit(coordinator, duration=0)
    op = await wait_status(coordinator, op_id, OpStatus.COMPLETED)
    assert op.info == {"resumed_from_epoch": 7} and op.result == {"ok": True}


async def _hand_back(nc: Client, capability: str, times: int) -> None:
    """Play a busy multi-capability worker: take the offer and give it back, ``times`` times."""
    sub = await nc.jetstream().pull_subscribe_bind(names.jobs_consumer(capability), names.JOBS_STREAM)
    handed, misses = 0, 0
    while handed < times:
        try:
            msgs = await sub.fetch(1, timeout=2)
        except nats.errors.TimeoutError:
            misses += 1
            assert misses < 5, f"no offer to take after {handed} hand-backs"
            continue
        await msgs[0].nak()
        handed += 1
    # The server notices MaxDeliver (and sends its advisory) only when someone asks for more.
    with contextlib.suppress(nats.errors.TimeoutError):
        for msg in await sub.fetch(1, timeout=1):
            await msg.nak()
    await sub.unsubscribe()


async def test_an_offer_handed_back_until_max_deliver_is_renewed_not_failed(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client) -> None:
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    await _hand_back(nc, names.CAP_DUMMY_ANY, JOB_MAX_DELIVER)
    await assert_eventually(lambda: [a.reoffers for a in coordinator.ops.get(op.op_id).attempts] == [1])  # type: ignore[union-attr]
    assert coordinator.ops.get(op.op_id).status is OpStatus.PENDING  # type: ignore[union-attr]
    # The renewed offer was handed back once more by the last fetch: no matter, it counts afresh.
    await make_worker("w1")
    done = await wait_status(coordinator, op.op_id, OpStatus.COMPLETED)
    assert done.attempt == 1 and done.attempts[0].reoffers == 1
    assert any("renewed" in w for w in done.warnings)


async def test_an_offer_nobody_ever_claims_fails_once_its_renewals_are_used_up(
        coordinator: Coordinator, nc: Client) -> None:
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    await _hand_back(nc, names.CAP_DUMMY_ANY, JOB_MAX_DELIVER * (UNCLAIMED_REOFFERS + 1))
    failed = await wait_status(coordinator, op.op_id, OpStatus.FAILED)
    assert "could not be delivered" in (failed.error or "")
    assert failed.attempts[0].reoffers == UNCLAIMED_REOFFERS


async def test_a_claimed_job_that_reaches_max_deliver_fails_at_once(coordinator: Coordinator, nc: Client) -> None:
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    claims = await nc.jetstream().key_value(names.CLAIMS_BUCKET)
    await claims.create(names.claim_key(op.op_id, 1), Claim(op_id=op.op_id, attempt=1, worker_id="gone").encode())
    await _hand_back(nc, names.CAP_DUMMY_ANY, JOB_MAX_DELIVER)
    failed = await wait_status(coordinator, op.op_id, OpStatus.FAILED)
    assert "could not be delivered" in (failed.error or "") and not failed.attempts


async def test_a_worker_serving_two_capabilities_takes_the_oldest_first_without_using_up_deliveries(
        coordinator: Coordinator, make_worker: MakeWorker) -> None:
    # With one slot and a backlog on both capabilities, the oldest job starts first whichever
    # queue holds it; the newer job handed back must not be delivered again for every job ahead
    # of it, or its deliveries would run out (MaxDeliver 10) behind the other capability's backlog.
    started: list[str] = []

    async def record(ctx: JobContext, params: object) -> dict[str, object]:
        started.append(ctx.job.type)
        await asyncio.sleep(0.02)
        return {}

    each = JOB_MAX_DELIVER + 2  # a backlog long enough to use up a starved job's deliveries
    ids = [await submit(coordinator, "backtesting", **backtest_params()) for _ in range(each)]
    ids += [await submit(coordinator, duration=0) for _ in range(each)]
    await make_worker("w1", capabilities=[names.CAP_DUMMY_ANY, names.CAP_BACKTEST_CPU], slots=1,
                      handlers={"dummy": record, "backtesting": record})
    done = [await wait_status(coordinator, op_id, OpStatus.COMPLETED, timeout=30) for op_id in ids]
    # Submitted backtests first, then dummies: started in that order, none reoffered.
    assert started == ["backtesting"] * each + ["dummy"] * each, started
    assert [op.op_id for op in done if op.warnings or op.attempts[0].reoffers] == [], started
