"""Backtests compared side by side: the same numbers as each one's own result, over the API and the
CLI, and a clear refusal for what cannot be compared."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from nats.aio.client import Client

from coordinator.app import Coordinator
from ktrdr.backtest.compare import compare, growth_curves
from subjects.models import OpStatus
from tests.backtesting import backtest_params, backtest_worker, publish_synth
from tests.conftest import MakeWorker
from tests.support import wait_status


async def backtest(api: httpx.AsyncClient, coordinator: Coordinator, **params: object) -> str:
    created = await api.post("/api/v1/backtests", json=backtest_params(**params))
    assert created.status_code == 201, created.text
    done = await wait_status(coordinator, created.json()["op_id"], OpStatus.COMPLETED, OpStatus.FAILED, timeout=30)
    assert done.status is OpStatus.COMPLETED, done.error
    return done.op_id


async def test_two_backtests_side_by_side_give_each_ones_own_metrics_and_curves(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1")
    fast = await backtest(api, coordinator, parameters={"fast": 5, "slow": 20})
    slow = await backtest(api, coordinator, parameters={"fast": 20, "slow": 100}, capital=50_000.0)

    reply = await api.get("/api/v1/backtests/compare", params={"ids": f"{fast},{slow}"})
    assert reply.status_code == 200, reply.text
    found = reply.json()
    own = {i: json.loads((await api.get(f"/api/v1/operations/{i}/results")).content) for i in (fast, slow)}
    for name in ("total_return_pct", "sharpe_ratio", "trades", "max_drawdown_pct"):
        assert found["metrics"][name] == {i: own[i]["metrics"][name] for i in (fast, slow)}
    assert list(found["metrics"])[:3] == ["total_return_pct", "annualized_return_pct", "sharpe_ratio"]
    assert found["runs"][slow]["parameters"] == {"fast": 20, "slow": 100}
    # Curves on one scale: a % of each one's starting capital, whatever the capital.
    for i in (fast, slow):
        growth = found["curves"][i]["growth_pct"]
        assert growth[0] == 100.0 * own[i]["equity"][0] / own[i]["config"]["initial_capital"]
        assert growth[-1] == 100.0 * own[i]["equity"][-1] / own[i]["config"]["initial_capital"]
    assert compare({i: json.dumps(own[i]).encode() for i in (fast, slow)})["metrics"] == found["metrics"]
    assert set(growth_curves({fast: json.dumps(own[fast]).encode()})) == {fast}


async def test_what_cannot_be_compared_is_refused_naming_it(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1")
    one = await backtest(api, coordinator)
    reply = await api.get("/api/v1/backtests/compare", params={"ids": one})
    assert reply.status_code == 422 and reply.json()["detail"][0]["field"] == "ids"
    reply = await api.get("/api/v1/backtests/compare", params={"ids": f"{one},backtesting-nosuch"})
    assert reply.status_code == 404 and "backtesting-nosuch" in reply.text
    sweep = await api.post("/api/v1/backtests/sweeps", json=backtest_params(grid={"fast": [5], "slow": [20]}))
    sweep_id = sweep.json()["op_id"]
    await wait_status(coordinator, sweep_id, OpStatus.COMPLETED, timeout=30)
    reply = await api.get("/api/v1/backtests/compare", params={"ids": f"{one},{sweep_id}"})
    assert reply.status_code == 422 and "is a sweep, not a backtest" in reply.text
