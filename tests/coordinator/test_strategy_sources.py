"""A strategy naming a path is refused on every way in, without reading the file: by admission
(HTTP and the NATS service: a 422, nothing queued) and by the worker for a job that skipped it."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client

from coordinator.app import Coordinator
from ktrdr.strategy import packaged_strategies, strategies_dir
from subjects import names
from subjects.models import OpEvent, OpEventKind, OpStatus, SubmitRequest, decode
from tests.backtesting import backtest_params, backtest_worker, publish_synth
from tests.conftest import MakeWorker
from tests.support import wait_status

SMA = (Path(__file__).parents[2] / "ktrdr" / "strategies" / "sma_crossover.yaml").read_text()


pytestmark = pytest.mark.usefixtures("sdir")


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A valid strategy outside the strategies directory, with a line no error may quote."""
    f = tmp_path / "outside.yaml"
    f.write_text(SMA + "# SECRET-LINE\n")
    return f


def generic(source: str) -> str:
    return (f"unknown strategy {source!r}: use a packaged name ({', '.join(packaged_strategies())}), "
            f"a file name in {strategies_dir()}, or YAML text")


@pytest.mark.parametrize("source", ["/etc/passwd", "/no/such/file", "../../../../../../../etc/passwd", "outside"])
async def test_a_backtest_naming_a_path_is_a_422_with_the_generic_message_and_queues_nothing(
        api: httpx.AsyncClient, coordinator: Coordinator, nc: Client, source: str) -> None:
    response = await api.post("/api/v1/backtests", json=backtest_params(strategy=source))
    assert response.status_code == 422, response.text
    assert response.json()["error"] == f"invalid strategy: {generic(source)}"
    assert "root:" not in response.text
    reply = await nc.request(f"{names.SERVICE_GROUP}.{names.SERVICE_SUBMIT}",
                             json.dumps({"type": "backtesting", "params": backtest_params(strategy=source)}).encode(),
                             timeout=5)
    assert reply.headers and reply.headers["Nats-Service-Error-Code"] == "422"
    assert generic(source) in reply.headers["Nats-Service-Error"]
    assert list(coordinator.ops.all()) == []
    assert (await nc.jetstream().stream_info(names.JOBS_STREAM)).state.messages == 0


async def test_an_absolute_path_to_a_valid_strategy_is_refused_but_its_name_in_the_dir_loads(
        api: httpx.AsyncClient, coordinator: Coordinator, nc: Client, sdir: Path, outside: Path,
        tmp_path: Path) -> None:
    await publish_synth(nc, tmp_path / "publisher")  # the bars the accepted one runs on are stored
    refused = await api.post("/api/v1/backtests", json=backtest_params(strategy=str(outside)))
    assert refused.status_code == 422 and "SECRET" not in refused.text
    assert refused.json()["error"] == f"invalid strategy: {generic(str(outside))}"
    (sdir / "mine.yaml").write_text(SMA)
    accepted = await api.post("/api/v1/backtests", json=backtest_params(strategy="mine"))
    assert accepted.status_code == 201, accepted.text


async def test_a_job_that_skipped_admission_naming_a_path_fails_with_the_generic_message(
        coordinator: Coordinator, make_worker: MakeWorker, nc: Client, tmp_path: Path, outside: Path) -> None:
    await backtest_worker(make_worker, "bt1", tmp_path / "bt1")
    # The dispatcher offers on the jobs subject without admission: the worker's loader must refuse.
    op = await coordinator.dispatcher.submit(SubmitRequest(type="backtesting",
                                                           params=backtest_params(strategy=str(outside))))
    failed = await wait_status(coordinator, op.op_id, OpStatus.FAILED, OpStatus.COMPLETED)
    assert failed.status is OpStatus.FAILED
    assert generic(str(outside)) in (failed.error or "") and "SECRET" not in (failed.error or "")
    # What went out on ops.<id>.events says the same and quotes nothing of the file.
    sub = await nc.jetstream().subscribe(names.ops_events(op.op_id, names.ANY_HOST), ordered_consumer=True)
    try:
        while True:
            event = decode(OpEvent, (await sub.next_msg(timeout=5)).data)
            if event.event is OpEventKind.FAILED:
                break
    finally:
        await sub.unsubscribe()
    assert generic(str(outside)) in (event.error or "") and "SECRET" not in event.model_dump_json()
