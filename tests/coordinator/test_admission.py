"""Submissions are checked against the stored data before anything is queued: bars that are not in the
``data`` store are a 422 over the API and NATS, an ``Invalid`` in the client and exit 2 in the CLI,
each naming what is stored. The store's list is read once for a burst of submissions, never per child
of a sweep, and bars published a moment ago are never refused as missing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client

from coordinator.app import Coordinator
from ktrdr.client import AsyncClient, Invalid
from ktrdr.data import synth
from ktrdr.data.store import bars_to_bytes
from ktrdr.runtime.objects import ObjectBucket
from subjects import names, roles
from subjects.models import OpStatus
from tests.backtesting import backtest_params, backtest_worker, publish_synth
from tests.conftest import MakeWorker, auth
from tests.coordinator.test_errors import SUBMIT, over_nats
from tests.ktrdr.cli.test_backtest_cli import ktrdr
from tests.support import wait_status

STORED = "SYNTH 1h 2020-01-01..2020-03-24 07:00 (2,000 bars)"


def reads(coordinator: Coordinator) -> int:
    return coordinator.layer.lookups.catalog.reads  # type: ignore[union-attr]


@pytest.mark.parametrize(("path", "overrides", "field", "says"), [
    ("/api/v1/backtests", {"symbol": "NOSUCH"}, "symbol", f"no bars for NOSUCH 1h in the data store; stored: {STORED}"),
    ("/api/v1/backtests", {"timeframe": "4h"}, "timeframe", f"no SYNTH 4h bars in the data store; stored for SYNTH: "
                                                            f"{STORED}"),
    ("/api/v1/backtests", {"start": "2021-01-01"}, "start", f"no SYNTH 1h bars between 2021-01-01 and the last bar: "
                                                            f"stored {STORED}"),
    ("/api/v1/backtests/sweeps", {"symbol": "NOSUCH", "grid": {"fast": [5, 10]}}, "symbol", "no bars for NOSUCH 1h"),
    ("/api/v1/backtests/walkforward", {"end": "2019-01-01", "grid": {"fast": [5, 10]}, "folds": 2}, "end",
     "no SYNTH 1h bars between the first bar and 2019-01-01"),
])
async def test_bars_that_are_not_stored_are_refused_at_submit_naming_what_is(
        coordinator: Coordinator, api: httpx.AsyncClient, nc: Client, tmp_path: Path,
        path: str, overrides: dict[str, object], field: str, says: str) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    http = await api.post(path, json=backtest_params(**overrides))
    assert http.status_code == 422, http.text
    detail = http.json()["detail"][0]
    assert detail["field"] == field and detail["message"].startswith(says)
    assert list(coordinator.ops.all()) == []


async def test_the_same_refusal_over_nats_in_the_client_and_in_the_cli(
        coordinator: Coordinator, nc: Client, tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    body = json.dumps({"type": "backtesting", "params": backtest_params(symbol="NOSUCH")}).encode()
    code, answer = over_nats(await nc.request(SUBMIT, body, timeout=5))
    assert code == 422 and answer["detail"][0]["field"] == "symbol" and STORED in answer["error"]

    async with AsyncClient(nats_url=coordinator.settings.nats_url, auth=auth(roles.CLIENT)) as client:
        with pytest.raises(Invalid) as invalid:
            await client.backtest("sma_crossover", symbol="NOSUCH")
    assert invalid.value.field == "symbol" and STORED in invalid.value.message

    exit_code, out = await ktrdr(coordinator.settings.nats_url, tmp_path / "user", "backtest", "run", "sma_crossover",
                                 "--symbol", "NOSUCH")
    assert exit_code == 2, out
    assert "no bars for NOSUCH 1h in the data store; stored: SYNTH 1h" in " ".join(out.split())
    assert list(coordinator.ops.all()) == []


async def test_a_burst_of_submissions_reads_the_stores_list_once_and_a_sweeps_children_never(
        coordinator: Coordinator, make_worker: MakeWorker, api: httpx.AsyncClient, nc: Client,
        tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    before = reads(coordinator)
    answers = await asyncio.gather(*(api.post("/api/v1/backtests", json=backtest_params(parameters={"fast": f}))
                                     for f in range(3, 23)))
    assert [a.status_code for a in answers] == [201] * 20
    assert reads(coordinator) - before == 1

    await backtest_worker(make_worker, "bt1", tmp_path / "bt1")
    sweep = await api.post("/api/v1/backtests/sweeps", json=backtest_params(grid={"fast": [5, 10, 15, 20]},
                                                                            block_size=1))
    assert sweep.status_code == 201, sweep.text
    read = reads(coordinator)
    done = await wait_status(coordinator, sweep.json()["op_id"], OpStatus.COMPLETED, OpStatus.FAILED, timeout=60)
    assert done.status is OpStatus.COMPLETED, done.error
    assert len(coordinator.ops.children(done.op_id)) == 5 and reads(coordinator) == read


async def test_bars_published_a_moment_before_a_submission_are_found(
        coordinator: Coordinator, api: httpx.AsyncClient, nc: Client, tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    assert (await api.post("/api/v1/backtests", json=backtest_params())).status_code == 201
    # The list read for that submission is fresh enough for the next second or two, and lacks OTHER.
    await publish_synth(nc, tmp_path / "publisher", symbol="OTHER")
    created = await api.post("/api/v1/backtests", json=backtest_params(symbol="OTHER"))
    assert created.status_code == 201, created.text


async def test_a_dataset_published_before_spans_were_recorded_is_checked_from_its_bars_once(
        coordinator: Coordinator, api: httpx.AsyncClient, nc: Client, tmp_path: Path) -> None:
    # As an older version wrote it: the object's info says nothing of its span.
    bars = bars_to_bytes(synth("OLD", "1d", "2020-01-01", 366, 3))
    await ObjectBucket(js=nc.jetstream(), bucket=names.DATA_OBJECTS).put("OLD/1d", bars)
    refused = await api.post("/api/v1/backtests", json=backtest_params(symbol="OLD", timeframe="1d",
                                                                       start="2022-01-01"))
    assert refused.status_code == 422
    assert refused.json()["detail"][0]["message"] == ("no OLD 1d bars between 2022-01-01 and the last bar: stored "
                                                      "OLD 1d 2020-01-01..2020-12-31 (366 bars)")
    created = await api.post("/api/v1/backtests", json=backtest_params(symbol="OLD", timeframe="1d"))
    assert created.status_code == 201, created.text
