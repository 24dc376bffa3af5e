"""Retention and the history index: ended ops past an age leave the bucket, archived (still read by
id and by date) or deleted with their results; a coordinator killed halfway through a prune loses
nothing; the index survives restarts and is rebuilt, archive included, when it is lost."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client
from nats.js.errors import KeyNotFoundError

from coordinator.app import Coordinator
from ktrdr.client.aio import AsyncClient
from ktrdr.client.errors import KtrdrError
from ktrdr.natsd import NatsServer
from ktrdr.results import get_result
from subjects import names, roles
from subjects.models import OpStatus, SubmitRequest
from tests.backtesting import backtest_params, backtest_worker, publish_synth
from tests.conftest import MakeWorker, auth, connect_as, coordinator_settings
from tests.coordinator.test_recovery import spawn_coordinator
from tests.support import assert_eventually, wait_status


async def finished_dummies(coordinator: Coordinator, count: int) -> list[str]:
    ids = [(await coordinator.layer.submit(SubmitRequest(type="dummy", params={"duration": 0}))).op_id
           for _ in range(count)]
    for op_id in ids:
        await wait_status(coordinator, op_id, OpStatus.COMPLETED)
    return ids


async def test_ended_ops_past_the_age_are_archived_and_still_read_by_id_and_by_date(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, nc: Client) -> None:
    await make_worker("w1", slots=2)
    started = datetime.now(UTC)
    ended = await finished_dummies(coordinator, 5)
    running = (await coordinator.layer.submit(SubmitRequest(type="dummy", params={"duration": 30}))).op_id
    await wait_status(coordinator, running, OpStatus.RUNNING)

    dry = await api.post("/api/v1/operations/prune", json={"older_than": "0s", "dry_run": True})
    assert dry.status_code == 200, dry.text
    assert (dry.json()["matched"], dry.json()["moved"]) == (5, 0) and set(dry.json()["sample"]) == set(ended)
    kv = await nc.jetstream().key_value(names.OPS_BUCKET)
    assert (await kv.get(ended[0])).value  # a dry run moves nothing

    done = await api.post("/api/v1/operations/prune", json={"older_than": "0s"})
    assert done.status_code == 200 and done.json()["moved"] == 5 and done.json()["action"] == "archive"
    for op_id in ended:
        with pytest.raises(KeyNotFoundError):
            await kv.get(op_id)
        read = await api.get(f"/api/v1/operations/{op_id}")
        assert read.status_code == 200 and read.json()["status"] == "completed"
    assert (await nc.jetstream().stream_info(names.OPS_ARCHIVE_STREAM)).state.messages == 5
    listed = (await api.get("/api/v1/operations")).json()
    assert [o["op_id"] for o in listed["operations"]] == [running]
    window = {"include_archived": "true", "since": started.isoformat(),
              "until": (started + timedelta(minutes=5)).isoformat()}
    dated = (await api.get("/api/v1/operations", params=window)).json()
    assert {o["op_id"] for o in dated["operations"]} == {*ended, running}
    assert coordinator.ops.get(running).status is OpStatus.RUNNING  # type: ignore[union-attr]


async def test_delete_removes_the_record_and_its_results(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "pub")
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1")
    op = await coordinator.layer.submit(SubmitRequest(type="backtesting", params=backtest_params()))
    done = await wait_status(coordinator, op.op_id, OpStatus.COMPLETED)
    assert done.result_object is not None and await get_result(nc.jetstream(), done) is not None

    reply = await api.post("/api/v1/operations/prune", json={"older_than": "0s", "action": "delete"})
    assert reply.json()["moved"] == 1
    assert await get_result(nc.jetstream(), done) is None
    assert (await api.get(f"/api/v1/operations/{op.op_id}")).status_code == 404


async def test_a_bad_age_is_refused_naming_it(api: httpx.AsyncClient) -> None:
    reply = await api.post("/api/v1/operations/prune", json={"older_than": "a fortnight"})
    assert reply.status_code == 422 and reply.json()["detail"][0]["field"] == "older_than"


async def test_the_apis_viewer_token_may_not_prune(api: httpx.AsyncClient, coordinator: Coordinator) -> None:
    viewer = {"Authorization": f"Bearer {coordinator.api_viewer_token}"}
    reply = await api.post("/api/v1/operations/prune", json={"older_than": "0s"}, headers=viewer)
    assert reply.status_code == 403


async def test_a_client_may_prune_over_nats_and_a_viewer_is_refused_by_the_server(
        nats_server: NatsServer, coordinator: Coordinator, make_worker: MakeWorker) -> None:
    await make_worker("w1")
    await finished_dummies(coordinator, 2)
    async with AsyncClient(nats_url=nats_server.url, auth=auth(roles.CLIENT)) as client:
        dry = await client.prune("0s", dry_run=True)
        assert dry.matched == 2 and dry.moved == 0
    viewer = await connect_as(nats_server.url, roles.VIEWER)
    errors: list[Exception] = []
    viewer._error_cb = lambda e: errors.append(e)  # type: ignore[assignment]
    try:
        with pytest.raises(Exception):  # noqa: B017 - the denial, then no answer
            await viewer.request(f"{names.SERVICE_GROUP}.{names.SERVICE_PRUNE}", b'{"older_than": "0s"}', timeout=1)
        await assert_eventually(lambda: any("permissions violation" in str(e).lower() for e in errors))
    finally:
        await viewer.close()
    assert coordinator.ops.index.expired(datetime.now(UTC), limit=10)  # still there


async def test_the_index_survives_a_restart_and_is_rebuilt_with_the_archive_when_lost(
        nats_server: NatsServer, coordinator: Coordinator, make_worker: MakeWorker) -> None:
    await make_worker("w1")
    kept = await finished_dummies(coordinator, 3)
    archived = await finished_dummies(coordinator, 2)
    moved = await coordinator.layer.retention.prune(older_than=timedelta(0), limit=2)
    assert moved.moved == 2 and set(moved.sample) == set(kept[:2])
    archived_ids, live_ids = kept[:2], [*kept[2:], *archived]
    index_file = coordinator.settings.ops_index
    assert index_file is not None
    await coordinator.stop()

    for lose_it in (False, True):
        if lose_it:
            for path in index_file.parent.glob(index_file.name + "*"):
                path.unlink()
        again = Coordinator(settings=coordinator_settings(nats_server.url))
        await again.start()
        try:
            for op_id in archived_ids:
                assert again.layer.get(op_id).status is OpStatus.COMPLETED
            page = again.layer.page(again_query(include_archived=False))
            assert {o.op_id for o in page.operations} == set(live_ids)
            page = again.layer.page(again_query(include_archived=True))
            assert {o.op_id for o in page.operations} == {*archived_ids, *live_ids}
        finally:
            await again.stop()


def again_query(*, include_archived: bool):  # type: ignore[no-untyped-def]
    from subjects.models import ListRequest

    return ListRequest(include_archived=include_archived, limit=100)


async def test_a_coordinator_killed_halfway_through_a_prune_loses_nothing(
        nats_server: NatsServer, make_worker: MakeWorker, nc: Client, tmp_path: Path) -> None:
    log = tmp_path / "coordinator.log"
    first = spawn_coordinator(nats_server, log)
    submitted: list[str] = []
    try:
        async with AsyncClient(nats_url=nats_server.url, auth=auth(roles.CLIENT)) as client:
            await make_worker("w1", slots=8)
            await assert_eventually(lambda: _answers(client), timeout=20)
            for _ in range(15):
                ops = await asyncio.gather(*(client.submit("dummy", {"duration": 0}) for _ in range(100)))
                submitted += [o.op_id for o in ops]
            await assert_eventually(lambda: _none_active(client), timeout=60)
            js = nc.jetstream()
            # No answer ever comes from a killed coordinator: the request times out.
            prune = asyncio.ensure_future(client.prune("0s", timeout=20))

            async def halfway() -> bool:
                info = await js.stream_info(names.OPS_ARCHIVE_STREAM)
                return 0 < info.state.messages < len(submitted)

            await assert_eventually(halfway, timeout=30, interval=0.001)
            first.send_signal(signal.SIGKILL)
            first.wait()
            with pytest.raises(KtrdrError):
                await prune
            second = spawn_coordinator(nats_server, log)
            try:
                await assert_eventually(lambda: _answers(client), timeout=20)
                again = await client.prune("0s")
                assert again.moved + (await js.stream_info(names.OPS_ARCHIVE_STREAM)).state.messages >= len(submitted)
                kv = await js.key_value(names.OPS_BUCKET)
                left = [k for k in await _keys(kv) if not k.startswith("health")]
                assert left == []
                assert (await js.stream_info(names.OPS_ARCHIVE_STREAM)).state.messages == len(submitted)
                for op_id in submitted[::97]:
                    assert (await client.get(op_id)).status is OpStatus.COMPLETED
                listed = await client.list(include_archived=True, limit=10_000)
                assert sorted(o.op_id for o in listed.operations) == sorted(submitted)
            finally:
                second.send_signal(signal.SIGTERM)
                second.wait(10)
    finally:
        if first.poll() is None:
            first.kill()


async def _answers(client: AsyncClient) -> bool:
    try:
        await client.list(limit=1)
        return True
    except Exception:
        return False


async def _none_active(client: AsyncClient) -> bool:
    return (await client.list(active_only=True, limit=1)).total == 0


async def _keys(kv) -> list[str]:  # type: ignore[no-untyped-def]
    try:
        return list(await kv.keys())
    except Exception:  # nats-py raises when the bucket has no keys
        return []


