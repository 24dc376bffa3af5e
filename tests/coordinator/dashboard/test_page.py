"""The dashboard in a real headless Chromium against a running platform: sign-in, workers and ops
listed, a dummy op's progress moving live, cancel, a backtest's charts, backtests ticked in
the list and compared, a sweep's heatmap over chosen parameters and its ranking sorted by a column."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
from nats.aio.client import Client

from coordinator.app import Coordinator
from subjects.models import OpStatus
from tests.backtesting import backtest_params, backtest_worker, publish_synth
from tests.conftest import MakeWorker
from tests.coordinator.dashboard.conftest import Browser
from tests.support import auth_headers, wait_status


def url(coordinator: Coordinator, path: str = "/") -> str:
    return f"http://127.0.0.1:{coordinator.api_port}{path}"


async def submit(coordinator: Coordinator, op_type: str, params: dict[str, object]) -> str:
    async with httpx.AsyncClient(headers=auth_headers(coordinator)) as client:
        reply = await client.post(url(coordinator, "/api/v1/operations"), json={"type": op_type, "params": params})
    assert reply.status_code == 201, reply.text
    return str(reply.json()["op_id"])


async def sign_in(browser: Browser, coordinator: Coordinator, path: str = "/") -> None:
    """Signs in through the link `ktrdr up` prints, then opens ``path``."""
    await browser.open(url(coordinator) + f"#token={coordinator.api_token}")
    await browser.until("return document.getElementById('login').hidden && "
                        "document.getElementById('role').innerText.length > 0", what="the signed-in page")
    if path != "/":
        await browser.open(url(coordinator, path))
        await browser.until("return document.getElementById('role').innerText.length > 0", what="the page")


async def test_the_page_asks_for_the_token_once_and_keeps_a_session_in_a_cookie(
        coordinator: Coordinator, browser: Browser) -> None:
    await browser.open(url(coordinator))
    await browser.until("return !document.getElementById('login').hidden", what="the sign-in form")

    await browser.script("document.getElementById('token').value = 'not-the-token';"
                         "document.getElementById('login-form').requestSubmit();")
    assert "wrong token" in await browser.until(
        "return document.getElementById('login-error').innerText", what="the refusal")

    await browser.script("document.getElementById('token').value = arguments[0];"
                         "document.getElementById('login-form').requestSubmit();", coordinator.api_token)
    await browser.until("return document.getElementById('login').hidden", what="the form gone")
    # The role shows once the page has asked the API who it is signed in as, just after the form goes.
    assert await browser.until("return document.getElementById('role').innerText", what="the role") == "operator"
    # A session id is in an HttpOnly cookie: a reload needs no sign-in, and scripts cannot read it.
    await browser.open(url(coordinator))
    await browser.until("return document.querySelector('#live.on')", what="the live stream connected")
    assert await browser.script("return document.getElementById('login').hidden")
    assert "ktrdr_session" not in await browser.script("return document.cookie")
    # The browser keeps no copy of the token, only the session's id.
    cookies = await browser.call(browser.driver.get_cookies)
    cookie = next(c for c in cookies if c["name"] == "ktrdr_session")
    assert cookie["httpOnly"] and not cookie["secure"]  # plain http here: Secure needs TLS
    assert coordinator.api_token not in cookie["value"]
    await browser.click("#signout")
    await browser.until("return !document.getElementById('login').hidden", what="the form after signing out")
    # Signing out ended the session itself, not only the browser's copy of its id.
    async with httpx.AsyncClient(cookies={"ktrdr_session": cookie["value"]}) as replay:
        assert (await replay.get(url(coordinator, "/api/v1/workers"))).status_code == 401


async def test_workers_and_ops_are_listed_and_a_dummy_ops_progress_moves_live(
        coordinator: Coordinator, make_worker: MakeWorker, browser: Browser) -> None:
    await make_worker("w-dash-1")
    await sign_in(browser, coordinator)
    await browser.until("return document.querySelector('#workers tr[data-worker-id=\"w-dash-1\"]')",
                        what="the worker's row")
    op_id = await submit(coordinator, "dummy", {"duration": 4, "steps": 40})

    row = f'tr[data-op-id="{op_id}"]'
    # The row appears without a reload: pushed by the server.
    await browser.until("return document.querySelector(arguments[0])", row, what="the new op's row")
    seen: set[float] = set()
    for _ in range(3):
        value = await browser.until(
            "const bar = document.querySelector(arguments[0] + ' .bar');"
            "const v = bar && parseFloat(bar.dataset.progress);"
            "return v > 0 && v < 100 && !arguments[1].includes(v) ? v : null;", row, sorted(seen),
            what="the progress bar moving")
        seen.add(float(value))
    assert len(seen) == 3
    await browser.screenshot("overview")
    await browser.until("return document.querySelector(arguments[0] + ' [data-status=\"completed\"]')", row,
                        what="the op completed")
    # The worker's lease says it is free again at its next heartbeat, and the page shows it.
    await browser.until("const row = document.querySelector('#workers tr[data-worker-id=\"w-dash-1\"]');"
                        "return row && row.innerText.includes('idle') && row.innerText.includes('0/1');",
                        what="the worker idle again")


async def test_an_op_is_cancelled_from_its_page(
        coordinator: Coordinator, make_worker: MakeWorker, browser: Browser) -> None:
    await make_worker("w-dash-2")
    op_id = await submit(coordinator, "dummy", {"duration": 60, "steps": 60})
    await wait_status(coordinator, op_id, OpStatus.RUNNING)
    await sign_in(browser, coordinator, f"/#/op/{op_id}")
    await browser.until("return document.getElementById('cancel')", what="the cancel button")
    await browser.click("#cancel")
    await browser.until("return document.querySelector('#op-head[data-status=\"cancelled\"]')",
                        what="the op cancelled")
    assert (await wait_status(coordinator, op_id, OpStatus.CANCELLED)).cancel_reason == "cancelled from the dashboard"
    assert await browser.script("return document.getElementById('cancel') === null")
    timeline = await browser.text(".timeline")
    assert "started" in timeline and "w-dash-2" in timeline


async def test_a_backtests_page_draws_its_equity_and_drawdown_beside_buy_and_hold(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client, tmp_path: Path, browser: Browser) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    await backtest_worker(make_worker, "bt-dash", tmp_path / "worker-data")
    op_id = await submit(coordinator, "backtesting", backtest_params())
    await wait_status(coordinator, op_id, OpStatus.COMPLETED, timeout=60)

    await sign_in(browser, coordinator, f"/#/op/{op_id}")
    for kind in ("equity", "drawdown"):
        for series in ("strategy", "buy and hold"):
            length = await browser.until(
                "const p = document.querySelector(`svg.chart[data-kind=\"${arguments[0]}\"] "
                "path[data-series=\"${arguments[1]}\"]`); return p && p.getAttribute('d').length;",
                kind, series, what=f"the {series} {kind} line")
            assert length > 1000  # hundreds of points, not an empty or flat stub
    trades = await browser.script("return document.querySelectorAll('#trades tbody tr').length")
    assert trades > 0
    # Trades are shown by time, not by bar number.
    assert "2020-" in await browser.text("#trades tbody tr")
    await browser.screenshot("backtest")


async def test_operations_are_filtered_and_searched_on_the_server(
        coordinator: Coordinator, make_worker: MakeWorker, browser: Browser) -> None:
    await make_worker("w-dash-3", slots=2)
    failed = await submit(coordinator, "dummy", {"duration": 0, "fail": "planted"})
    done = await submit(coordinator, "dummy", {"duration": 0})
    await wait_status(coordinator, failed, OpStatus.FAILED)
    await wait_status(coordinator, done, OpStatus.COMPLETED)

    await sign_in(browser, coordinator, "/#/ops?status=failed")
    rows = "return [...document.querySelectorAll('table.ops tbody tr[data-op-id]')].map(r => r.dataset.opId)"
    assert await browser.until(rows + ".join(',') === arguments[0] || null", failed, what="only the failed op")
    await browser.script("const s = document.getElementById('f-status'); s.value = '';"
                         "s.dispatchEvent(new Event('change'));"
                         "const q = document.getElementById('f-search'); q.value = arguments[0];"
                         "q.dispatchEvent(new Event('input'));", done[-8:])
    assert await browser.until(rows + ".join(',') === arguments[0] || null", done, what="the op found by its id")


async def test_a_sweeps_page_shows_its_surface_neighbourhoods_and_why_a_variant_is_excluded(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client, tmp_path: Path, browser: Browser) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    await backtest_worker(make_worker, "bt-dash", tmp_path / "worker-data")
    # (20, 20) never trades: shown, never best, and said why.
    op_id = await submit(coordinator, "sweep", backtest_params(grid={"fast": [5, 20], "slow": [20, 60]},
                                                               metric="total_return_pct"))
    done = await wait_status(coordinator, op_id, OpStatus.COMPLETED, timeout=60)
    assert done.result is not None

    await sign_in(browser, coordinator, f"/#/op/{op_id}")
    await browser.until("return document.querySelectorAll('#heatmap tbody tr').length === 2", what="the heatmap")
    cells = await browser.script("return [...document.querySelectorAll('#heatmap tbody td')].map(td => td.textContent)")
    assert len(cells) == 4 and all(c != "" for c in cells)
    best = done.result["best"]
    row, col = [20, 60].index(best["parameters"]["slow"]), [5, 20].index(best["parameters"]["fast"])
    assert cells[2 * row + col] == await browser.script(
        "return [...document.querySelectorAll('#ranking tbody tr')][0].children[2].textContent")
    excluded = await browser.script(
        "return [...document.querySelectorAll('#ranking tbody tr')].map(tr => tr.lastChild.textContent)")
    assert "fewer than 1 trade (0)" in excluded
    await browser.screenshot("sweep")


async def test_backtests_are_compared_side_by_side_with_their_curves_overlaid(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client, tmp_path: Path, browser: Browser) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    await backtest_worker(make_worker, "bt-dash", tmp_path / "worker-data")
    ids = [await submit(coordinator, "backtesting", backtest_params(parameters={"fast": f, "slow": s}))
           for f, s in ((5, 20), (20, 100))]
    done = [await wait_status(coordinator, i, OpStatus.COMPLETED, timeout=60) for i in ids]

    await sign_in(browser, coordinator, f"/#/op/{ids[0]}")
    await browser.until("return document.querySelector('#compare-link')", what="the compare link")
    await browser.click("#compare-link")
    await browser.until("return document.querySelector('#compare-ids')", what="the compare page")
    assert await browser.script("return document.querySelector('#compare-ids').value") == f"{ids[0]},"
    await browser.open(url(coordinator, f"/#/compare?ids={ids[0]},{ids[1]}"))
    await browser.until("return document.querySelector('#compare-metrics tr[data-metric=\"trades\"]')",
                        what="the metrics side by side")
    trades = await browser.script("return [...document.querySelectorAll("
                                  "'#compare-metrics tr[data-metric=\"trades\"] td')].map(td => td.textContent)")
    assert trades == [str(op.result["metrics"]["trades"]) for op in done if op.result]  # type: ignore[index]
    for op_id in ids:
        length = await browser.script(
            "const p = document.querySelector("
            "`svg.chart[data-kind=\"compare\"] path[data-series=\"${arguments[0]}\"]`);"
            " return p && p.getAttribute('d').length;", op_id)
        assert length and length > 1000
    await browser.screenshot("compare")


def shown_number(text: str) -> float | None:
    """A number as the page shows it (``fmt``: thousands separators, 4 significant digits), or None for ``–``."""
    return None if text == "–" else float(text.replace(",", ""))


async def test_backtests_ticked_in_the_operations_list_are_compared_and_the_ticks_survive_live_updates(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client, tmp_path: Path, browser: Browser) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    await backtest_worker(make_worker, "bt-dash", tmp_path / "worker-data")
    await make_worker("w-dash-4")
    ids = [await submit(coordinator, "backtesting", backtest_params(parameters={"fast": f, "slow": s}))
           for f, s in ((5, 20), (20, 100))]
    dummy = await submit(coordinator, "dummy", {"duration": 0})
    for op_id in [*ids, dummy]:
        await wait_status(coordinator, op_id, OpStatus.COMPLETED, timeout=60)

    await sign_in(browser, coordinator, "/#/ops")
    pick = "return document.querySelector(`tr[data-op-id=\"${arguments[0]}\"] input.pick`)"
    await browser.until(f"{pick} && document.querySelector(`tr[data-op-id=\"${{arguments[1]}}\"]`)",
                        ids[1], dummy, what="the ops listed with boxes to tick")
    # Only backtests can be compared: the dummy op has no box.
    assert await browser.script(pick.replace("return", "return !"), dummy)
    assert await browser.script("return document.getElementById('compare-selected').disabled")
    await browser.script(f"{pick.replace('return ', 'const box = ')}; box.click();", ids[0])
    assert await browser.script("return document.getElementById('compare-selected').disabled")  # one is not enough
    # The list drawn again (a reload, as after a reconnect, then a live change of that row): still ticked.
    await browser.script("document.querySelector(`tr[data-op-id=\"${arguments[0]}\"]`).dataset.old = '1';"
                         "state.view.reload();", ids[0])
    checked = ("const row = document.querySelector(`tr[data-op-id=\"${arguments[0]}\"]`);"
               "return row && !row.dataset.old && row.querySelector('input.pick').checked;")
    assert await browser.until(checked, ids[0], what="the tick kept when the list is loaded again")
    await browser.script("document.querySelector(`tr[data-op-id=\"${arguments[0]}\"]`).dataset.old = '1';"
                         "api(`/api/v1/operations/${arguments[0]}`).then((op) => state.view.onOps([op]));", ids[0])
    assert await browser.until(checked, ids[0], what="the tick kept when a live change redraws the row")

    await browser.script(f"{pick.replace('return ', 'const box = ')}; box.click();", ids[1])
    assert "2 selected" in await browser.text("#compare-count")
    await browser.screenshot("ops-picked")
    await browser.click("#compare-selected:not([disabled])")
    await browser.until("return document.querySelector('#compare-metrics tr[data-metric]')",
                        what="the metrics side by side")
    assert await browser.script("return location.hash") == f"#/compare?ids={ids[0]},{ids[1]}"
    assert await browser.script("return [...document.querySelectorAll('#compare-metrics thead a')]"
                                ".map(a => a.textContent)") == ids
    shown = dict(await browser.script("return [...document.querySelectorAll('#compare-metrics tr[data-metric]')]"
                                      ".map(tr => [tr.dataset.metric, [...tr.querySelectorAll('td')]"
                                      ".map(td => td.textContent)])"))
    async with httpx.AsyncClient(headers=auth_headers(coordinator)) as client:
        found = (await client.get(url(coordinator, "/api/v1/backtests/compare"),
                                  params={"ids": ",".join(ids)})).json()["metrics"]
    assert list(shown) == list(found)
    for name, values in found.items():
        for op_id, text in zip(ids, shown[name], strict=True):
            value = values[op_id]
            if isinstance(value, int | float) and not isinstance(value, bool):
                number = shown_number(text)
                assert number is not None and math.isclose(number, value, rel_tol=1e-3, abs_tol=1e-9), (name, text)
            else:
                assert text == ("–" if value is None else str(value).lower() if isinstance(value, bool)
                                else str(value)), (name, text)


async def test_a_sweeps_heatmap_is_drawn_over_the_parameters_chosen_and_its_ranking_sorts_by_any_column(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client, tmp_path: Path, browser: Browser) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    await backtest_worker(make_worker, "bt-dash", tmp_path / "worker-data")
    grid = {"fast": [5, 10], "slow": [20, 40], "indicators.slow.type": ["sma", "ema"]}
    op_id = await submit(coordinator, "sweep", backtest_params(grid=grid, metric="total_return_pct"))
    await wait_status(coordinator, op_id, OpStatus.COMPLETED, timeout=60)
    async with httpx.AsyncClient(headers=auth_headers(coordinator)) as client:
        ranking = (await client.get(url(coordinator, f"/api/v1/operations/{op_id}/results"))).json()["ranking"]

    await sign_in(browser, coordinator, f"/#/op/{op_id}")
    await browser.until("return document.querySelector('#heatmap[data-x=\"fast\"][data-y=\"slow\"]')",
                        what="the heatmap over the first two parameters")
    assert await browser.script("return [...document.querySelectorAll('#heatmap-x option')].map(o => o.value)") \
        == list(grid)
    assert "over indicators.slow.type" in await browser.text("#heatmap-rest")
    await browser.script("const x = document.getElementById('heatmap-x'); x.value = 'indicators.slow.type';"
                         "x.dispatchEvent(new Event('change'));")
    await browser.until("return document.querySelector('#heatmap[data-x=\"indicators.slow.type\"][data-y=\"slow\"]')",
                        what="the heatmap over the kind of average and the slow period")
    head = await browser.script("return [...document.querySelectorAll('#heatmap thead th')].map(th => th.textContent)")
    assert head == ["slow \\ indicators.slow.type", "sma", "ema"]
    assert "over fast" in await browser.text("#heatmap-rest")
    cells = await browser.script("return [...document.querySelectorAll('#heatmap tbody tr')]"
                                 ".map(tr => [...tr.querySelectorAll('td')].map(td => td.textContent))")
    # A cell is its best variant's return, as the ranking shows it.
    cell = [r for r in ranking if (r["parameters"]["slow"], r["parameters"]["indicators.slow.type"]) == (40, "ema")]
    best = max(cell, key=lambda r: r["metrics"]["total_return_pct"])
    label = " ".join(f"{k}={v}" for k, v in best["parameters"].items())
    assert cells[1][1] == await browser.script(
        "return [...document.querySelectorAll('#ranking tbody tr')].find(tr => tr.children[1].textContent"
        " === arguments[0]).children[2].textContent", label)
    # The same parameter on both axes is not asked for: the other axis takes the one left.
    await browser.script("const y = document.getElementById('heatmap-y'); y.value = 'indicators.slow.type';"
                         "y.dispatchEvent(new Event('change'));")
    await browser.until("return document.querySelector('#heatmap[data-x=\"slow\"][data-y=\"indicators.slow.type\"]')",
                        what="the axes swapped")

    column = ("return [...document.querySelectorAll('#ranking tbody tr')]"
              ".map(tr => tr.children[arguments[0]].dataset.sort)")
    assert await browser.script(column, 0) == [str(i) for i in range(1, 9)]
    trades = sorted(r["metrics"]["trades"] for r in ranking)
    for arrow in ("asc", "desc"):
        await browser.script("document.querySelectorAll('#ranking thead th')[6].click()")
        assert await browser.script("return document.querySelectorAll('#ranking thead th')[6].dataset.sorted") == arrow
        shown = [int(v) for v in await browser.script(column, 6)]
        assert shown == (trades if arrow == "asc" else trades[::-1])
        # Whole rows moved: each row's rank still goes with its own variant's trades.
        ranks = [int(v) for v in await browser.script(column, 0)]
        by_rank = {r["rank"]: r for r in ranking}
        assert [by_rank[r]["metrics"]["trades"] for r in ranks] == shown
    assert ranks != list(range(1, 9))
    # Numbers by value, not as text (9 < 10 < 100), and empty cells last whichever way.
    assert await browser.script(
        "const rows = [10, null, 9, 100].map((v) => h('tr', {}, numCell(v)));"
        "const t = sortable(table([{ label: 'n', num: true }], rows));"
        "const order = () => { t.tHead.rows[0].cells[0].click();"
        " return [...t.tBodies[0].rows].map((tr) => tr.textContent); };"
        "return [order(), order()];") == [["9", "10", "100", "–"], ["100", "10", "9", "–"]]
    # The arrow is drawn beside the header sorted by, and only there.
    assert await browser.script("return getComputedStyle(document.querySelectorAll('#ranking thead th')[6],"
                                " '::after').content") == '" ▼"'
    assert await browser.script("return document.querySelectorAll('#ranking thead th[data-sorted]').length") == 1
    await browser.screenshot("sweep-axes")
