"""The dashboard's routes over HTTP: the page holds no data, sign-in sets a cookie holding a
revocable session (never the token) that the guard accepts like the bearer token, the live stream
pushes changes and keeps slots for the operator, and the queue, event, training epoch, model, dataset
and chart views answer with bounded, correct data."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

import httpx
from nats.aio.client import Client

from coordinator.app import Coordinator
from coordinator.dashboard.charts import MAX_POINTS
from coordinator.dashboard.sessions import SESSION_TTL_S
from coordinator.guard import SESSION_COOKIE
from ktrdr.models import save_model
from ktrdr.natsd import NatsServer
from subjects import names
from subjects.models import OpStatus
from tests.backtesting import BARS, SYMBOL, TIMEFRAME, backtest_params, backtest_worker, publish_synth
from tests.conftest import MakeWorker, bounded, coordinator_settings
from tests.support import assert_eventually, wait_status


async def submit(api: httpx.AsyncClient, op_type: str, params: dict[str, Any]) -> str:
    reply = await api.post("/api/v1/operations", json={"type": op_type, "params": params})
    assert reply.status_code == 201, reply.text
    return str(reply.json()["op_id"])


async def test_the_page_and_its_assets_are_served_without_a_token_and_hold_no_data(
        anon: httpx.AsyncClient, coordinator: Coordinator) -> None:
    page = await anon.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert coordinator.api_token not in page.text
    for asset in ("/static/app.js", "/static/charts.js", "/static/app.css", "/favicon.ico"):
        assert (await anon.get(asset)).status_code == 200, asset
    assert (await anon.get("/dashboard")).headers["location"] == "/"
    # Only the assets: nothing beside them in the package.
    assert (await anon.get("/static/%2e%2e/routes.py")).status_code == 404
    assert (await anon.get("/api/v1/session")).status_code == 401


async def test_signing_in_sets_an_http_only_same_site_session_cookie_that_authorizes_like_the_token(
        anon: httpx.AsyncClient, coordinator: Coordinator) -> None:
    wrong = await anon.post("/api/v1/session", json={"token": "guess"})
    assert wrong.status_code == 401 and "set-cookie" not in wrong.headers
    assert (await anon.post("/api/v1/session", json={"token": "x" * 1_000})).status_code == 401
    # Anyone may post here: a body bigger than a token is refused before it is parsed.
    assert (await anon.post("/api/v1/session", json={"token": "x" * 100_000})).status_code == 413
    assert (await anon.post("/api/v1/session", json={"nothing": 1})).status_code == 422

    right = await anon.post("/api/v1/session", json={"token": coordinator.api_token})
    assert right.status_code == 200 and right.json() == {"role": "operator"}
    cookie = right.headers["set-cookie"]
    assert coordinator.api_token not in cookie
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    flags = cookie.lower()
    assert "httponly" in flags and "samesite=strict" in flags and "path=/" in flags
    assert f"max-age={int(SESSION_TTL_S)}" in flags and "secure" not in flags  # plain http: no Secure
    assert (await anon.get("/api/v1/session")).json() == {"role": "operator"}
    assert (await anon.get("/api/v1/workers")).status_code == 200

    # The guard's other checks hold for the cookie as for the header: another site's page is refused...
    foreign = await anon.get("/api/v1/workers", headers={"Origin": "http://evil.example"})
    assert foreign.status_code == 403
    # ...and a form post (no JSON content type) cannot act with it.
    form = await anon.post("/api/v1/operations", content=b'{"type":"dummy"}', headers={"Content-Type": "text/plain"})
    assert form.status_code == 415
    assert list(coordinator.ops.all()) == []

    session_id = anon.cookies[SESSION_COOKIE]
    assert (await anon.delete("/api/v1/session")).status_code == 204
    assert (await anon.get("/api/v1/workers")).status_code == 401
    # Signing out ended the session on the server: a copy of the cookie kept elsewhere is refused.
    replayed = await anon.get("/api/v1/workers", headers={"Cookie": f"{SESSION_COOKIE}={session_id}"})
    assert replayed.status_code == 401 and "sign in again" in replayed.json()["error"]


async def test_the_cookie_never_carries_a_token_and_one_left_by_earlier_versions_is_refused_and_cleared(
        anon: httpx.AsyncClient, coordinator: Coordinator) -> None:
    # A token where earlier versions kept it, or put in the session cookie, is not a session.
    assert coordinator.api_token is not None
    for name in ("ktrdr_token", SESSION_COOKIE):
        sent = {"Cookie": f"{name}={coordinator.api_token}"}
        assert (await anon.get("/api/v1/workers", headers=sent)).status_code == 401
    anon.cookies.set("ktrdr_token", coordinator.api_token)
    signed = await anon.post("/api/v1/session", json={"token": coordinator.api_token})
    cleared = [c for c in signed.headers.get_list("set-cookie") if c.startswith("ktrdr_token=")]
    assert cleared and "max-age=0" in cleared[0].lower()


async def test_each_sign_in_is_its_own_session_and_signing_out_ends_only_that_one(
        coordinator: Coordinator) -> None:
    base = f"http://127.0.0.1:{coordinator.api_port}"
    async with httpx.AsyncClient(base_url=base) as first, httpx.AsyncClient(base_url=base) as second:
        for page in (first, second):
            assert (await page.post("/api/v1/session", json={"token": coordinator.api_viewer_token})).status_code == 200
        assert first.cookies[SESSION_COOKIE] != second.cookies[SESSION_COOKIE]
        assert (await first.delete("/api/v1/session")).status_code == 204
        assert (await first.get("/api/v1/session")).status_code == 401
        assert (await second.get("/api/v1/session")).json() == {"role": "viewer"}


async def test_the_cookie_is_secure_when_a_trusted_proxy_says_the_request_came_over_tls(
        nats_server: NatsServer) -> None:
    proxied = Coordinator(settings=coordinator_settings(nats_server.url, api_trusted_proxies=["127.0.0.1"]))
    await proxied.start()
    try:
        base = f"http://127.0.0.1:{proxied.api_port}"
        https = {"X-Forwarded-Proto": "https"}
        async with httpx.AsyncClient(base_url=base) as page:
            signed = await page.post("/api/v1/session", json={"token": proxied.api_token}, headers=https)
            assert "secure" in signed.headers["set-cookie"].lower()
            plain = await page.post("/api/v1/session", json={"token": proxied.api_token})
            assert "secure" not in plain.headers["set-cookie"].lower()
            # Behind the proxy the page's origin is https://<host>: its own, not a foreign one.
            own = {**https, "Origin": base.replace("http://", "https://")}
            assert (await page.get("/api/v1/session", headers=own)).status_code == 200
            assert (await page.get("/api/v1/session", headers={"Origin": own["Origin"]})).status_code == 403
    finally:
        await bounded(proxied.stop(), "the proxied coordinator")


async def test_x_forwarded_proto_from_an_untrusted_address_is_ignored(
        anon: httpx.AsyncClient, coordinator: Coordinator) -> None:
    signed = await anon.post("/api/v1/session", json={"token": coordinator.api_token},
                             headers={"X-Forwarded-Proto": "https"})
    assert signed.status_code == 200 and "secure" not in signed.headers["set-cookie"].lower()


async def test_a_viewer_cookie_reads_but_cannot_cancel_or_submit(
        anon: httpx.AsyncClient, coordinator: Coordinator) -> None:
    signed = await anon.post("/api/v1/session", json={"token": coordinator.api_viewer_token})
    assert signed.json() == {"role": "viewer"}
    assert (await anon.get("/api/v1/operations")).status_code == 200
    assert (await anon.post("/api/v1/operations", json={"type": "dummy"})).status_code == 403
    assert (await anon.delete("/api/v1/operations/dummy-1")).status_code == 403


async def read_events(response: httpx.Response, into: list[tuple[str, Any]]) -> None:
    name = None
    async for line in response.aiter_lines():
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: ") and name is not None:
            into.append((name, json.loads(line[6:])))
            name = None


async def test_the_stream_pushes_op_and_worker_changes_as_they_happen(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker) -> None:
    events: list[tuple[str, Any]] = []
    async with api.stream("GET", "/api/v1/stream") as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        reader = asyncio.create_task(read_events(response, events))
        try:
            await assert_eventually(lambda: any(n == "hello" for n, _ in events), message="the hello event")
            assert "ktrdr_dashboard_streams 1.0" in (await api.get("/metrics")).text
            await make_worker("w-live")
            op_id = await submit(api, "dummy", {"duration": 0.5, "steps": 5})

            def statuses() -> list[str]:
                return [o["status"] for n, batch in events if n == "ops" for o in batch if o["op_id"] == op_id]

            await assert_eventually(lambda: "completed" in statuses(), message="the op completed on the stream")
            assert statuses()[0] in ("pending", "running")
            workers = [w["worker_id"] for n, d in events if n == "workers" for w in d["changed"]]
            assert "w-live" in workers
            # Progress arrives coalesced: fewer batches than the op's changes, each op once per batch.
            for name, batch in events:
                if name == "ops":
                    assert len({o["op_id"] for o in batch}) == len(batch)
        finally:
            reader.cancel()
    await assert_eventually(lambda: coordinator.live.subscribers == 0, message="the stream's subscriber gone")


async def test_viewer_pages_hold_at_most_their_share_of_live_slots_and_never_starve_the_operator(
        anon: httpx.AsyncClient, api: httpx.AsyncClient, coordinator: Coordinator) -> None:
    live = coordinator.live
    live.max_subscribers, live.max_viewers = 4, 2
    viewer = {"Authorization": f"Bearer {coordinator.api_viewer_token}"}
    async with contextlib.AsyncExitStack() as streams:
        for _ in range(2):
            opened = await streams.enter_async_context(anon.stream("GET", "/api/v1/stream", headers=viewer))
            assert opened.status_code == 200
        refused = await anon.get("/api/v1/stream", headers=viewer)
        assert refused.status_code == 503 and "2 for the viewer role" in refused.json()["error"]
        # The operator's page still connects: the viewers' share is full, not the feed.
        for _ in range(2):
            opened = await streams.enter_async_context(api.stream("GET", "/api/v1/stream"))
            assert opened.status_code == 200
        assert (await api.get("/api/v1/stream")).status_code == 503
        assert live.subscribers == 4
    # Pages gone, slots given back.
    await assert_eventually(lambda: live.subscribers == 0, message="the live slots given back")
    async with anon.stream("GET", "/api/v1/stream", headers=viewer) as again:
        assert again.status_code == 200


async def test_queues_show_waiting_jobs_and_how_long_the_oldest_has_waited(
        api: httpx.AsyncClient, coordinator: Coordinator) -> None:
    op_id = await submit(api, "dummy", {"duration": 0})  # no worker: it waits

    async def waiting() -> dict[str, Any] | None:
        rows = (await api.get("/api/v1/queues")).json()["queues"]
        row = next(r for r in rows if r["subject"] == "jobs.dummy.any")
        return row if row["pending"] == 1 and row["oldest_wait_s"] is not None else None

    row = await assert_eventually(waiting, message="the job waiting in its queue")
    assert 0 <= row["oldest_wait_s"] < 60
    body = (await api.get("/api/v1/queues")).json()
    assert body["ops"]["pending"] == 1
    assert coordinator.ops.get(op_id) is not None


async def test_an_ops_events_are_its_lifecycle_in_order_and_unknown_ids_are_refused(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker) -> None:
    await make_worker("w-events")
    op_id = await submit(api, "dummy", {"duration": 0.1, "steps": 2})
    await wait_status(coordinator, op_id, OpStatus.COMPLETED)
    body = (await api.get(f"/api/v1/operations/{op_id}/events")).json()
    kinds = [e["event"] for e in body["events"]]
    assert kinds[0] == "started" and kinds[-1] == "completed"
    assert all(e["worker_id"] == "w-events" for e in body["events"])
    assert (await api.get("/api/v1/operations/dummy-000000000000/events")).status_code == 404
    # A malformed id is answered as GET /operations/{id} answers it, before any subject is built from it.
    assert ((await api.get("/api/v1/operations/bad$id/events")).status_code
            == (await api.get("/api/v1/operations/bad$id")).status_code == 404)


async def test_datasets_are_listed_and_summarised_and_a_backtests_chart_is_bounded(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    listed = (await api.get("/api/v1/datasets")).json()["datasets"]
    assert [(d["symbol"], d["timeframe"]) for d in listed] == [(SYMBOL, TIMEFRAME)]
    shown = (await api.get(f"/api/v1/datasets/{SYMBOL}/{TIMEFRAME}")).json()
    assert shown["bars"] == BARS and shown["start"].startswith("2020-01-01")
    # Summarised once: the list now carries it.
    assert (await api.get("/api/v1/datasets")).json()["datasets"][0]["bars"] == BARS
    assert (await api.get("/api/v1/datasets/NOPE/1h")).status_code == 404
    assert (await api.get("/api/v1/datasets/SYN/7q")).status_code == 422

    await backtest_worker(make_worker, "bt-chart", tmp_path / "worker-data")
    op_id = await submit(api, "backtesting", backtest_params())
    await wait_status(coordinator, op_id, OpStatus.COMPLETED, timeout=60)
    chart = (await api.get(f"/api/v1/operations/{op_id}/chart")).json()
    assert chart["kind"] == "backtest"
    curves = chart["curves"]
    assert len(curves["time_ms"]) <= MAX_POINTS
    assert set(curves) >= {"equity", "benchmark", "drawdown_pct", "benchmark_drawdown_pct"}
    assert max(curves["drawdown_pct"]) <= 0
    assert chart["trades"]["count"] == chart["metrics"]["trades"]
    assert all("entry_time_ms" in t for t in chart["trades"]["shown"])
    assert (await api.get("/api/v1/models")).json() == {"total": 0, "models": []}


# A third parameter by its dotted path: the slow average's kind.
SWEEP3 = {"fast": [5, 10], "slow": [20, 40], "indicators.slow.type": ["sma", "ema"]}


async def test_a_sweeps_heatmap_is_drawn_over_the_two_parameters_asked_for_and_others_are_refused(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")
    await backtest_worker(make_worker, "bt-heat", tmp_path / "worker-data")
    op_id = await submit(api, "sweep", backtest_params(grid=SWEEP3, metric="total_return_pct"))
    done = await wait_status(coordinator, op_id, OpStatus.COMPLETED, OpStatus.FAILED, timeout=60)
    assert done.status is OpStatus.COMPLETED, done.error
    ranking = json.loads((await api.get(f"/api/v1/operations/{op_id}/results")).content)["ranking"]
    assert len(ranking) == 8

    first = (await api.get(f"/api/v1/operations/{op_id}/chart")).json()["heatmap"]
    assert (first["x"], first["y"], first["parameters"]) == ("fast", "slow", list(SWEEP3))
    assert first["rest"] == ["indicators.slow.type"]

    chosen = (await api.get(f"/api/v1/operations/{op_id}/chart",
                            params={"x": "indicators.slow.type", "y": "fast"})).json()["heatmap"]
    assert (chosen["x"], chosen["y"], chosen["rest"]) == ("indicators.slow.type", "fast", ["slow"])
    assert (chosen["x_values"], chosen["y_values"]) == (["sma", "ema"], [5, 10])
    # Each cell: the best return over the slow periods, the same number as that variant's in the ranking.
    for row, fast in enumerate([5, 10]):
        for col, kind in enumerate(["sma", "ema"]):
            best = max(r["metrics"]["total_return_pct"] for r in ranking
                       if r["parameters"]["fast"] == fast and r["parameters"]["indicators.slow.type"] == kind)
            assert chosen["cells"][row][col] == best

    for query, field in (({"x": "nope", "y": "fast"}, "x"), ({"x": "fast", "y": "slow "}, "y"),
                         ({"x": "slow", "y": "slow"}, "y"), ({"x": "fast"}, "y")):
        reply = await api.get(f"/api/v1/operations/{op_id}/chart", params=query)
        assert reply.status_code == 422, (query, reply.text)
        body = reply.json()
        assert body["detail"][0]["field"] == field
        assert "fast, slow, indicators.slow.type" in body["error"]
    # Only a sweep has a heatmap: its full run, a backtest, refuses axes.
    backtest_id = ranking[0]["op_id"] or next(r["op_id"] for r in ranking if r["op_id"])
    reply = await api.get(f"/api/v1/operations/{backtest_id}/chart", params={"x": "fast", "y": "slow"})
    assert reply.status_code == 422 and "not a sweep" in reply.json()["error"]


async def test_a_trainings_epochs_are_read_from_its_progress_and_a_models_page_from_its_metadata(
        api: httpx.AsyncClient, coordinator: Coordinator, make_worker: MakeWorker, nc: Client,
        tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")  # admission finds the bars it would train on
    reported = [(1, 0.7), (2, 0.6), (3, 0.5), (2, 0.65)]  # then epoch 2 again: an attempt that started over

    async def training(ctx: Any, params: Any) -> None:
        for epoch, loss in reported:
            ctx.progress(percentage=10.0 * epoch, step=f"epoch {epoch}/3", items_done=5, items_total=9,
                         context={"epoch": epoch, "total_epochs": 3, "running_train_loss": loss + 0.1})
            await ctx.sleep(0.15)  # reports closer than PROGRESS_INTERVAL_S are coalesced: keep each
            ctx.progress(percentage=10.0 * epoch, step=f"epoch {epoch}/3",
                         context={"epoch": epoch, "total_epochs": 3, "train_loss": loss, "val_loss": loss + 0.05,
                                  "train_accuracy": 1 - loss, "val_accuracy": float("nan")})
            await ctx.sleep(0.15)
        raise RuntimeError("stops here")

    await make_worker("w-epochs", capabilities=[names.CAP_TRAINING_CPU], handlers={"training": training})
    op_id = await submit(api, "training", {"strategy": "neuro_mean_reversion", "epochs": 3})
    await wait_status(coordinator, op_id, OpStatus.FAILED, timeout=30)
    body = (await api.get(f"/api/v1/operations/{op_id}/epochs")).json()
    assert body["total_epochs"] == 3 and body["more"] is False
    # Within-epoch reports are not epochs; the epochs after one reported again are dropped.
    assert body["epochs"] == [{"epoch": epoch, "attempt": 1, "train_loss": loss, "val_loss": loss + 0.05,
                               "train_accuracy": 1 - loss, "val_accuracy": None}
                              for epoch, loss in ((1, 0.7), (2, 0.65))]
    # Only what came after an earlier answer, when asked from its last sequence.
    later = (await api.get(f"/api/v1/operations/{op_id}/epochs", params={"since": body["last_seq"]})).json()
    assert later["epochs"] == [] and later["last_seq"] == body["last_seq"]
    assert (await api.get(f"/api/v1/operations/{op_id}/epochs", params={"since": "-1"})).status_code == 422
    assert (await api.get("/api/v1/operations/training-000000000000/epochs")).status_code == 404

    await save_model(nc.jetstream(), "m", b"bundle", {"op_id": op_id, "symbol": "SYNTH", "nested": {"k": [1, 2]},
                                                      "timeframes": ["1h", "4h"],
                                                      "metrics": {"test_accuracy": 0.6}, "feature_names": ["a", "b"]})
    model = (await api.get("/api/v1/models/m/1")).json()
    assert model["ref"] == "m@1" and model["op_id"] == op_id and model["metrics"] == {"test_accuracy": 0.6}
    assert model["feature_names"] == ["a", "b"] and model["features"] == 2
    assert model["metadata"]["symbol"] == "SYNTH" and model["metadata"]["nested"] == '{"k": [1, 2]}'
    assert model["metadata"]["timeframes"] == ["1h", "4h"]
    assert (await api.get("/api/v1/models/m/latest")).json()["ref"] == "m@1"
    missing = await api.get("/api/v1/models/m/9")
    assert missing.status_code == 404 and "m@9" in missing.json()["error"]
    assert (await api.get("/api/v1/models/bad$name/1")).status_code == 422
