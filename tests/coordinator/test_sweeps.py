"""Sweeps: a parent op the coordinator runs, one backtest child per combination, progress
aggregated, ranked when every child has ended, cancelled as a whole, resumed after a restart."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Any

import httpx
from nats.aio.client import Client

from coordinator.app import Coordinator
from ktrdr.backtest import BacktestConfig, run_backtest
from ktrdr.backtest.sweep import combinations, rank
from ktrdr.natsd import NatsServer
from ktrdr.runtime.context import JobContext
from ktrdr.strategy import load_strategy, with_parameters
from subjects import names
from subjects.models import Operation, OpStatus, SubmitRequest
from tests.backtesting import SYMBOL, TIMEFRAME, backtest_params, backtest_worker, publish_synth
from tests.conftest import MakeWorker, SpawnWorker, coordinator_settings
from tests.support import assert_eventually, wait_status

GRID = {"fast": [5, 10, 15], "slow": [30, 60]}


def children(coordinator: Coordinator, sweep_id: str) -> list[Operation]:
    return sorted((o for o in coordinator.ops.all() if o.parent_id == sweep_id), key=lambda o: o.op_id)


def gate(release: threading.Event) -> Any:
    """A progress hook that holds every backtest, or block of variants, before its work until
    ``release`` (or a cancel)."""
    def hook(ctx: JobContext, update: dict[str, Any]) -> None:
        if update.get("step") in ("simulation", "variants") and not update.get("percentage"):
            while not release.is_set() and not ctx.token.wait(0.01):
                pass
    return hook


async def test_a_sweep_runs_in_blocks_aggregates_variants_and_ranks_them_all(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    release = threading.Event()
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1", on_progress=gate(release))
    await backtest_worker(make_worker, "bt2", tmp_path / "bt2", on_progress=gate(release))
    body = backtest_params(grid=GRID, top=3, block_size=2, full_results=1)
    created = await api.post("/api/v1/backtests/sweeps", json=body)
    assert created.status_code == 201, created.text
    sweep_id = created.json()["op_id"]

    def two_held() -> list[Operation] | None:
        running = [c for c in children(coordinator, sweep_id)
                   if c.progress is not None and c.progress.step == "variants"]
        return running if len(running) == 2 else None

    held = await assert_eventually(two_held)
    assert {c.worker_id for c in held} == {"bt1", "bt2"} and {c.type for c in held} == {"backtest_block"}
    parent = await assert_eventually(lambda: (p := coordinator.ops.get(sweep_id)) and p.progress
                                     and p.progress.step == "blocks" and p)
    assert parent.status is OpStatus.RUNNING and parent.info["plan"]["block_size"] == 2
    assert (parent.progress.steps_done, parent.progress.steps_total) == (0, 4)  # 3 blocks, 1 full result
    assert parent.progress.message.startswith("0 of 6 backtests finished")
    assert len(children(coordinator, sweep_id)) == 3

    release.set()
    done = await wait_status(coordinator, sweep_id, OpStatus.COMPLETED, OpStatus.FAILED, timeout=30)
    assert done.status is OpStatus.COMPLETED, done.error
    assert done.progress is not None and done.progress.percentage == 100.0
    assert done.progress.message.startswith("6 of 6 backtests finished")
    assert done.result is not None and done.result["completed"] == 6 and len(done.result["top"]) == 3
    sharpe = [t["sharpe_ratio"] for t in done.result["top"]]
    assert sharpe == sorted(sharpe, reverse=True)
    # Three blocks and the best variant again in full: four op records for six backtests.
    assert sorted(c.type for c in children(coordinator, sweep_id)) == ["backtest_block"] * 3 + ["backtesting"]

    ranking = json.loads((await api.get(f"/api/v1/operations/{sweep_id}/results")).content)
    assert [r["rank"] for r in ranking["ranking"]] == [1, 2, 3, 4, 5, 6]
    assert {tuple(r["parameters"].values()) for r in ranking["ranking"]} == {
        (f, s) for f in GRID["fast"] for s in GRID["slow"]}
    best = ranking["ranking"][0]
    assert best["op_id"] == done.result["best"]["op_id"] and all(r["op_id"] is None for r in ranking["ranking"][1:])
    full = coordinator.ops.get(best["op_id"])
    assert full is not None and full.result is not None and full.result["curves"] is True
    assert full.params["parameters"] == best["parameters"]
    full_metrics = json.loads((await api.get(f"/api/v1/operations/{best['op_id']}/results")).content)["metrics"]
    assert full_metrics == best["metrics"]  # the block's metrics are the lone backtest's, exactly


async def test_every_variants_metrics_are_those_of_its_lone_backtest(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    store = await publish_synth(nc, tmp_path / "publisher")
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1")
    grid = {"fast": [3, 5, 10, 20], "slow": [30, 50, 100]}
    created = await api.post("/api/v1/backtests/sweeps", json=backtest_params(grid=grid, block_size=5))
    done = await wait_status(coordinator, created.json()["op_id"], OpStatus.COMPLETED, OpStatus.FAILED, timeout=30)
    assert done.status is OpStatus.COMPLETED, done.error
    ranking = json.loads((await api.get(f"/api/v1/operations/{done.op_id}/results")).content)

    bars = store.load(SYMBOL, TIMEFRAME)
    alone = []
    for combo in combinations(grid):
        result = run_backtest(bars, with_parameters(load_strategy("sma_crossover"), combo),
                              BacktestConfig(timeframe=TIMEFRAME, symbol=SYMBOL))
        metrics = json.loads(result.to_json_bytes(include_curves=False))["metrics"]
        alone.append({"parameters": combo, "metrics": metrics})
    expected = rank(alone, "sharpe_ratio")
    assert [r["parameters"] for r in ranking["ranking"]] == [r["parameters"] for r in expected]
    assert [r["metrics"] for r in ranking["ranking"]] == [r["metrics"] for r in expected]


async def test_cancelling_a_sweep_cancels_every_child_that_has_not_ended(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1", on_progress=gate(threading.Event()))
    body = backtest_params(grid=GRID, block_size=1)
    sweep_id = (await api.post("/api/v1/backtests/sweeps", json=body)).json()["op_id"]
    running = await assert_eventually(
        lambda: [c.op_id for c in children(coordinator, sweep_id) if c.status is OpStatus.RUNNING])
    asked: list[str] = []

    async def seen(msg: Any) -> None:
        asked.append(names.op_id_from_subject(msg.subject))

    requests = await nc.subscribe(names.OPS_CANCEL_ALL, cb=seen)
    await nc.flush()

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
    # Only the running child's worker is asked over ops.<id>.cancel, which reaches every worker of the
    # fleet; the queued ones are cancelled by the coordinator itself.
    await nc.flush()
    await requests.unsubscribe()
    assert sorted(asked) == sorted([sweep_id, *running])


async def test_a_sweep_survives_a_coordinator_restart(
        nats_server: NatsServer, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    sweep = await coordinator.dispatcher.submit(
        SubmitRequest(type="sweep", params=backtest_params(grid={"fast": [5, 10], "slow": [30]}, block_size=1)))
    await assert_eventually(lambda: len(children(coordinator, sweep.op_id)) == 2)
    await coordinator.stop()

    second = Coordinator(settings=coordinator_settings(nats_server.url))
    await second.start()
    try:
        await backtest_worker(make_worker, "bt1", tmp_path / "bt1")
        done = await wait_status(second, sweep.op_id, OpStatus.COMPLETED, OpStatus.FAILED, timeout=20)
        assert done.status is OpStatus.COMPLETED, done.error
        assert done.result is not None and done.result["completed"] == 2
        # Two blocks of one, then the best variant in full: nothing submitted twice.
        assert sorted(c.type for c in children(second, sweep.op_id)) == ["backtest_block"] * 2 + ["backtesting"]
    finally:
        await second.stop()


async def test_a_block_held_by_a_killed_worker_is_redone_alone(
        coordinator: Coordinator, make_worker: MakeWorker, spawn_worker: SpawnWorker, nc: Client,
        tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    victim = spawn_worker("victim", capabilities=names.CAP_BACKTEST_CPU, KTRDR_STANDIN_SLOW_BACKTEST_S="60")
    await assert_eventually(lambda: "victim" in coordinator.registry.workers, timeout=20)
    sweep = await coordinator.layer.submit(SubmitRequest(type="sweep", params=backtest_params(
        grid=GRID, block_size=2, full_results=0)))
    held = await assert_eventually(lambda: next((c for c in children(coordinator, sweep.op_id)
                                                 if c.worker_id == "victim"), None), timeout=20)
    victim.send_signal(signal.SIGKILL)
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1")
    done = await wait_status(coordinator, sweep.op_id, OpStatus.COMPLETED, OpStatus.FAILED, timeout=60)
    assert done.status is OpStatus.COMPLETED, done.error
    assert done.result is not None and done.result["completed"] == 6
    blocks = children(coordinator, sweep.op_id)
    assert len(blocks) == 3
    redone = [b for b in blocks if b.attempt == 2]
    assert [b.op_id for b in redone] == [held.op_id]  # only the lost block ran twice
    assert all(b.worker_id == "bt1" for b in blocks)


async def test_a_sweep_resumes_with_children_that_ended_long_ago_and_are_no_longer_held(
        nats_server: NatsServer, make_worker: MakeWorker, nc: Client, tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    release = threading.Event()

    def hold_full_results(ctx: JobContext, update: dict[str, Any]) -> None:
        if update.get("step") == "simulation":  # a full backtest, not a block ("variants")
            while not release.is_set() and not ctx.token.wait(0.01):
                pass

    # Only one ended op held in memory: the blocks are read back from the index.
    settings = coordinator_settings(nats_server.url, recent_ops=1)
    first = Coordinator(settings=settings)
    await first.start()
    try:
        await backtest_worker(make_worker, "bt1", tmp_path / "bt1", on_progress=hold_full_results)
        sweep = await first.layer.submit(SubmitRequest(type="sweep", params=backtest_params(
            grid=GRID, block_size=1, full_results=1)))
        await assert_eventually(lambda: (c := first.ops.get(f"{sweep.op_id}-full0")) is not None
                                and c.status is OpStatus.RUNNING, timeout=30)
    finally:
        await first.stop()
    second = Coordinator(settings=settings)
    await second.start()
    try:
        assert sum(1 for o in second.ops.all() if o.parent_id == sweep.op_id) < 6  # most blocks not held
        release.set()
        done = await wait_status(second, sweep.op_id, OpStatus.COMPLETED, OpStatus.FAILED, timeout=30)
        assert done.status is OpStatus.COMPLETED, done.error
        assert done.result is not None and done.result["completed"] == 6
    finally:
        await second.stop()
