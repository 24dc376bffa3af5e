"""Backtest routes of the API: requests are checked before anything is queued; results are served
from the ``results`` bucket once an op has completed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from coordinator.app import Coordinator
from subjects import names
from subjects.models import OpStatus, SubmitRequest
from tests.backtesting import backtest_params, publish_synth
from tests.conftest import MakeWorker
from tests.support import wait_status

BAD_INLINE = """
name: broken
indicators:
  fast: {type: sma, period: 10}
rules:
  entry_long: {cross_above: [fast, nowhere]}
"""


@pytest.mark.parametrize(("params", "names_field"), [
    ({"timeframe": "7m"}, "timeframe"),
    ({"start": "2020-02-01", "end": "2020-01-01"}, "end"),
    ({"commission": -0.1}, "commission"),
    ({"sizing": "everything"}, "sizing"),
    ({"symbol": "a/b"}, "symbol"),
    ({"bogus": 1}, "bogus"),
    ({"strategy": "no_such_strategy"}, "strategy"),
    ({"parameters": {"fastest": 3}}, "parameters.fastest"),
    ({"strategy": BAD_INLINE}, "rules.entry_long"),
    ({"carry_in": {"cash": 5.0, "position": {"side": 1, "size": 0, "entry_price": 10.0, "commission": 0.0,
                                             "entry_time": "2019-12-31T00:00:00Z", "bars_held": 3}}},
     "carry_in.position.size"),
    ({"carry_in": {"cash": 5.0}}, "carry_in"),
])
async def test_an_invalid_backtest_is_a_422_naming_the_field_and_queues_nothing(
        api: httpx.AsyncClient, coordinator: Coordinator, params: dict[str, Any], names_field: str) -> None:
    response = await api.post("/api/v1/backtests", json=backtest_params(**params))
    assert response.status_code == 422, response.text
    assert names_field in response.json()["error"]
    assert list(coordinator.ops.all()) == []


@pytest.mark.parametrize(("params", "names_field"), [
    ({"grid": {}}, "grid"),
    ({"grid": {"fast": []}}, "grid"),
    ({"grid": {"fastest": [5, 10]}}, "fastest"),
    ({"grid": {"fast": [5, 10]}, "top": 0}, "top"),
])
async def test_an_invalid_sweep_is_a_422_naming_the_field(
        api: httpx.AsyncClient, coordinator: Coordinator, params: dict[str, Any], names_field: str) -> None:
    response = await api.post("/api/v1/backtests/sweeps", json=backtest_params(**params))
    assert response.status_code == 422, response.text
    assert names_field in response.json()["error"]
    assert list(coordinator.ops.all()) == []


async def test_a_valid_backtest_is_queued_for_backtest_workers(api: httpx.AsyncClient, nc: Client,
                                                               tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")  # admission finds its bars stored
    response = await api.post("/api/v1/backtests", json=backtest_params(start="2020-01-01", end="2020-02-01"))
    assert response.status_code == 201, response.text
    op = response.json()
    assert op["type"] == "backtesting" and op["status"] == "pending" and op["offered"] == ["backtest.cpu"]
    assert op["params"]["start"] == "2020-01-01T00:00:00Z" and op["params"]["capital"] == 100_000


async def test_results_are_404_for_unknown_ops_409_until_completed_and_404_when_none_were_stored(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    assert (await api.get("/api/v1/operations/nope/results")).status_code == 404
    await publish_synth(nc, tmp_path / "publisher")
    queued = await api.post("/api/v1/backtests", json=backtest_params())
    pending = await api.get(f"/api/v1/operations/{queued.json()['op_id']}/results")
    assert pending.status_code == 409 and "pending" in pending.json()["error"]
    await make_worker("w1")
    dummy = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))
    await wait_status(coordinator, dummy.op_id, OpStatus.COMPLETED)
    none = await api.get(f"/api/v1/operations/{dummy.op_id}/results")
    assert none.status_code == 404 and "stored no results" in none.json()["error"]


async def test_the_dispatcher_never_offers_a_sweep_to_workers(coordinator: Coordinator, nc: Client) -> None:
    op = await coordinator.dispatcher.submit(SubmitRequest(type="sweep", params=backtest_params(grid={"fast": [5]})))
    assert op.offered == [] and op.route == "coordinator"
    await wait_status(coordinator, op.op_id, OpStatus.RUNNING)
    # Only its one child was offered.
    info = await nc.jetstream().stream_info("JOBS")
    assert info.state.messages == 1


@pytest.mark.parametrize("op_type", ["backtesting", "sweep"])
async def test_every_way_in_checks_the_strategy_before_queueing(
        api: httpx.AsyncClient, coordinator: Coordinator, nc: Client, op_type: str) -> None:
    params = backtest_params(strategy=BAD_INLINE)
    if op_type == "sweep":
        params["grid"] = {"fast": [5, 10]}
    # The generic operations route...
    response = await api.post("/api/v1/operations", json={"type": op_type, "params": params})
    assert response.status_code == 422, response.text
    assert "rules.entry_long" in response.json()["error"]
    # ...and the NATS service refuse it the same way (the same 422), naming the field.
    reply = await nc.request(f"{names.SERVICE_GROUP}.{names.SERVICE_SUBMIT}",
                             json.dumps({"type": op_type, "params": params}).encode(), timeout=5)
    assert reply.headers and reply.headers["Nats-Service-Error-Code"] == "422"
    assert "rules.entry_long" in reply.headers["Nats-Service-Error"]
    assert list(coordinator.ops.all()) == []
