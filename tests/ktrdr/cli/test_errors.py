"""Every error is one line on stderr, ``error: ...``, with the exit code saying whose it is: 2 for a bad
request or an unknown id, 3 for a platform that is not there. No tracebacks, and no waiting."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from coordinator.app import Coordinator
from ktrdr.natsd import NatsServer, free_port
from subjects import names, roles
from subjects.models import OpStatus, SubmitRequest
from tests.conftest import ROOT, MakeWorker, role_env
from tests.ktrdr.cli.running import cli, error_lines
from tests.ktrdr.cli.test_cli import subscribed
from tests.support import assert_eventually, wait_status

NOBODY = f"nats://127.0.0.1:{free_port()}"


async def test_a_platform_that_is_down_is_one_error_line_on_stderr_and_exit_3() -> None:
    for command in (("ops", "list"), ("dummy", "--follow"), ("workers",), ("ops", "show", "dummy-123"),
                    ("backtest", "show", "backtesting-123"), ("models", "list")):
        done = await cli(None, *command, KTRDR_NATS_URL=NOBODY)
        assert done.returncode == 3, (command, done.stdout, done.stderr)
        assert done.stdout == ""
        assert error_lines(done) == [f"error: cannot reach NATS at {NOBODY}: nats: no servers available for "
                                     "connection (the URL from KTRDR_NATS_URL); is `ktrdr up` running? (`ktrdr "
                                     "context` shows where the CLI connects)"], command


async def test_usage_errors_are_one_line_naming_the_help_and_exit_2() -> None:
    for command, says in ((("ops", "show", "not.an.id"), "invalid operation id 'not.an.id'"),
                          (("ops", "lst"), "No such command 'lst'"),
                          (("data", "import", "/no/such.csv"), "'/no/such.csv' does not exist"),
                          (("ops", "list", "--limit", "x"), "Invalid value for '--limit'")):
        done = await cli(None, *command, KTRDR_NATS_URL=NOBODY)
        assert done.returncode == 2, (command, done.stderr)
        [line] = error_lines(done)
        assert line.startswith("error: ") and says in line and line.endswith("--help`)"), line


async def test_unknown_ids_are_one_error_line_and_exit_2(nats_server: NatsServer, coordinator: Coordinator) -> None:
    for command in (("ops", "show", "dummy-nope"), ("ops", "cancel", "dummy-nope"), ("backtest", "show", "dummy-nope"),
                    ("models", "show", "nope")):
        done = await cli(nats_server, *command)
        assert done.returncode == 2, (command, done.stdout, done.stderr)
        [line] = error_lines(done)
        assert line.startswith("error: ") and "nope" in line, line


async def test_a_platform_that_goes_away_mid_command_is_one_error_line_and_exit_3(
        nats_server: NatsServer, coordinator: Coordinator, make_worker: MakeWorker) -> None:
    await make_worker("w1")
    op = await coordinator.layer.submit(SubmitRequest(type="dummy", params={"duration": 60}))
    await wait_status(coordinator, op.op_id, OpStatus.RUNNING)
    env = {**os.environ, **role_env(roles.CLIENT), "KTRDR_NATS_URL": nats_server.url, "COLUMNS": "80"}
    proc = subprocess.Popen([sys.executable, "-m", "ktrdr.cli.app", "ops", "follow", op.op_id], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    await assert_eventually(lambda: subscribed(nats_server, names.ops_progress(op.op_id, names.ANY_HOST)), timeout=15)
    await coordinator.stop()
    nats_server.stop()
    _, err = await asyncio.to_thread(proc.communicate, timeout=60)
    nats_server.start()  # back, so that the worker stops as usual
    assert proc.returncode == 3, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith(f"error: lost the connection to NATS at {nats_server.url}"), err
    assert "Traceback" not in err


def test_output_piped_into_a_reader_that_stops_early_ends_without_a_traceback() -> None:
    # `ktrdr strategies list --json | head -c 10`, at its worst: the reader is gone before the first write.
    for command in (("strategies", "list", "--json"), ("ops", "types")):
        done = subprocess.Popen([sys.executable, "-m", "ktrdr.cli.app", *command], cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        assert done.stdout is not None and done.stderr is not None
        done.stdout.close()
        stderr = done.stderr.read().decode()
        assert done.wait(timeout=60) != 0 and stderr == "", (command, stderr)
