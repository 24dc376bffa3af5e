"""Sweeps: a parent op the coordinator runs, one backtest child per combination, progress
aggregated, ranked when every child has ended, cancelled as a whole, resumed after a restart."""

from __future__ import annotations

import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from coordinator.app import Coordinator
from ktrdr.natsd import NatsServer
from ktrdr.runtime.context import JobContext
from subjects.models import Operation, OpStatus, SubmitRequest
from tests.backtesting import backtest_params, backtest_worker, publish_synth
from tests.conftest import MakeWorker, coordinator_settings
from tests.support import assert_eventually, auth_headers, wait_status

GRID = {"fast": [5, 10, 15], "slow": [30, 60]}


@pytest.fixture
async def api(coordinator: Coordinator) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{coordinator.api_port}",
                                 headers=auth_headers(coordinator)) as client:
        yield client


def children(coordinator: Coordinator, sweep_id: str) -> list[Operation]:
    return sorted((o for o in coordinator.ops.all() if o.parent_id == sweep_id), key=lambda o: o.op_id)


def gate(release: threading.Event) -> Any:
    """A progress hook that holds every backtest in its simulation until ``release`` (or a cancel)."""
    def hook(ctx: JobContext, update: dict[str, Any]) -> None:
        if update.get("step") == "simulation":
            while not release.is_set() and not ctx.token.wait(0.01):
                pass
    return hook


async def test_a_sweep_fans_out_aggregates_progress_and_completes_with_a_ranking(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    release = threading.Event()
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1", on_progress=gate(release))
    await backtest_worker(make_worker, "bt2", tmp_path / "bt2", on_progress=gate(release))
    created = await api.post("/api/v1/backtests/sweeps", json=backtest_params(grid=GRID, top=3))
    assert created.status_code == 201, created.text
    sweep_id = created.json()["op_id"]

    def two_held() -> list[Operation] | None:
        running = [c for c in children(coordinator, sweep_id)
                   if c.progress is not None and c.progress.step == "simulation"]
        return running if len(running) == 2 else None

    held = await assert_eventually(two_held)
    expected = round(sum(c.progress.percentage for c in held) / 6, 2)  # type: ignore[union-attr,misc]

    def aggregated() -> Operation | None:
        parent = coordinator.ops.get(sweep_id)
        return parent if parent and parent.progress and parent.progress.percentage == expected else None

    parent = await assert_eventually(aggregated)
    assert parent.status is OpStatus.RUNNING
    assert (parent.progress.steps_done, parent.progress.steps_total) == (0, 6)  # type: ignore[union-attr]
    assert len(children(coordinator, sweep_id)) == 6
    assert {c.worker_id for c in held} == {"bt1", "bt2"}

    release.set()
    done = await wait_status(coordinator, sweep_id, OpStatus.COMPLETED, OpStatus.FAILED, timeout=30)
    assert done.status is OpStatus.COMPLETED, done.error
    assert done.progress is not None and (done.progress.steps_done, done.progress.percentage) == (6, 100.0)
    assert done.result is not None and done.result["completed"] == 6 and len(done.result["top"]) == 3
    sharpe = [t["sharpe_ratio"] for t in done.result["top"]]
    assert sharpe == sorted(sharpe, reverse=True)

    ranking = json.loads((await api.get(f"/api/v1/operations/{sweep_id}/results")).content)
    assert [r["rank"] for r in ranking["ranking"]] == [1, 2, 3, 4, 5, 6]
    assert {tuple(r["parameters"].values()) for r in ranking["ranking"]} == {
        (f, s) for f in GRID["fast"] for s in GRID["slow"]}
    assert ranking["ranking"][0]["op_id"] == done.result["best"]["op_id"]


async def test_cancelling_a_sweep_cancels_every_child_that_has_not_ended(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1", on_progress=gate(threading.Event()))
    sweep_id = (await api.post("/api/v1/backtests/sweeps", json=backtest_params(grid=GRID))).json()["op_id"]
    await assert_eventually(lambda: [c for c in children(coordinator, sweep_id) if c.status is OpStatus.RUNNING])

    reply = await api.request("DELETE", f"/api/v1/operations/{sweep_id}", json={"reason": "seen enough"})
    assert reply.status_code == 200 and reply.json()["accepted"] is True
    parent = await wait_status(coordinator, sweep_id, OpStatus.CANCELLED)
    assert parent.cancel_reason == "seen enough"

    def all_cancelled() -> list[Operation] | None:
        found = children(coordinator, sweep_id)
        return found if len(found) == 6 and all(c.status is OpStatus.CANCELLED for c in found) else None

    cancelled = await assert_eventually(all_cancelled)
    assert all(f"sweep {sweep_id} cancelled" in (c.cancel_reason or "") for c in cancelled)
    assert [c.worker_id for c in cancelled].count("bt1") == 1  # the queued ones never started
    assert coordinator.ops.get(sweep_id).status is OpStatus.CANCELLED  # type: ignore[union-attr]


async def test_a_sweep_survives_a_coordinator_restart(
        nats_server: NatsServer, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    sweep = await coordinator.dispatcher.submit(
        SubmitRequest(type="sweep", params=backtest_params(grid={"fast": [5, 10], "slow": [30]})))
    await assert_eventually(lambda: len(children(coordinator, sweep.op_id)) == 2)
    await coordinator.stop()

    second = Coordinator(settings=coordinator_settings(nats_server.url))
    await second.start()
    try:
        await backtest_worker(make_worker, "bt1", tmp_path / "bt1")
        done = await wait_status(second, sweep.op_id, OpStatus.COMPLETED, OpStatus.FAILED, timeout=20)
        assert done.status is OpStatus.COMPLETED, done.error
        assert done.result is not None and done.result["completed"] == 2
        assert len(children(second, sweep.op_id)) == 2
    finally:
        await second.stop()
