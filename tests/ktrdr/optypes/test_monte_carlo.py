"""An op type written from the README's guide alone (``monte_carlo``, tests/ktrdr/optypes/monte_carlo.py)
reads a source backtest's results by its op id, has a bad source refused at submission and gets its
result page from its declaration: in the harness without a server, and once through the real platform."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from coordinator.app import Coordinator
from ktrdr.client import AsyncClient, Invalid
from ktrdr.client.requests import prepare
from ktrdr.data import synth
from ktrdr.optypes import OpType, Rejected
from ktrdr.optypes.backtesting import BACKTEST
from ktrdr.optypes.dummy import DUMMY
from ktrdr.runtime.harness import HandlerEnvironment
from ktrdr.runtime.stalls import StallWatch
from subjects import names, roles
from subjects.models import OpStatus
from subjects.params import BacktestParams, DummyParams
from tests.backtesting import backtest_params, publish_synth
from tests.conftest import MakeWorker, auth
from tests.ktrdr.optypes.monte_carlo import MonteCarloParams, MonteCarloResult, declared, run_monte_carlo
from tests.support import wait_status
from worker_backtest.handler import BacktestHandler


@pytest.fixture
def monte_carlo() -> Iterator[OpType[Any, Any]]:
    with declared() as op_type:
        yield op_type


async def backtested(env: HandlerEnvironment, tmp_path: Path) -> dict[str, Any]:
    """A backtest of synthetic bars run in ``env`` as ``bt-1``: its record, as a later op reads it."""
    env.datasets.put_bars("SYNTH", "1h", synth("SYNTH", "1h", "2020-01-01", 2000, 7))
    params = BacktestParams(strategy="sma_crossover", symbol="SYNTH", timeframe="1h", parameters={"fast": 5})
    await env.run(BacktestHandler(tmp_path / "store"), params, op_type=BACKTEST, op_id="bt-1")
    return env.records.ops["bt-1"].model_dump(mode="json")


async def test_it_reads_its_source_backtest_by_id_and_spreads_the_final_return_around_it(
        monte_carlo: OpType[Any, Any], tmp_path: Path) -> None:
    env = HandlerEnvironment(stalls=StallWatch(refuse=True))
    source = await backtested(env, tmp_path)
    admitted = await env.admit(monte_carlo, {"source": "bt-1", "paths": 2000})
    result = await env.run(run_monte_carlo, admitted, op_type=monte_carlo, op_id="mc-1")

    assert isinstance(result, MonteCarloResult)
    assert result.trades == source["result"]["metrics"]["trades"] > 0 and sum(result.counts) == 2000
    p = result.percentiles
    assert p["p5"] < source["result"]["metrics"]["total_return_pct"] < p["p95"]
    assert env.progress[-1]["items_done"] == 2000
    assert env.records.ops["mc-1"].status is OpStatus.COMPLETED


async def test_a_source_that_is_not_a_completed_backtest_with_trades_is_refused_at_admission(
        monte_carlo: OpType[Any, Any], tmp_path: Path) -> None:
    env = HandlerEnvironment()
    await backtested(env, tmp_path)
    await env.run(lambda ctx, p: {"steps": 1, "duration": 0}, DummyParams(duration=0, steps=1), op_type=DUMMY,
                  op_id="d-1")
    refusals = {"nope": "no operation 'nope': give the id of a completed backtesting",
                "d-1": "d-1 is a dummy, not a backtesting"}
    for source, says in refusals.items():
        with pytest.raises(Rejected) as refused:
            await env.admit(monte_carlo, {"source": source})
        assert (refused.value.field, refused.value.message) == ("source", says)
    # The client's own check, given the same lookups, refuses it the same way, before anything is sent.
    # (In a thread, as from any async code: it awaits the lookups on a loop of its own.)
    with pytest.raises(Invalid, match="invalid source: no operation 'nope'"):
        await asyncio.to_thread(prepare, "monte_carlo", {"source": "nope"}, lookups=env.lookups)
    checked = await asyncio.to_thread(prepare, "monte_carlo", {"source": "bt-1"}, lookups=env.lookups)
    assert checked == MonteCarloParams(source="bt-1")


async def test_its_result_page_and_summary_line_come_from_its_declaration(
        monte_carlo: OpType[Any, Any], tmp_path: Path) -> None:
    env = HandlerEnvironment()
    await backtested(env, tmp_path)
    await env.run(run_monte_carlo, MonteCarloParams(source="bt-1", paths=500), op_type=monte_carlo, op_id="mc-1")
    record = env.records.ops["mc-1"].result
    assert record is not None

    view = monte_carlo.view_of(record, None)
    assert view is not None and list(view.figures) == ["paths", "median %", "p5 %", "p95 %"]
    histogram = view.charts[0]
    assert histogram.kind == "bars" and sum(v or 0 for v in histogram.series[0].values) == 500
    assert [row[0] for row in view.tables[0].rows] == ["p5", "p25", "p50", "p75", "p95"]
    line = monte_carlo.describe_result(record)
    assert line is not None and line.startswith("paths 500, median % ")


async def test_it_runs_through_the_platform_refused_at_submit_for_a_bad_source_and_drawn_from_its_view(
        monte_carlo: OpType[Any, Any], coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        api: httpx.AsyncClient, tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    handler = BacktestHandler(tmp_path / "worker")
    await make_worker("bt1", capabilities=[names.CAP_BACKTEST_CPU], worker_type="backtest",
                      handlers={"backtesting": handler, "backtest_block": handler.run_block,
                                monte_carlo: run_monte_carlo})
    created = await api.post("/api/v1/backtests", json=backtest_params(parameters={"fast": 5}))
    assert created.status_code == 201, created.text
    source = await wait_status(coordinator, created.json()["op_id"], OpStatus.COMPLETED, OpStatus.FAILED)
    assert source.status is OpStatus.COMPLETED, source.error

    # Refused at submission, through its own route and the generic one, before anything is queued.
    for path, body in (("/api/v1/montecarlo", {"source": "nope"}),
                       ("/api/v1/operations", {"type": "monte_carlo", "params": {"source": "nope"}})):
        refused = await api.post(path, json=body)
        assert refused.status_code == 422, refused.text
        assert refused.json()["detail"] == [{"field": "source", "message": "no operation 'nope': give the id of "
                                                                            "a completed backtesting"}]
    async with AsyncClient(nats_url=coordinator.settings.nats_url, auth=auth(roles.CLIENT)) as client:
        with pytest.raises(Invalid) as invalid:
            await client.start("monte_carlo", source="nope")
        assert invalid.value.field == "source" and invalid.value.code == 422
        handle = await client.start("monte_carlo", source=source.op_id, paths=300)
    assert [op.type for op in coordinator.ops.all()].count("monte_carlo") == 1

    done = await wait_status(coordinator, handle.op_id, OpStatus.COMPLETED, OpStatus.FAILED)
    assert done.status is OpStatus.COMPLETED, done.error
    assert done.result is not None and done.result["trades"] == source.result["metrics"]["trades"]  # type: ignore[index]
    page = (await api.get(f"/api/v1/operations/{done.op_id}/chart")).json()
    assert page["kind"] == "view" and page["figures"]["paths"] == 300
    assert page["charts"][0]["kind"] == "bars" and sum(page["charts"][0]["series"][0]["values"]) == 300
    types = {t["name"]: t for t in (await api.get("/api/v1/optypes")).json()["types"]}
    assert types["monte_carlo"]["view"] is True and types["backtesting"]["view"] is False
    assert json.loads((await api.get(f"/api/v1/operations/{source.op_id}/chart")).content)["kind"] == "backtest"
