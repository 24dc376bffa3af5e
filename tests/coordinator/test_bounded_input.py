"""Bounded input, and an outcome can always be recorded: nothing too large gets in at the door, every
free text is cut before it is sent or stored, and the coordinator's feed never stops acknowledging."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg

from coordinator.app import Coordinator
from coordinator.feed import OpsFeed
from coordinator.metrics import Metrics
from ktrdr.runtime.context import JobContext
from ktrdr.strategy.loader import MAX_STRATEGY_DEPTH
from subjects import limits, names
from subjects.models import CancelReply, OpEvent, OpEventKind, OpStatus, SubmitRequest, decode
from tests.conftest import MakeWorker
from tests.support import assert_eventually, auth_headers, claim_as, wait_status


def rejected(metrics: Metrics, reason: str) -> float:
    return sum(s.value for m in metrics.rejected.collect() for s in m.samples
               if s.name.endswith("_total") and s.labels.get("reason") == reason)


async def acked_through(nc: Client, seq: int) -> bool:
    info = await nc.jetstream().consumer_info(names.OPS_STREAM, names.COORDINATOR_CONSUMER)
    return info.ack_floor.stream_seq >= seq and info.num_ack_pending == 0


async def publish_event(nc: Client, op_id: str, kind: OpEventKind, worker_id: str = "w-gone", **fields: Any) -> int:
    event = OpEvent(op_id=op_id, event=kind, worker_id=worker_id, attempt=1, **fields)
    await claim_as(nc, op_id, 1, worker_id)
    return (await nc.jetstream().publish(names.ops_events(op_id, "local"), event.encode())).seq


async def test_params_over_the_limit_are_refused_at_the_door_and_reach_no_worker(
        coordinator: Coordinator, nc: Client) -> None:
    huge = SubmitRequest(type="dummy", params={"duration": 0, "fail": "x" * 600_000}).encode()
    reply = await nc.request(f"{names.SERVICE_GROUP}.{names.SERVICE_SUBMIT}", huge, timeout=5)
    assert reply.headers and reply.headers["Nats-Service-Error-Code"] == "422"
    assert "params.fail" in reply.headers["Nats-Service-Error"] and "too large" in reply.headers["Nats-Service-Error"]

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{coordinator.api_port}",
                                 headers=auth_headers(coordinator)) as api:
        response = await api.post("/api/v1/operations", content=huge, headers={"content-type": "application/json"})
        assert response.status_code in (413, 422)  # the body cap or admission: refused at the door either way
        response = await api.post("/api/v1/operations", json={"type": "dummy", "params": {"fail": "x" * 70_000}})
        assert response.status_code == 422
        assert response.json()["detail"][0]["field"] == "params.fail"
        many = {f"p{i}": "y" * 1_000 for i in range(200)}  # no string too long, too much in all
        response = await api.post("/api/v1/operations", json={"type": "backtesting", "params": many})
        assert response.status_code == 422 and "params: too large" in response.json()["error"]

    assert list(coordinator.ops.all()) == []
    jobs = await nc.jetstream().stream_info(names.JOBS_STREAM)
    assert jobs.state.messages == 0
    assert rejected(coordinator.metrics, "too large") >= 1


async def test_a_failed_event_with_a_900_kb_error_ends_the_op_failed_with_a_truncated_error(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client) -> None:
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    seq = await publish_event(nc, op.op_id, OpEventKind.FAILED, error="E" * 900_000)

    failed = await wait_status(coordinator, op.op_id, OpStatus.FAILED)
    assert failed.error is not None and len(failed.error) <= limits.MAX_ERROR_CHARS
    assert failed.error.startswith("EEEE") and failed.error.endswith("[truncated, 900000 bytes in all]")
    assert rejected(coordinator.metrics, "truncated") >= 1
    await assert_eventually(lambda: acked_through(nc, seq), message="the OPS consumer stopped acknowledging")
    # And later ops still complete.
    await make_worker("w1")
    later = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    await wait_status(coordinator, later.op_id, OpStatus.COMPLETED)


async def test_a_handler_error_of_megabytes_is_cut_by_the_worker_and_the_op_ends_failed(
        coordinator: Coordinator, make_worker: MakeWorker) -> None:
    async def explode(ctx: JobContext, params: Any) -> dict[str, Any]:
        raise RuntimeError("boom " * 400_000)

    await make_worker("w1", handlers={"dummy": explode})
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    failed = await wait_status(coordinator, op.op_id, OpStatus.FAILED)
    assert failed.error is not None and len(failed.error) <= limits.MAX_ERROR_CHARS
    assert failed.error.startswith("RuntimeError: boom boom")
    assert failed.error.endswith(f"[truncated, {len('RuntimeError: ') + 5 * 400_000} bytes in all]")


async def test_a_result_too_large_for_an_event_fails_the_op_and_says_where_results_belong(
        coordinator: Coordinator, make_worker: MakeWorker) -> None:
    async def hoard(ctx: JobContext, params: Any) -> dict[str, Any]:
        return {"trades": ["t" * 100 for _ in range(6_000)]}  # about 600 KB

    await make_worker("w1", handlers={"dummy": hoard})
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    failed = await wait_status(coordinator, op.op_id, OpStatus.FAILED)
    assert failed.result is None
    # The worker's own words: it never sent the result, so the event fit.
    assert failed.error is not None and "ktrdr.results.put_result" in failed.error and "bytes" in failed.error


async def test_an_inline_result_too_large_for_a_record_fails_the_op_at_the_coordinator_too(
        coordinator: Coordinator, nc: Client) -> None:
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    await publish_event(nc, op.op_id, OpEventKind.COMPLETED, result={"trades": "t" * 600_000})
    failed = await wait_status(coordinator, op.op_id, OpStatus.FAILED)
    assert failed.result is None and failed.error is not None and "results store" in failed.error


async def test_a_cancel_reason_of_a_megabyte_is_truncated_and_the_op_ends_cancelled(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client) -> None:
    await make_worker("w1")
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 60, "steps": 600}))
    await wait_status(coordinator, op.op_id, OpStatus.RUNNING)
    body = json.dumps({"reason": "r" * 1_000_000}).encode()  # fits a request, not an event
    assert len(body) < limits.NATS_MAX_PAYLOAD

    reply = decode(CancelReply, (await nc.request(names.ops_cancel(op.op_id), body, timeout=5)).data)
    assert reply.accepted
    cancelled = await wait_status(coordinator, op.op_id, OpStatus.CANCELLED, timeout=5)
    assert cancelled.cancel_reason is not None and len(cancelled.cancel_reason) <= limits.MAX_REASON_CHARS
    assert cancelled.cancel_reason.endswith("[truncated, 1000000 bytes in all]")
    assert rejected(coordinator.metrics, "truncated") >= 1
    again = decode(CancelReply, (await nc.request(names.ops_cancel(op.op_id), body, timeout=5)).data)
    assert not again.accepted and again.status is OpStatus.CANCELLED


async def test_info_piling_up_past_the_record_limit_is_dropped_and_the_op_still_completes(
        coordinator: Coordinator, nc: Client) -> None:
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    # Each under the limit of one info event; together more than a record, or any message, holds.
    for i in range(18):
        await publish_event(nc, op.op_id, OpEventKind.INFO, context={f"fact_{i}": "i" * 60_000})
    seq = await publish_event(nc, op.op_id, OpEventKind.COMPLETED, result={"steps": 1})

    done = await wait_status(coordinator, op.op_id, OpStatus.COMPLETED)
    assert done.result == {"steps": 1}
    assert len(done.encode()) <= limits.MAX_RECORD_BYTES
    assert any("dropped info" in w for w in done.warnings), done.warnings
    await assert_eventually(lambda: acked_through(nc, seq), message="the OPS consumer stopped acknowledging")
    assert rejected(coordinator.metrics, "too large") >= 1


async def test_a_record_the_server_refuses_as_too_large_is_fitted_instead_of_retried_forever(
        coordinator: Coordinator, nc: Client) -> None:
    # A bucket with a smaller message limit than the coordinator knows of (an operator's setting).
    js = nc.jetstream()
    bucket = await js.stream_info(names.kv_stream(names.OPS_BUCKET))
    await js.update_stream(bucket.config.evolve(max_msg_size=64 * 1024))
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    for i in range(3):
        await publish_event(nc, op.op_id, OpEventKind.INFO, context={f"fact_{i}": "i" * 40_000})
    seq = await publish_event(nc, op.op_id, OpEventKind.COMPLETED, result={"steps": 1})

    done = await wait_status(coordinator, op.op_id, OpStatus.COMPLETED)
    assert done.result == {"steps": 1} and len(done.encode()) <= 64 * 1024
    assert any("dropped info" in w for w in done.warnings), done.warnings
    await assert_eventually(lambda: acked_through(nc, seq), message="the OPS consumer stopped acknowledging")


async def test_a_poison_message_is_counted_and_acknowledged_and_the_feed_moves_on(nc: Client) -> None:
    metrics = Metrics()
    applied: list[bytes] = []

    def apply(msg: Msg) -> asyncio.Future[None]:
        commit: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if msg.data == b'{"n": 1}':
            commit.set_exception(nats.errors.MaxPayloadError())  # the same every time it is tried
        else:
            applied.append(msg.data)
            commit.set_result(None)
        return commit

    feed = OpsFeed(nc=nc, js=nc.jetstream(), apply=apply, metrics=metrics)
    await feed.start()
    try:
        js = nc.jetstream()
        seqs = [(await js.publish(names.ops_events("op-1", "local"), b'{"n": %d}' % i)).seq for i in range(4)]
        await assert_eventually(lambda: len(applied) == 3)
        await assert_eventually(lambda: acked_through(nc, seqs[-1]), message="the poison message held the acks")
        assert rejected(metrics, "poison") == 1
    finally:
        await feed.stop()


async def test_a_strategy_nested_20000_deep_is_refused_naming_the_limit_over_http_and_nats(
        api: httpx.AsyncClient, coordinator: Coordinator, nc: Client) -> None:
    too_deep = f"nested deeper than {MAX_STRATEGY_DEPTH} levels"
    params = {"strategy": "rules: " + "[" * 20_000 + "]" * 20_000, "symbol": "SYN", "timeframe": "1h"}
    for response in (await api.post("/api/v1/backtests", json=params),
                     await api.post("/api/v1/operations", json={"type": "backtesting", "params": params})):
        assert response.status_code == 422, response.text
        assert too_deep in response.json()["error"]
    request = SubmitRequest(type="backtesting", params=params).encode()
    reply = await nc.request(f"{names.SERVICE_GROUP}.{names.SERVICE_SUBMIT}", request, timeout=10)
    assert reply.headers and reply.headers["Nats-Service-Error-Code"] == "422"
    assert too_deep in reply.headers["Nats-Service-Error"]
    assert list(coordinator.ops.all()) == []
