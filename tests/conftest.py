from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

import nats
from coordinator.app import Coordinator
from coordinator.settings import CoordinatorSettings
from ktrdr.dummy import run_dummy
from ktrdr.natsd import NatsServer
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.worker import Worker
from subjects import names
from tests.ktrdr.ib.fake_gateway import FakeGateway

ROOT = Path(__file__).resolve().parent.parent
# Short leases keep fault tests quick; the semantics are the same as with the defaults.
FAST = {"lease_ttl_s": 2.0, "heartbeat_s": 0.25}


async def bounded(awaitable: Awaitable[Any], what: str, timeout: float = 30.0) -> None:
    """Teardown that cannot hang the suite: on timeout, print every task's stack and fail.

    ``asyncio.wait`` rather than ``wait_for``: the latter waits for a cancelled task to finish,
    which is exactly what never happens when a stop hangs.
    """
    task = asyncio.ensure_future(awaitable)
    done, _ = await asyncio.wait([task], timeout=timeout)
    if task in done:
        task.result()
        return
    for other in asyncio.all_tasks():
        print(f"--- {other!r}", file=sys.stderr)
        other.print_stack(file=sys.stderr)
    task.cancel()
    raise AssertionError(f"{what} did not stop within {timeout} s")


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream for each test: free ports, temporary store."""
    server = NatsServer(store_dir=tmp_path / "nats", http_port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    """The fake TWS gateway (tests/ktrdr/ib/fake_gateway.py) on a free loopback port."""
    gw = FakeGateway()
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[Client]:
    client = await nats.connect(nats_server.url)
    try:
        yield client
    finally:
        await bounded(client.drain(), "the test's NATS client")


def coordinator_settings(url: str, **overrides: Any) -> CoordinatorSettings:
    values: dict[str, Any] = {"nats_url": url, "api_port": 0, "gpu_fallback_timeout_s": 1.0,
                              "cancel_fallback_reply_s": 0.3, **FAST}
    values.update(overrides)
    return CoordinatorSettings(**values)


@pytest.fixture
async def coordinator(nats_server: NatsServer) -> AsyncIterator[Coordinator]:
    c = Coordinator(settings=coordinator_settings(nats_server.url))
    await c.start()
    try:
        yield c
    finally:
        await bounded(c.stop(), "the coordinator")


MakeWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def make_worker(nats_server: NatsServer) -> AsyncIterator[MakeWorker]:
    """Start in-process workers: ``await make_worker("w1", capabilities=[...], gpu=True)``."""
    started: list[Worker] = []

    async def make(worker_id: str, *, capabilities: list[str] | None = None, slots: int = 1,
                   gpu: bool = False, handlers: dict[str, Any] | None = None, worker_type: str = "test",
                   **settings: Any) -> Worker:
        """Handlers default to the dummy handler for every kind the capabilities name."""
        caps = capabilities or [names.CAP_DUMMY_ANY]
        kinds = {c.split(".")[0] for c in caps}
        worker = Worker(
            settings=WorkerSettings(nats_url=nats_server.url, worker_id=worker_id,
                                    **{**FAST, "fetch_timeout_s": 0.3, "grace_s": 1.0, **settings}),
            worker_type=worker_type, capabilities=caps,
            handlers={**dict.fromkeys(kinds, run_dummy), **(handlers or {})}, slots=slots, gpu=gpu)
        await worker.start()
        started.append(worker)
        return worker

    yield make
    for worker in started:
        await bounded(worker.stop(), f"worker {worker.worker_id}")


SpawnWorker = Callable[..., subprocess.Popen[bytes]]


@pytest.fixture
def spawn_worker(nats_server: NatsServer, tmp_path: Path) -> Iterator[SpawnWorker]:
    """Start a stand-in worker as a real process (to kill -9, SIGSTOP or SIGTERM it)."""
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(worker_id: str, *, capabilities: str = names.CAP_DUMMY_ANY, **env: str) -> subprocess.Popen[bytes]:
        full_env = {**os.environ, "KTRDR_NATS_URL": nats_server.url, "KTRDR_WORKER_ID": worker_id,
                    "KTRDR_EXTRA_CAPABILITIES": capabilities, "KTRDR_LEASE_TTL_S": str(FAST["lease_ttl_s"]),
                    "KTRDR_HEARTBEAT_S": str(FAST["heartbeat_s"]), "KTRDR_LOG_LEVEL": "INFO", **env}
        log = open(tmp_path / f"{worker_id}.log", "ab")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", "tests.standin_worker"], cwd=ROOT, env=full_env,
                                stdout=log, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    yield spawn
    for proc in procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        proc.wait()
