"""Selection that cannot silently lie: an objective is checked where a request comes in (HTTP, NATS,
the CLI), a variant that misses a constraint is never best, and when none meets the objective a
sweep says so and a walk-forward fails naming why, instead of taking the first grid point."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from coordinator.app import Coordinator
from ktrdr.natsd import NatsServer
from subjects import names
from subjects.models import ListRequest, OpStatus, SubmitRequest
from tests.backtesting import backtest_params, backtest_worker, publish_synth
from tests.conftest import MakeWorker
from tests.coordinator.test_walkforward import params as walkforward_params
from tests.coordinator.test_walkforward import planted, publish
from tests.ktrdr.cli.test_backtest_cli import ktrdr
from tests.support import wait_status

# (20, 20): two equal averages never cross, so the pair never trades and its curve is flat.
GRID = {"fast": [5, 20], "slow": [20, 60]}


async def sweep(api: httpx.AsyncClient, coordinator: Coordinator, **objective: Any) -> tuple[dict[str, Any], dict]:
    created = await api.post("/api/v1/backtests/sweeps", json=backtest_params(grid=GRID, objective=objective))
    assert created.status_code == 201, created.text
    done = await wait_status(coordinator, created.json()["op_id"], OpStatus.COMPLETED, OpStatus.FAILED, timeout=30)
    assert done.status is OpStatus.COMPLETED, done.error
    ranking = json.loads((await api.get(f"/api/v1/operations/{done.op_id}/results")).content)
    return done.result or {}, ranking


@pytest.mark.parametrize("path, body", [
    ("/api/v1/backtests/sweeps", backtest_params(grid=GRID, metric="sharpe")),
    ("/api/v1/backtests/sweeps", backtest_params(grid=GRID, objective={"metric": "sharpe"})),
    ("/api/v1/backtests/walkforward", walkforward_params(metric="foo")),
])
async def test_an_unknown_metric_is_a_422_listing_the_valid_ones_and_queues_nothing(
        api: httpx.AsyncClient, coordinator: Coordinator, path: str, body: dict[str, Any]) -> None:
    reply = await api.post(path, json=body)
    assert reply.status_code == 422, reply.text
    detail = reply.json()["detail"][0]
    assert detail["field"] == "objective.metric"
    assert "unknown metric" in detail["message"] and "sharpe_ratio" in detail["message"]
    assert coordinator.ops.list(ListRequest())[0] == 0


async def test_an_unknown_metric_or_relation_is_refused_over_nats_too(coordinator: Coordinator, nc: Client,
                                                                      tmp_path: Path) -> None:
    for objective, field, says in (({"metric": "sharpe"}, "objective.metric", "unknown metric 'sharpe'"),
                                   ({"require": ["fast < medium"]}, "objective.require", "medium")):
        request = SubmitRequest(type="sweep", params=backtest_params(grid=GRID, objective=objective))
        reply = await nc.request(f"{names.SERVICE_GROUP}.{names.SERVICE_SUBMIT}", request.encode(), timeout=5)
        assert reply.headers and reply.headers["Nats-Service-Error-Code"] == "422"
        assert field in reply.headers["Nats-Service-Error"] and says in reply.headers["Nats-Service-Error"]
    assert coordinator.ops.list(ListRequest())[0] == 0
    await publish_synth(nc, tmp_path / "publisher")  # a valid sweep's bars are stored
    valid = SubmitRequest(type="sweep", params=backtest_params(
        grid=GRID, objective={"metric": "total_return_pct", "min_trades": 2, "require": ["fast < slow"]}))
    reply = await nc.request(f"{names.SERVICE_GROUP}.{names.SERVICE_SUBMIT}", valid.encode(), timeout=5)
    assert not (reply.headers or {}).get("Nats-Service-Error-Code"), reply.headers
    op = coordinator.ops.get(json.loads(reply.data)["op_id"])
    assert op is not None and op.params["objective"]["require"] == ["fast < slow"]
    assert op.params["objective"]["direction"] == "max" and op.params["objective"]["min_trades"] == 2


async def test_the_cli_refuses_an_unknown_metric_or_relation_before_queueing_anything(
        nats_server: NatsServer, tmp_path: Path) -> None:
    base = ("backtest", "sweep", "sma_crossover", "-p", "fast=5,20", "-p", "slow=20,60", "-s", "SYN")
    code, out = await ktrdr(nats_server.url, tmp_path, *base, "--metric", "sharpe")
    assert code == 2, out
    assert "unknown metric 'sharpe'" in out and "sharpe_ratio" in out
    code, out = await ktrdr(nats_server.url, tmp_path, *base, "--require", "fast < medium")
    assert code == 2 and "medium: not a parameter of the grid" in out, out
    code, out = await ktrdr(nats_server.url, tmp_path, *base, "--require", "fast <<< slow")
    assert code == 2 and "invalid relation" in out, out


async def test_a_variant_that_never_trades_is_not_best_unless_asked(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1")
    flat = {"fast": 20, "slow": 20}

    result, ranking = await sweep(api, coordinator, metric="max_drawdown_pct")
    by_parameters = {json.dumps(r["parameters"], sort_keys=True): r for r in ranking["ranking"]}
    never = by_parameters[json.dumps(flat, sort_keys=True)]
    assert never["metrics"]["trades"] == 0 and never["metrics"]["max_drawdown_pct"] == 0.0
    assert never["eligible"] is False and never["excluded"] == "fewer than 1 trade (0)"
    assert result["best"]["parameters"] != flat and result["best"]["trades"] >= 1
    assert result["eligible"] == ranking["eligible"] == 3 and ranking["ranking"][-1] == never
    assert result["objective"]["min_trades"] == 1 and result["objective"]["direction"] == "min"

    asked, _ = await sweep(api, coordinator, metric="max_drawdown_pct", min_trades=0)
    assert asked["best"]["parameters"] == flat

    related, ranking = await sweep(api, coordinator, metric="total_return_pct", require=["fast < slow"])
    chosen = [r["parameters"] for r in ranking["ranking"] if r["eligible"]]
    assert len(chosen) == 3 and all(p["fast"] < p["slow"] for p in chosen)
    assert related["best"]["parameters"]["fast"] < related["best"]["parameters"]["slow"]


async def test_when_no_variant_meets_the_objective_a_sweep_says_so_and_a_walkforward_fails_naming_why(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    await publish(nc, tmp_path / "pub", "WFA", planted())
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1")

    result, ranking = await sweep(api, coordinator, min_trades=1_000_000)
    assert result["best"] is None and result["top"] == [] and result["eligible"] == 0
    assert result["no_best"] == ranking["no_best"] == (
        "no variant met the objective (sharpe_ratio (max), at least 1000000 trades): "
        "4 with fewer than 1000000 trades")

    created = await api.post("/api/v1/backtests/walkforward",
                             json=walkforward_params(objective={"metric": "total_return_pct", "min_trades": 1_000_000}))
    assert created.status_code == 201, created.text
    done = await wait_status(coordinator, created.json()["op_id"], OpStatus.COMPLETED, OpStatus.FAILED, timeout=60)
    assert done.status is OpStatus.FAILED
    assert "fold 0: the in-sample sweep" in (done.error or "") and "chose nothing" in (done.error or "")
    assert "fewer than 1000000 trades" in (done.error or "")
