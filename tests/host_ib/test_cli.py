"""``ktrdr ib status`` and ``ktrdr data fetch`` against a running IB host."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from typer.testing import CliRunner

from coordinator.app import Coordinator
from ktrdr.cli.ib import fetch
from ktrdr.natsd import NatsServer
from subjects.models import OpStatus
from tests.host_ib.conftest import MakeHost
from tests.ktrdr.cli.test_cli import finish, ktrdr


async def test_status_and_fetch(nats_server: NatsServer, coordinator: Coordinator, make_host: MakeHost,
                                tmp_path: Path) -> None:
    host = await make_host("ib1")
    await make_host("ib2", ib_client_id=2, wait_active=False)
    code, out = await finish(ktrdr(nats_server, "ib", "status", "--json"))
    assert code == 0, out
    status = json.loads(out[out.index("{"):])
    assert status["active"]["worker_id"] == "ib1" and status["active"]["ib"] == "connected"
    assert {h["worker_id"]: h["status"]["role"] for h in status["hosts"]} == {"ib1": "active", "ib2": "standby"}

    code, out = await finish(ktrdr(nats_server, "data", "fetch", "AAPL", "-t", "1h", "--start", "2024-01-01",
                                   "--end", "2024-01-03", "--mode", "full", "--follow", "--json"))
    assert code == 0, out
    op = json.loads(out[out.index("{"):])
    assert op["status"] == OpStatus.COMPLETED and op["result"]["stored_bars"] == 48
    assert len(host.store.load("AAPL", "1h")) == 48


def test_fetch_rejects_bad_params_before_submitting() -> None:
    app = typer.Typer()
    app.command()(fetch)
    result = CliRunner().invoke(app, ["AAPL", "--mode", "full"])
    assert result.exit_code == 2 and "mode full needs a start" in result.output
