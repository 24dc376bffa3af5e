"""A type the dashboard has no page for draws its result from its declaration (``OpType.view``): the
``monte_carlo`` type of tests/ktrdr/optypes/monte_carlo.py gets its figures as cards, its histogram
as bars and its percentiles as a sortable table, with no line of the page written for it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

from coordinator.app import Coordinator
from ktrdr.optypes import OpType
from subjects import names
from subjects.models import OpStatus
from tests.backtesting import backtest_params, publish_synth
from tests.conftest import MakeWorker
from tests.coordinator.dashboard.conftest import Browser
from tests.coordinator.dashboard.test_page import sign_in
from tests.ktrdr.optypes.monte_carlo import BINS, declared, run_monte_carlo
from tests.support import wait_status
from worker_backtest.handler import BacktestHandler


@pytest.fixture
def monte_carlo() -> Iterator[OpType[Any, Any]]:
    with declared() as op_type:
        yield op_type


async def test_a_declared_view_is_drawn_as_cards_bars_and_a_table(
        monte_carlo: OpType[Any, Any], coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        api: httpx.AsyncClient, browser: Browser, tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    handler = BacktestHandler(tmp_path / "worker")
    await make_worker("bt1", capabilities=[names.CAP_BACKTEST_CPU], worker_type="backtest",
                      handlers={"backtesting": handler, "backtest_block": handler.run_block,
                                monte_carlo: run_monte_carlo})
    source = (await api.post("/api/v1/backtests", json=backtest_params(parameters={"fast": 5}))).json()["op_id"]
    await wait_status(coordinator, source, OpStatus.COMPLETED)
    op_id = (await api.post("/api/v1/montecarlo", json={"source": source, "paths": 400})).json()["op_id"]
    await wait_status(coordinator, op_id, OpStatus.COMPLETED)

    await sign_in(browser, coordinator, f"/#/op/{op_id}")
    await browser.until("return document.querySelector('#result-view[data-kind=\"view\"] svg')",
                        what="the declared view's chart")
    cards = await browser.script("return [...document.querySelectorAll('#view-figures .card')]"
                                 ".map((c) => c.dataset.metric)")
    assert cards == ["paths", "median %", "p5 %", "p95 %"]
    bars = await browser.script("return [...document.querySelectorAll('#result-view svg rect')]"
                                ".map((r) => Number(r.getAttribute('height')))")
    assert len(bars) == BINS and max(bars) > 0
    rows = await browser.script("return [...document.querySelectorAll('#view-table-0 tbody tr')]"
                                ".map((r) => r.cells[0].textContent)")
    assert rows == ["p5", "p25", "p50", "p75", "p95"]
    await browser.click("#view-table-0 th:nth-child(2)")  # sortable, as every table of the page
    assert await browser.script("return document.querySelector('#view-table-0 th:nth-child(2)').dataset.sorted") \
        == "asc"
    await browser.screenshot("declared-view")
