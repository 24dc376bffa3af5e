"""The dashboard in a real headless Chromium against a running platform: sign-in (and a pasted
sign-in link), workers and ops listed, a dummy op's progress moving live, cancel (confirmed first),
result pages that lead with their figures and charts then paged tables (a 548-trade backtest, a
walk-forward's folds), a training's loss and accuracy drawn live, model and dataset pages, pages that
fit a 390 px phone, a submit form made from each type's params schema, backtests ticked in the list
and compared, a sweep's heatmap over chosen parameters and its ranking sorted by a column."""

from __future__ import annotations

import asyncio
import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from nats.aio.client import Client

from coordinator.app import Coordinator
from subjects import names
from subjects.models import OpStatus
from tests.backtesting import backtest_params, backtest_worker, publish_synth
from tests.conftest import MakeWorker
from tests.coordinator.dashboard.conftest import Browser
from tests.coordinator.test_walkforward import params as walkforward_params
from tests.coordinator.test_walkforward import planted, publish
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
    # The link `ktrdr up` prints, pasted into this tab showing the sign-in form: signed in, no reload.
    await browser.script("window.notReloaded = true; location.hash = '#token=' + arguments[0];", coordinator.api_token)
    await browser.until("return document.getElementById('login').hidden && document.querySelector('#live.on')",
                        what="signed in from the pasted link")
    assert await browser.script("return window.notReloaded === true && location.hash === ''")
    assert await browser.text("#role") == "operator"


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
    # Cancel asks first: saying no leaves the op running.
    await browser.click("#cancel")
    await browser.until("return !document.getElementById('cancel-confirm').hidden"
                        " && document.getElementById('cancel').hidden", what="the confirm step")
    await browser.click("#cancel-no")
    await browser.until("return document.getElementById('cancel-confirm').hidden"
                        " && !document.getElementById('cancel').hidden", what="the question closed")
    await browser.click("#cancel")
    assert "Cancel this operation?" in await browser.text("#cancel-confirm")
    op = coordinator.ops.get(op_id)
    assert op is not None and op.status is OpStatus.RUNNING and op.cancel_reason is None
    await browser.click("#cancel-yes")
    await browser.until("return document.querySelector('#op-head[data-status=\"cancelled\"]')",
                        what="the op cancelled")
    assert (await wait_status(coordinator, op_id, OpStatus.CANCELLED)).cancel_reason == "cancelled from the dashboard"
    assert await browser.script("return document.getElementById('cancel') === null")
    timeline = await browser.text(".timeline")
    assert "started" in timeline and "w-dash-2" in timeline


def shown_time(ms: int) -> str:
    """A time as the page shows it (``when``): ``2020-05-04 20:00:00Z``."""
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def shown_window(start: str, end: str) -> str:
    """A window as the page shows it: ``2021-01-01 → 2021-01-20 23:00`` (midnight as the day alone)."""
    def day(iso: str) -> str:
        text = datetime.fromisoformat(iso).astimezone(UTC).strftime("%Y-%m-%d %H:%M")
        return text.removesuffix(" 00:00")
    return f"{day(start)} → {day(end)}"


def close_to(text: str, value: float) -> bool:
    number = shown_number(text)
    return number is not None and math.isclose(number, value, rel_tol=1e-3, abs_tol=1e-9)


async def top(browser: Browser, css: str) -> float:
    return float(await browser.script(
        "return document.querySelector(arguments[0]).getBoundingClientRect().top + scrollY", css))


# The page heights a 500-trade backtest's page had before its result led and its trades were paged.
BEFORE_PX = {1400: 17_832, 390: 39_236}


async def test_result_pages_lead_with_their_figures_and_charts_then_paged_tables_and_fit_a_phone(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client, tmp_path: Path, browser: Browser) -> None:
    """A backtest of 548 trades: its key figures, then its equity and drawdown beside buy and hold,
    then its last 500 trades 50 at a time; a walk-forward's folds in columns under a chart whose fold
    lines are numbered; a dataset's own page; every page no wider than a 390 px phone."""
    await publish_synth(nc, tmp_path / "publisher", bars=3000)
    await publish(nc, tmp_path / "wf-publisher", "WFA", planted())
    await backtest_worker(make_worker, "bt-dash", tmp_path / "worker-data")
    await backtest_worker(make_worker, "bt-dash-2", tmp_path / "worker-data-2")
    op_id = await submit(coordinator, "backtesting", backtest_params(parameters={"fast": 2, "slow": 3}))
    wf_id = await submit(coordinator, "walkforward", walkforward_params())
    done = await wait_status(coordinator, op_id, OpStatus.COMPLETED, timeout=60)
    wf = await wait_status(coordinator, wf_id, OpStatus.COMPLETED, timeout=90)
    assert done.result is not None and wf.result is not None
    metrics = done.result["metrics"]
    assert metrics["trades"] == 548
    async with httpx.AsyncClient(headers=auth_headers(coordinator)) as client:
        trades = (await client.get(url(coordinator, f"/api/v1/operations/{op_id}/chart"))).json()["trades"]["shown"]
        dataset = (await client.get(url(coordinator, "/api/v1/datasets/SYNTH/1h"))).json()
    assert len(trades) == 500

    await sign_in(browser, coordinator, f"/#/op/{op_id}")
    for kind in ("equity", "drawdown"):
        for series in ("strategy", "buy and hold"):
            length = await browser.until(
                "const p = document.querySelector(`svg.chart[data-kind=\"${arguments[0]}\"] "
                "path[data-series=\"${arguments[1]}\"]`); return p && p.getAttribute('d').length;",
                kind, series, what=f"the {series} {kind} line")
            assert length > 1000  # hundreds of points, not an empty or flat stub
    # Its key figures lead, as the record has them.
    cards = dict(await browser.script("return [...document.querySelectorAll('#headline .card')]"
                                      ".map((c) => [c.dataset.metric, c.querySelector('b').textContent])"))
    assert cards["total_return_pct"] == f"{metrics['total_return_pct']:+.2f} %"
    assert cards["sharpe_ratio"] == f"{metrics['sharpe_ratio']:.2f}"
    assert cards["max_drawdown_pct"] == f"{metrics['max_drawdown_pct']:.2f} %"
    assert cards["trades"] == "548" and cards["win_rate"] == f"{100 * metrics['win_rate']:.1f} %"
    assert "sma_crossover on SYNTH 1h" in await browser.text("#headline h2")
    # Figures, then charts, then the trades, then the record's details.
    order = [await top(browser, css) for css in ("#op-head", "#headline", "#result-view", "#result-tables #trades",
                                                   "#op-facts", ".timeline")]
    assert order == sorted(order), order
    # Trades 50 at a time, newest first, by time; the pager walks the 500 kept.
    first_cells = "return [...document.querySelectorAll('#trades tbody tr')].map((tr) => tr.children[0].textContent)"
    entries = await browser.script(first_cells)
    assert entries == [shown_time(t["entry_time_ms"]) for t in trades[::-1][:50]]
    assert await browser.text("#trades-shown") == "1–50 of 500"
    assert "Trades (548, the last 500 kept here)" in await browser.text("#result-tables h2")
    await browser.click("#trades-next")
    assert await browser.script(first_cells) == [shown_time(t["entry_time_ms"]) for t in trades[::-1][50:100]]
    assert await browser.text("#trades-shown") == "51–100 of 500"
    await browser.click("#trades-prev")
    assert await browser.script(first_cells) == entries
    assert await browser.script("return document.getElementById('trades-prev').disabled")
    heights = {1400: await browser.size()}
    assert heights[1400]["width"] <= heights[1400]["viewport"]
    await browser.screenshot("backtest")
    await browser.viewport(390)
    heights[390] = await browser.size()
    print(f"\na 548-trade backtest's page: {heights} (before: {BEFORE_PX})")
    for width, size in heights.items():
        assert size["height"] < BEFORE_PX[width] / 3, (width, size)
    assert heights[390]["width"] <= 390  # nothing wider than the phone: the trades scroll in their own box
    assert await browser.script("const box = document.querySelector('#trades').parentElement;"
                                "return getComputedStyle(box).overflowX === 'auto'"
                                " && box.clientWidth < box.scrollWidth;")

    # A walk-forward: its folds in columns, fitting 1,400 px; its fold lines numbered.
    await browser.viewport(1400)
    await browser.open(url(coordinator, f"/#/op/{wf_id}"))
    await browser.until("return document.querySelectorAll('#folds tbody tr').length === 3", what="the folds")
    heads = "return [...document.querySelectorAll('#folds thead th')].map((th) => th.textContent)"
    assert await browser.script(heads) == [
        "fold", "in sample", "out of sample", "chosen parameters", "in-sample total_return_pct",
        "out-of-sample total_return_pct", "oos return %", "oos trades", "warm-up bars"]
    rows = await browser.script("return [...document.querySelectorAll('#folds tbody tr')]"
                                ".map((tr) => [...tr.children].map((td) => td.textContent))")
    for row, fold in zip(rows, wf.result["folds"], strict=True):
        assert row[:4] == [str(fold["fold"]), shown_window(fold["in_start"], fold["in_end"]),
                           shown_window(fold["out_start"], fold["out_end"]),
                           " ".join(f"{k}={v}" for k, v in fold["chosen"].items())]
        assert close_to(row[4], fold["in_sample"]["total_return_pct"])
        assert close_to(row[5], fold["out_of_sample"]["total_return_pct"])
        assert close_to(row[6], fold["out_of_sample"]["total_return_pct"])
        assert row[7:] == [str(fold["out_of_sample"]["trades"]), str(fold["warmup_bars"])]
    fits = await browser.script("const t = document.getElementById('folds');"
                                "return [t.scrollWidth, t.parentElement.clientWidth, innerWidth];")
    assert fits[0] <= fits[1] <= fits[2], fits  # the whole table in view, no sideways scroll
    labels = await browser.script("return [...document.querySelectorAll('svg.chart[data-kind=\"equity\"] text.vlabel')]"
                                  ".map((t) => [t.textContent, Number(t.dataset.x)])")
    windows = wf.result["folds"]
    assert labels == [[f"fold {f['fold']}", datetime.fromisoformat(f["out_start"]).timestamp() * 1000] for f in windows]
    assert await browser.text("#headline .card[data-metric=efficiency] b") == f"{wf.result['efficiency']:.2f}"
    # A parent runs on the coordinator: its page says so rather than "none yet".
    assert "the coordinator runs it" in await browser.text("#attempts-none")
    await browser.screenshot("walkforward")
    await browser.viewport(390)
    assert (await browser.size())["width"] <= 390

    # A dataset's row opens its own page.
    await browser.open(url(coordinator, "/#/datasets"))
    await browser.until("return document.querySelector('tr[data-dataset=\"SYNTH/1h\"] td.num')"
                        " && !document.querySelector('tr[data-dataset=\"SYNTH/1h\"]').innerText.includes('–')",
                        what="the dataset's row summarised")
    assert (await browser.size())["width"] <= 390
    await browser.script("document.querySelector('tr[data-dataset=\"SYNTH/1h\"] td:nth-child(3)').click()")
    await browser.until("return document.querySelector('#dataset-facts')", what="the dataset's page")
    assert await browser.script("return location.hash") == "#/dataset/SYNTH/1h"
    facts = dict(await browser.script("return [...document.querySelectorAll('#dataset-facts tr')]"
                                      ".map((tr) => [tr.dataset.key, tr.querySelector('td').textContent])"))
    assert facts["symbol"] == "SYNTH" and facts["timeframe"] == "1h"
    assert facts["bars"] == "3,000" == f"{dataset['bars']:,}"
    assert facts["range"] == shown_window(dataset["start"], dataset["end"]) == "2020-01-01 → 2020-05-04 23:00"
    assert facts["gaps"] == f"{dataset['gaps']} ({dataset['unexpected']} not weekends)"
    await browser.screenshot("dataset-phone")
    assert "null" not in await browser.text("main")
    assert (await browser.size())["width"] <= 390
    await browser.open(url(coordinator, "/#/ops"))
    await browser.until("return document.querySelector('table.ops tbody tr[data-op-id]')", what="the operations")
    assert (await browser.size())["width"] <= 390


# (epoch, train loss, validation loss, train accuracy, validation accuracy) as a training reports them.
EPOCHS = [(1, 0.69, 0.7, 0.51, 0.5), (2, 0.61, 0.64, 0.58, 0.55), (3, 0.55, 0.6, 0.63, 0.57)]


def fake_training(release: asyncio.Queue[None]) -> Any:
    """A training handler reporting as the real one does (``ktrdr.training.trainer``: a report from
    within each epoch, then the epoch's figures), one epoch each time the test says so; then it
    stores a model and its history as ``worker_training.handler`` does."""

    async def training(ctx: Any, params: Any) -> dict[str, Any]:
        total = len(EPOCHS)
        ctx.progress(percentage=0.0, step="loading data", message="SYNTH 1h")
        for epoch, train_loss, val_loss, train_acc, val_acc in EPOCHS:
            await release.get()
            ctx.progress(percentage=100.0 * (epoch - 1 + 172 / 175) / total, step=f"epoch {epoch}/{total}",
                         items_done=172, items_total=175,
                         context={"epoch": epoch, "total_epochs": total, "batch": 172, "total_batches": 175,
                                  "running_train_loss": train_loss + 0.004})
            ctx.progress(percentage=100.0 * epoch / total, step=f"epoch {epoch}/{total}", steps_done=epoch,
                         steps_total=total, items_done=175, items_total=175,
                         message=f"epoch {epoch}: train loss {train_loss:.4f} acc {train_acc:.3f}",
                         context={"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss,
                                  "train_accuracy": train_acc, "val_accuracy": val_acc, "learning_rate": 0.001,
                                  "total_epochs": total, "device": "cpu"})
            if epoch == 2:
                ctx.info(last_checkpoint_epoch=2)
        await release.get()
        history = [{"epoch": e, "train_loss": tl, "val_loss": vl, "train_accuracy": ta, "val_accuracy": va,
                    "learning_rate": 0.001, "duration_s": 0.1} for e, tl, vl, ta, va in EPOCHS]
        metrics = {"test_accuracy": 0.57, "epochs_run": total, "best_val_loss": 0.6, "device": "cpu"}
        version = await ctx.models.save(params.model_name, b"a stand-in bundle", {
            "op_id": ctx.op_id, "attempt": ctx.attempt, "worker_id": ctx.worker_id, "strategy": params.strategy,
            "symbol": "SYNTH", "timeframes": ["1h"], "start": "2024-01-01 00:00:00+00:00",
            "end": "2024-03-01 00:00:00+00:00", "metrics": metrics, "feature_names": ["rsi_zone_low", "rsi_zone_high"]})
        model = f"{params.model_name}@{version}"
        await ctx.results.put(json.dumps({"format": "ktrdr.training.history/1", "model": model,
                                          "history": history}).encode(), description=f"training history of {model}")
        return {"model": model, "model_name": params.model_name, "model_version": version, "symbol": "SYNTH",
                "timeframes": ["1h"], "metrics": metrics}

    return training


PROGRESS_TEXT = "const t = (document.querySelector('#op-head .progress-text') || {}).textContent || '';"


async def test_a_training_draws_its_loss_and_accuracy_as_epochs_end_and_its_model_has_a_page(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client, tmp_path: Path, browser: Browser) -> None:
    await publish_synth(nc, tmp_path / "publisher", start="2023-12-01")  # admission finds the bars it trains on
    release: asyncio.Queue[None] = asyncio.Queue()
    await make_worker("w-train", capabilities=[names.CAP_TRAINING_CPU], handlers={"training": fake_training(release)})
    op_id = await submit(coordinator, "training", {"strategy": "neuro_mean_reversion", "epochs": 3,
                                                   "start": "2024-01-01"})
    await wait_status(coordinator, op_id, OpStatus.RUNNING)
    release.put_nowait(None)  # epoch 1 ends before the page opens: read from what the worker published

    await sign_in(browser, coordinator, f"/#/op/{op_id}")
    live = "#training-live svg.chart[data-kind=\"{}\"] path[data-series=\"{}\"]"
    count = ("const p = document.querySelector(arguments[0]);"
             "return p ? (p.getAttribute('d').match(/[ML]/g) || []).length : 0;")
    await browser.until("const el = document.querySelector('#training-live'); return el && el.dataset.epochs === '1'",
                        what="epoch 1 drawn when the page opens")
    assert await browser.script(count, live.format("loss", "train loss")) == 1
    assert await browser.until(PROGRESS_TEXT + "return t.startsWith('33 % · epoch 1/3') && t",
                               what="the progress naming the epoch") == "33 % · epoch 1/3 · loss 0.69 · val loss 0.70"
    await browser.script("window.notReloaded = true")
    for epoch in (2, 3):
        release.put_nowait(None)
        await browser.until("const el = document.querySelector('#training-live');"
                            "return el && el.dataset.epochs === arguments[0]", str(epoch),
                            what=f"epoch {epoch} drawn live")
        for kind, series in (("loss", "train loss"), ("loss", "validation loss"), ("accuracy", "train accuracy"),
                             ("accuracy", "validation accuracy")):
            assert await browser.script(count, live.format(kind, series)) == epoch, (kind, series)
        text = await browser.until(PROGRESS_TEXT + "return t.includes(arguments[0]) && t", f"epoch {epoch}/3 · loss",
                                   what=f"the progress at epoch {epoch}")
        assert f"epoch {epoch}/3 · loss {EPOCHS[epoch - 1][1]:.2f}" in text
        # The epoch axis counts: whole numbers only.
        ticks = await browser.script("return [...document.querySelectorAll("
                                     "'#training-live svg.chart[data-kind=\"loss\"] text.xtick')]"
                                     ".map((t) => t.textContent)")
        assert ticks and all(t.isdigit() for t in ticks), ticks
        assert [int(t) for t in ticks] == list(range(1, epoch + 1))
    await browser.screenshot("training-live")
    assert "Training, live: epoch 3 of 3" in await browser.text("#training-live h2")
    # The loss drawn is the loss reported: falling epoch by epoch (SVG y grows downwards), x in epoch order.
    d = await browser.script("return document.querySelector(arguments[0]).getAttribute('d')",
                             live.format("loss", "train loss"))
    xy = [tuple(map(float, p.split(","))) for p in re.split("[ML]", d) if p]
    assert [x for x, _ in xy] == sorted(x for x, _ in xy) and [y for _, y in xy] == sorted(y for _, y in xy)
    assert await browser.script("return window.notReloaded === true")

    release.put_nowait(None)
    await browser.until("return document.querySelector('#op-head[data-status=\"completed\"]')"
                        " && document.querySelector('#result-view svg.chart[data-kind=\"loss\"]')",
                        what="the completed training's stored history")
    assert await browser.script("return document.querySelector('#training-live') === null")
    final = "{} svg.chart[data-kind=\"{}\"] path[data-series=\"{}\"]"
    assert await browser.script(count, final.format("#result-view", "loss", "train loss")) == 3
    assert await browser.text("#headline .card[data-metric=test_accuracy] b") == "57.0 %"
    model = "neuro_mean_reversion@1"
    assert await browser.text("#headline .card[data-metric=model] b") == model
    # The info event's facts are in the timeline.
    assert "last_checkpoint_epoch=2" in await browser.text(".timeline li[data-event=info]")
    await browser.screenshot("training")

    # Its model's row opens the model's page: what trained it, its metrics, its loss per epoch.
    await browser.open(url(coordinator, "/#/models"))
    await browser.until("return document.querySelector(`tr[data-model=\"${arguments[0]}\"]`)", model,
                        what="the model's row")
    await browser.script("document.querySelector(`tr[data-model=\"${arguments[0]}\"] td:nth-child(2)`).click()", model)
    await browser.until("return document.querySelector('#model-history svg.chart[data-kind=\"loss\"]')",
                        what="the model's page with its training history")
    assert await browser.script("return location.hash") == "#/model/neuro_mean_reversion/1"
    facts = dict(await browser.script("return [...document.querySelectorAll('#model-facts tr')]"
                                      ".map((tr) => [tr.dataset.key, tr.querySelector('td').textContent])"))
    assert facts["model"] == model and facts["strategy"] == "neuro_mean_reversion" and facts["symbol"] == "SYNTH"
    assert facts["trained by"] == op_id and facts["training bars"] == "2024-01-01 → 2024-03-01"
    assert facts["timeframes"] == "1h" and facts["attempt / worker"] == "1 on w-train"
    assert facts["features"] == "2"
    shown = dict(await browser.script("return [...document.querySelectorAll('#model-metrics tr')]"
                                      ".map((tr) => [tr.dataset.key, tr.querySelector('td').textContent])"))
    assert shown == {"test_accuracy": "0.5700", "epochs_run": "3", "best_val_loss": "0.6000", "device": "cpu"}
    assert await browser.script(count, final.format("#model-history", "accuracy", "validation accuracy")) == 3
    await browser.screenshot("model")
    await browser.viewport(390)
    assert (await browser.size())["width"] <= 390


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
    # The submit form is made from each type's params schema: a dummy's duration and steps are numbers.
    form = "return [...document.querySelectorAll('#s-form label.field')].map((f) => [f.dataset.field," \
           " f.querySelector('[data-field]').type, !!f.querySelector('.required')])"
    assert await browser.script(form) == [["duration", "number", False], ["steps", "number", False],
                                          ["fail", "text", False]]
    assert await browser.script("const i = document.getElementById('s-field-steps');"
                                "return [i.step, i.min, i.max, i.placeholder]") == ["1", "1", "100000", "10"]
    await browser.script("for (const [k, v] of [['duration', '0'], ['steps', '3']]) {"
                         " const i = document.getElementById('s-field-' + k); i.value = v;"
                         " i.dispatchEvent(new Event('input', { bubbles: true })); }")
    assert await browser.text("#s-preview") == '{"duration":0,"steps":3}'
    await browser.click("#s-submit")
    made = await browser.until("const a = document.querySelector('#s-out a'); return a && a.textContent",
                               what="the op submitted from the form")
    assert (await wait_status(coordinator, made, OpStatus.COMPLETED)).params == {"duration": 0, "steps": 3,
                                                                                 "fail": False}
    # A backtest's required fields come first; a refusal is shown beside the field it names.
    await browser.script("const t = document.getElementById('s-type'); t.value = 'backtesting';"
                         "t.dispatchEvent(new Event('change'));")
    fields = await browser.script(form)
    assert fields[:3] == [["strategy", "text", True], ["symbol", "text", True], ["timeframe", "text", True]]
    assert ["include_curves", "checkbox", False] in fields and ["parameters", "textarea", False] in fields
    assert await browser.script("return [...document.querySelectorAll('#s-field-sizing option')]"
                                ".map((o) => o.textContent)") == ["fraction (default)", "all_cash"]
    await browser.script("for (const [k, v] of [['strategy', 'sma_crossover'], ['timeframe', '1h'],"
                         " ['parameters', '{\"fast\": 5}']]) {"
                         " const i = document.getElementById('s-field-' + k); i.value = v;"
                         " i.dispatchEvent(new Event('input', { bubbles: true })); }")
    assert json.loads(await browser.text("#s-preview")) == {"strategy": "sma_crossover", "timeframe": "1h",
                                                            "parameters": {"fast": 5}}
    async with httpx.AsyncClient(headers=auth_headers(coordinator)) as client:
        refused = (await client.post(url(coordinator, "/api/v1/operations"), json={
            "type": "backtesting", "params": {"strategy": "sma_crossover", "timeframe": "1h"}})).json()
    await browser.click("#s-submit")
    shown = await browser.until("const e = document.getElementById('s-field-symbol-error');"
                                "return !e.hidden && e.textContent", what="the refusal beside the symbol field")
    assert shown == next(d["message"] for d in refused["detail"] if d["field"].endswith("symbol"))
    assert await browser.script("return document.getElementById('s-field-symbol').classList.contains('invalid')")
    # A completed dummy stored no result to draw: its page does not ask for a chart (no 404 logged).
    await browser.open(url(coordinator, f"/#/op/{done}"))
    await browser.until("return document.querySelector('#op-head[data-status=\"completed\"]')"
                        " && document.querySelector('#attempts')", what="the dummy's page")
    assert await browser.script("return performance.getEntriesByType('resource')"
                                ".filter((e) => /\\/chart(\\?|$)/.test(e.name)).length") == 0
    # (It did ask for the rest of what the page shows.)
    assert await browser.script("return performance.getEntriesByType('resource')"
                                ".filter((e) => /\\/events(\\?|$)/.test(e.name)).length") >= 1
    assert not [e for e in await browser.call(browser.driver.get_log, "browser") if "404" in str(e.get("message"))]
    assert await browser.script("return document.querySelector('#headline') === null")  # a dummy has no figures


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
