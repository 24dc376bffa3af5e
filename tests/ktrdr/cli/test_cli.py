"""The ktrdr CLI against a running platform: follow, Ctrl-C cancel, JSON output, clear errors."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys

import httpx

from coordinator.app import Coordinator
from ktrdr.natsd import NatsServer
from subjects import names, roles
from subjects.models import OpStatus, SubmitRequest
from tests.conftest import ROOT, MakeWorker, role_env
from tests.support import assert_eventually, wait_status


def ktrdr(server: NatsServer, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, **role_env(roles.CLIENT), "KTRDR_NATS_URL": server.url, "COLUMNS": "200"}
    return subprocess.Popen([sys.executable, "-m", "ktrdr.cli.app", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


async def subscribed(server: NatsServer, subject: str) -> bool:
    """Whether any client subscribes to ``subject``, from the server's monitoring endpoint."""
    async with httpx.AsyncClient() as http:
        connz = (await http.get(f"http://127.0.0.1:{server.http_port}/connz", params={"subs": "1"})).json()
    return any(subject in (c.get("subscriptions_list") or []) for c in connz.get("connections", []))


async def finish(proc: subprocess.Popen[str], timeout: float = 30) -> tuple[int, str]:
    out, _ = await asyncio.to_thread(proc.communicate, timeout=timeout)
    return proc.returncode, out


async def test_follow_shows_a_running_op_to_its_end(nats_server: NatsServer, coordinator: Coordinator,
                                                    make_worker: MakeWorker) -> None:
    await make_worker("w1")
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 2, "steps": 4}))
    await wait_status(coordinator, op.op_id, OpStatus.RUNNING)
    code, out = await finish(ktrdr(nats_server, "ops", "follow", op.op_id))
    assert code == 0, out
    assert f"{op.op_id}: completed" in out
    assert "100%" in out


async def test_ctrl_c_on_a_followed_op_cancels_it(nats_server: NatsServer, coordinator: Coordinator,
                                                  make_worker: MakeWorker) -> None:
    await make_worker("w1")
    proc = ktrdr(nats_server, "dummy", "--duration", "60", "--follow")
    op = await assert_eventually(lambda: next(iter(coordinator.ops.all()), None), timeout=15)
    await wait_status(coordinator, op.op_id, OpStatus.RUNNING)
    # follow installs its Ctrl-C handler before it subscribes: once subscribed, it is ready.
    await assert_eventually(lambda: subscribed(nats_server, names.ops_progress(op.op_id, names.ANY_HOST)), timeout=15)
    proc.send_signal(signal.SIGINT)
    code, out = await finish(proc)
    assert code == 130, out
    assert "cancelling" in out and f"{op.op_id}: cancelled" in out
    assert coordinator.ops.get(op.op_id).status is OpStatus.CANCELLED  # type: ignore[union-attr]


async def test_read_commands_print_json(nats_server: NatsServer, coordinator: Coordinator,
                                        make_worker: MakeWorker) -> None:
    await make_worker("w1")
    code, out = await finish(ktrdr(nats_server, "dummy", "--duration", "0", "--follow", "--json"))
    assert code == 0, out
    op = json.loads(out[out.index("{"):])
    assert op["status"] == "completed"
    code, out = await finish(ktrdr(nats_server, "ops", "list", "--json"))
    assert json.loads(out)["total"] == 1
    code, out = await finish(ktrdr(nats_server, "workers", "--json"))
    assert [w["worker_id"] for w in json.loads(out)] == ["w1"]
    code, out = await finish(ktrdr(nats_server, "ops", "show", op["op_id"], "--json"))
    assert json.loads(out)["op_id"] == op["op_id"]


async def test_unknown_ids_and_a_missing_platform_are_clear_errors(nats_server: NatsServer,
                                                                   coordinator: Coordinator) -> None:
    code, out = await finish(ktrdr(nats_server, "ops", "show", "nope"))
    assert code == 2 and "unknown operation nope" in out
    code, out = await finish(ktrdr(nats_server, "ops", "cancel", "nope"))
    assert code == 2 and "unknown operation nope" in out
    for command in (("ops", "show"), ("ops", "cancel"), ("ops", "follow"), ("backtest", "show"), ("backtest", "plot")):
        code, out = await finish(ktrdr(nats_server, *command, "not.an.id"))
        assert code == 2 and "invalid operation id 'not.an.id'" in out and "Traceback" not in out, out
    await coordinator.stop()
    code, out = await finish(ktrdr(nats_server, "ops", "list"))
    assert code == 3 and "no coordinator is running" in out
