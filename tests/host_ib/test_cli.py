"""``ktrdr ib status`` and ``ktrdr data fetch`` against a running IB host."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import typer
from typer.testing import CliRunner

from coordinator.app import Coordinator
from ktrdr.cli.data import fetch
from ktrdr.natsd import NatsServer
from subjects import roles
from subjects.models import OpStatus
from tests.conftest import ROOT, role_env
from tests.host_ib.conftest import MakeHost
from tests.ktrdr.cli.test_cli import finish, ktrdr
from tests.ktrdr.ib.fake_gateway import FakeGateway
from tests.support import assert_eventually


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


def ktrdr_80(server: NatsServer, *args: str) -> subprocess.Popen[str]:
    """``ktrdr`` in an 80-column terminal, stdout and stderr apart."""
    env = {**os.environ, **role_env(roles.CLIENT), "KTRDR_NATS_URL": server.url, "COLUMNS": "80"}
    return subprocess.Popen([sys.executable, "-m", "ktrdr.cli.app", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


async def run_80(server: NatsServer, *args: str) -> tuple[int, str, str]:
    proc = ktrdr_80(server, *args)
    out, err = await asyncio.to_thread(proc.communicate, timeout=30)
    return proc.returncode, out, err


def assert_fits_80(out: str) -> None:
    assert all(len(line) <= 80 for line in out.splitlines()), out


async def test_status_at_80_columns_shows_the_host_and_its_pacing_penalties(
        nats_server: NatsServer, coordinator: Coordinator, make_host: MakeHost) -> None:
    host = await make_host("ib1", ib_pacing_backoff_s=60.0)
    code, out, err = await run_80(nats_server, "ib", "status")
    assert code == 0, out + err
    assert_fits_80(out)
    rows = dict(line.split(None, 1) for line in out.splitlines() if line.startswith(("accounts", "IB ")))
    assert rows["accounts"].strip() == "DU1234567" and rows["IB"].startswith("connected at 127.0.0.1:")
    assert "pacing penalties  none" in out and "ib1  active  IB connected" in out

    # A penalty from IB (here as ib.bars would report it) is listed with its cause and its end.
    host.pacer.violation(contract="AAPL", code=162, message="Historical data request pacing violation",
                         source="ib.bars")
    code, out, err = await run_80(nats_server, "ib", "status")
    assert code == 0, out + err
    assert_fits_80(out)
    penalty = " ".join(out[out.index("pacing penalties"):out.index("last error")].split())
    assert re.search(r"AAPL: IB error 162 \(1 in a row\), met by ib.bars; ends \d\d:\d\d:\d\d UTC \(in 5\d\.\d s\)",
                     penalty), penalty


async def test_status_without_a_gateway_connection_exits_3_with_one_error_line(
        nats_server: NatsServer, coordinator: Coordinator, make_host: MakeHost, gateway: FakeGateway) -> None:
    host = await make_host("ib1")
    await gateway.stop()
    await assert_eventually(lambda: host.gateway.state == "disconnected", message="the host never noticed")
    code, out, err = await run_80(nats_server, "ib", "status")
    assert code == 3, out + err
    assert_fits_80(out)
    assert "disconnected" in out
    assert err.count("\n") == 1 and err.startswith("error: IB host ib1 has no gateway connection (disconnected")
    assert "Traceback" not in err


async def test_status_without_an_ib_host_exits_3_with_one_error_line(
        nats_server: NatsServer, coordinator: Coordinator) -> None:
    code, out, err = await run_80(nats_server, "ib", "status")
    assert code == 3, out + err
    assert err.count("\n") == 1 and "no active IB host answers ib.status" in err
    assert "Traceback" not in err
