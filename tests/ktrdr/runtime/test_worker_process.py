"""A worker process as a user or a container runs it: where it finds the platform, what it says
while it cannot reach it, how it stops on a signal before it is connected, and its refusal when
its id is in use by another live process."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from coordinator.app import Coordinator
from ktrdr.client.context import Context, write_context
from ktrdr.natsd import NatsServer, free_port
from ktrdr.runtime.entry import EXIT_CONFIG, run_worker
from ktrdr.security.credentials import credential_path
from subjects import names, roles
from subjects.models import OpStatus, SubmitRequest
from tests.conftest import FAST, ROOT, SpawnWorker, creds, fleet, role_env
from tests.support import assert_eventually, wait_status


class Proc:
    """A worker process with its stderr (where it logs) in a file."""

    def __init__(self, tmp_path: Path, name: str, args: list[str], env: dict[str, str]) -> None:
        self.err = tmp_path / f"{name}.err"
        with open(self.err, "wb") as err:
            self.popen = subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                          stderr=err)

    def said(self) -> str:
        return self.err.read_text()

    def lines(self, text: str) -> list[str]:
        return [line for line in self.said().splitlines() if text in line]

    async def exited(self, within: float) -> int:
        await assert_eventually(lambda: self.popen.poll() is not None, timeout=within,
                                message=f"the worker did not exit: {self.said()[-2000:]}")
        return self.popen.returncode

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait()


def worker_env(**env: str) -> dict[str, str]:
    return {**os.environ, **role_env(roles.WORKER), "KTRDR_LEASE_TTL_S": str(FAST["lease_ttl_s"]),
            "KTRDR_HEARTBEAT_S": str(FAST["heartbeat_s"]), "KTRDR_LOG_LEVEL": "INFO", **env}


STANDIN = ["-m", "tests.standin_worker"]


async def test_an_unreachable_server_is_named_once_per_backoff_step_and_sigterm_ends_the_wait(
        tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    worker = Proc(tmp_path, "unreachable", STANDIN, worker_env(KTRDR_NATS_URL=url, KTRDR_WORKER_ID="lonely"))
    try:
        await assert_eventually(lambda: worker.lines("cannot reach NATS at"), timeout=30,
                                message="no line about the unreachable server")
        first = time.monotonic()
        await assert_eventually(lambda: time.monotonic() - first >= 3.0, timeout=5)  # a few back-off steps
        lines = worker.lines("cannot reach NATS at")
        for line in lines:
            assert f"{url} (from KTRDR_NATS_URL; credential {creds(roles.WORKER)})" in line, line
            assert "Connection refused" in line or "Connect call failed" in line, line
        # nats-py alone said it four times a second (12 lines); pauses of 0.25, 0.5, 1 and 2 s say it
        # at most 5 times in 3 s, each line with its pause.
        assert 2 <= len(lines) <= 5, lines
        pauses = [float(re.search(r"trying again in ([\d.]+) s", line).group(1)) for line in lines]  # type: ignore[union-attr]
        assert pauses == sorted(pauses) and pauses[-1] > pauses[0], pauses

        worker.popen.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert await worker.exited(within=5) == 0
        print(f"exited {time.monotonic() - signalled:.2f} s after SIGTERM, while not connected")
        assert "stopped before it started serving" in worker.said()
    finally:
        worker.kill()


async def test_sigint_ends_a_worker_waiting_for_the_coordinators_buckets(tmp_path: Path) -> None:
    # Connected, but no coordinator has made the streams and buckets yet: the worker waits for them.
    with NatsServer(store_dir=tmp_path / "nats", config_file=fleet().config) as bare:
        worker = Proc(tmp_path, "waiting", STANDIN, worker_env(KTRDR_NATS_URL=bare.url, KTRDR_WORKER_ID="early"))
        try:
            await assert_eventually(lambda: worker.lines("waiting"), timeout=30,
                                    message="the worker did not say it waits for the buckets")
            worker.popen.send_signal(signal.SIGINT)  # Ctrl-C
            assert await worker.exited(within=5) == 0
            assert "Traceback" not in worker.said()
        finally:
            worker.kill()


async def test_a_worker_id_in_use_is_refused_and_the_newcomer_takes_no_job(
        coordinator: Coordinator, spawn_worker: SpawnWorker, nats_server: NatsServer, tmp_path: Path) -> None:
    spawn_worker("dup")
    await assert_eventually(lambda: "dup" in coordinator.registry.workers, timeout=30)
    held = coordinator.registry.workers["dup"]
    busy = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 60, "steps": 60}))
    await wait_status(coordinator, busy.op_id, OpStatus.RUNNING, timeout=15)
    queued = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0}))

    twin = Proc(tmp_path, "twin", STANDIN, worker_env(KTRDR_NATS_URL=nats_server.url, KTRDR_WORKER_ID="dup",
                                                      KTRDR_EXTRA_CAPABILITIES=names.CAP_DUMMY_ANY))
    try:
        assert await twin.exited(within=30) == 3
    finally:
        twin.kill()
    said = twin.said()
    assert f"the coordinator refused worker dup: worker id dup is in use by another live process (pid {held.pid} " \
           f"on {held.host}" in said, said
    assert "KTRDR_WORKER_ID or KTRDR_WORKER_INDEX" in said
    # It held nothing: the queued op still waits for the busy worker, and the lease is the first process's.
    op = coordinator.ops.get(queued.op_id)
    assert op is not None and op.status is OpStatus.PENDING and op.worker_id is None
    assert coordinator.registry.workers["dup"].pid == held.pid
    assert coordinator.metrics.lease_expiries.labels(type="standin")._value.get() == 0


async def test_a_hand_run_worker_finds_the_platform_in_the_context_ktrdr_up_wrote(
        coordinator: Coordinator, nats_server: NatsServer, tmp_path: Path) -> None:
    # The host `ktrdr up` ran on: its worker key under KTRDR_HOME/auth, the CLI's context beside it,
    # naming the URL and the client's credential (not a worker's: it must not be used).
    home = tmp_path / "up-home"
    for role in (roles.WORKER, roles.CLIENT):
        credential_path(home / "auth", role).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(creds(role), credential_path(home / "auth", role))
    context = write_context(home, Context(name="default", nats_url=nats_server.url,
                                          nats_creds=str(credential_path(home / "auth", roles.CLIENT))))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KTRDR_")} | {
        "KTRDR_HOME": str(home), "KTRDR_LEASE_TTL_S": str(FAST["lease_ttl_s"]),
        "KTRDR_HEARTBEAT_S": str(FAST["heartbeat_s"])}
    worker = Proc(tmp_path, "hand-run", ["-m", "ktrdr.cli.app", "worker", "backtest"], env)
    try:
        found = await assert_eventually(
            lambda: [w for w in coordinator.registry.workers if w.endswith("-backtest-0")], timeout=60,
            message="the worker did not join from the context")
        op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0.2}))
        done = await wait_status(coordinator, op.op_id, OpStatus.COMPLETED, timeout=30)
        assert done.worker_id == found[0]
        assert f"from the context {context}" in worker.said()
        worker.popen.send_signal(signal.SIGTERM)
        assert await worker.exited(within=15) == 0
    finally:
        worker.kill()


def test_a_context_named_that_does_not_exist_stops_the_worker_with_code_2(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.delenv("KTRDR_NATS_URL", raising=False)
    monkeypatch.setenv("KTRDR_CONTEXT", "nowhere")

    def never(settings: object) -> object:
        raise AssertionError("built a worker without a platform")

    assert run_worker(never) == EXIT_CONFIG  # type: ignore[arg-type]
    assert any("no context" in r.getMessage() and "nowhere.json" in r.getMessage() for r in caplog.records)
