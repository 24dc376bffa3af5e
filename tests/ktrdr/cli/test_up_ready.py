"""`ktrdr up` says it is up, and writes the context, only once its coordinator answers; when the
coordinator never answers it says so, naming the coordinator's log, stops everything and exits 3."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

from ktrdr.natsd import free_port, port_open
from tests.conftest import ROOT
from tests.support import assert_eventually

# Put first on PYTHONPATH, it delays the coordinator's start as a loaded machine did (~18 s there).
SLOW_START = """\
import os, sys, time
if sys.orig_argv[-2:] == ["-m", "coordinator"]:
    time.sleep(float(os.environ["KTRDR_TEST_COORDINATOR_DELAY_S"]))
"""


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KTRDR_")}
    return env | {"KTRDR_HOME": str(home), "COLUMNS": "200", **extra}


def _up(home: Path, out: Path, *args: str, **env: str) -> subprocess.Popen[bytes]:
    with out.open("wb") as log:
        return subprocess.Popen([sys.executable, "-m", "ktrdr.cli.app", "up", "--backtest-workers", "0",
                                 "--training-workers", "0", "--no-gpu", *args], cwd=ROOT, env=_env(home, **env),
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(up: subprocess.Popen[bytes]) -> int:
    if up.poll() is None:
        os.killpg(up.pid, signal.SIGINT)  # as Ctrl-C does
    try:
        return up.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(up.pid, signal.SIGKILL)
        return up.wait()


async def test_up_says_it_is_up_only_once_its_slow_coordinator_answers(tmp_path: Path) -> None:
    (tmp_path / "slow").mkdir()
    (tmp_path / "slow" / "sitecustomize.py").write_text(SLOW_START)
    home, out, api_port = tmp_path / "home", tmp_path / "up.out", free_port()
    up = _up(home, out, "--nats-port", str(free_port()), "--api-port", str(api_port),
             PYTHONPATH=os.pathsep.join([str(tmp_path / "slow"), os.environ.get("PYTHONPATH", "")]),
             KTRDR_TEST_COORDINATOR_DELAY_S="4")
    try:
        await assert_eventually(lambda: up.poll() is not None or "ktrdr is up" in out.read_text(), timeout=90,
                                interval=0.05, message="ktrdr up never said it was up")
        # Asked the moment it says so, the coordinator answers: it was waited for, 4 s late as it was.
        async with httpx.AsyncClient() as http:
            health = await http.get(f"http://127.0.0.1:{api_port}/health")
        assert health.status_code == 200, health.text
        context = json.loads((home / "contexts" / "default.json").read_text())
        assert context["api_url"] == f"http://127.0.0.1:{api_port}"
        text = out.read_text()
        assert text.index("starting: waiting up to 120 s for the coordinator") < text.index("ktrdr is up")
        assert (home / "logs" / "coordinator.log").exists()
    finally:
        code = _stop(up)
    assert code == 0, out.read_text()[-3000:]


async def test_up_names_the_coordinators_log_and_stops_when_it_never_answers(tmp_path: Path) -> None:
    home, out, nats_port, api_port = tmp_path / "home", tmp_path / "up.out", free_port(), free_port()
    # A setting the coordinator refuses at start: it exits, is restarted, exits again, never answers.
    up = _up(home, out, "--nats-port", str(nats_port), "--api-port", str(api_port), "--ready-timeout", "3",
             KTRDR_MAX_ATTEMPTS="99")
    try:
        code = await asyncio.to_thread(up.wait, 60)
    finally:
        _stop(up)
    text = out.read_text()
    assert code == 3, text[-3000:]
    log = home / "logs" / "coordinator.log"
    [error] = [line for line in text.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: the coordinator did not answer at http://127.0.0.1:{api_port}/health within 3 s")
    assert f"see its log, {log}. Stopping everything." in error
    assert "max_attempts" in log.read_text()  # what the named log says is why
    assert "ktrdr is up" not in text and not (home / "contexts" / "default.json").exists()
    assert not port_open("127.0.0.1", nats_port), "the embedded nats-server was left running"
