from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.aio.client import Client

import nats
from coordinator.app import Coordinator
from coordinator.settings import CoordinatorSettings
from ktrdr.dummy import run_dummy
from ktrdr.natsd import NatsServer
from ktrdr.optypes import op_type, types_on
from ktrdr.optypes.dummy import DUMMY
from ktrdr.runtime.connection import NatsAuth
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.topology import ensure_topology
from ktrdr.runtime.worker import Worker
from ktrdr.security.fleet import Fleet, provision
from subjects import names, roles
from tests.ktrdr.ib.fake_gateway import FakeGateway
from tests.support import auth_headers, dummy_standin

ROOT = Path(__file__).resolve().parent.parent
# Short leases keep fault tests quick; the semantics are the same as with the defaults.
FAST = {"lease_ttl_s": 2.0, "heartbeat_s": 0.25}
IB_LOCK_TTL_S = 2.0

# Every test's nats-server runs the config `ktrdr up` generates: every connection authenticates
# with its role's credential and the server enforces the roles. Keys are made once per session.
_FLEET: Fleet | None = None


def pytest_configure(config: pytest.Config) -> None:
    global _FLEET
    _FLEET = provision(Path(tempfile.mkdtemp(prefix="ktrdr-test-fleet-")))


def pytest_unconfigure(config: pytest.Config) -> None:
    if _FLEET is not None:
        shutil.rmtree(_FLEET.home, ignore_errors=True)


def fleet() -> Fleet:
    assert _FLEET is not None, "pytest_configure makes the test fleet"
    return _FLEET


def creds(role: str) -> Path:
    """The credential file of ``role`` (what ``KTRDR_NATS_CREDS`` names)."""
    return fleet().credential_file(role)


def auth(role: str) -> NatsAuth:
    return NatsAuth(credential=fleet().credentials[role], credential_file=creds(role))


def role_env(role: str) -> dict[str, str]:
    return fleet().env(role)


async def connect_as(url: str, role: str, **options: Any) -> Client:
    """A plain nats-py connection holding ``role``'s credential, as any user of that role could make."""
    return await nats.connect(url, **{**auth(role).options(), **options})


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


@pytest.fixture(autouse=True)
def api_token_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's coordinator keeps its status API token in the test's folder, not in ~/.ktrdr."""
    path = tmp_path / "auth" / "api.token"
    monkeypatch.setenv("KTRDR_API_TOKEN_FILE", str(path))
    # And its other files (the operations index...), in a home of its own.
    monkeypatch.setenv("KTRDR_HOME", str(tmp_path / "home"))
    return path


@pytest.fixture
def sdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty strategies directory (KTRDR_STRATEGIES_DIR) for the test."""
    root = tmp_path / "strategies"
    root.mkdir()
    monkeypatch.setenv("KTRDR_STRATEGIES_DIR", str(root))
    return root


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A fresh nats-server with JetStream for each test (free ports, temporary store), enforcing the
    roles, with the streams and buckets a coordinator makes at its start already there."""
    server = NatsServer(store_dir=tmp_path / "nats", http_port=0, config_file=fleet().config)
    server.start()
    try:
        asyncio.run(_provision_topology(server.url))
        yield server
    finally:
        server.stop()


async def _provision_topology(url: str) -> None:
    nc = await connect_as(url, roles.COORDINATOR)
    try:
        await ensure_topology(nc.jetstream(), lease_ttl_s=FAST["lease_ttl_s"], ib_lock_ttl_s=IB_LOCK_TTL_S)
    finally:
        await nc.close()


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
    """The test's own connection: the coordinator's role, so that it can inspect and inject anything."""
    client = await connect_as(nats_server.url, roles.COORDINATOR)
    try:
        yield client
    finally:
        await bounded(client.drain(), "the test's NATS client")


def coordinator_settings(url: str, **overrides: Any) -> CoordinatorSettings:
    values: dict[str, Any] = {"nats_url": url, "nats_creds": creds(roles.COORDINATOR), "api_port": 0,
                              "gpu_fallback_timeout_s": 1.0, "ib_lock_ttl_s": IB_LOCK_TTL_S,
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


@pytest.fixture
async def api(coordinator: Coordinator) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the coordinator's status API, with its token."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{coordinator.api_port}",
                                 headers=auth_headers(coordinator)) as client:
        yield client


@pytest.fixture
async def anon(coordinator: Coordinator) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the status API that sends no token."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{coordinator.api_port}") as client:
        yield client


MakeWorker = Callable[..., Awaitable[Worker]]


@pytest.fixture
async def make_worker(nats_server: NatsServer) -> AsyncIterator[MakeWorker]:
    """Start in-process workers: ``await make_worker("w1", capabilities=[...], gpu=True)``."""
    started: list[Worker] = []

    async def make(worker_id: str, *, capabilities: list[str] | None = None, slots: int = 1,
                   gpu: bool = False, handlers: dict[str, Any] | None = None, worker_type: str = "test",
                   **settings: Any) -> Worker:
        """Handlers default to the dummy handler for every type the capabilities serve; ``handlers``
        maps type names (or declarations) to others."""
        caps = capabilities or [names.CAP_DUMMY_ANY]
        served = {t: run_dummy if t is DUMMY else dummy_standin for c in caps for t in types_on(c)}
        given = {op_type(k) if isinstance(k, str) else k: h for k, h in (handlers or {}).items()}
        worker = Worker(
            settings=WorkerSettings(nats_url=nats_server.url, worker_id=worker_id,
                                    nats_creds=creds(roles.IB if worker_type == "ib" else roles.WORKER),
                                    **{**FAST, "fetch_timeout_s": 0.3, "grace_s": 1.0, **settings}),
            worker_type=worker_type, capabilities=caps,
            handlers={**served, **given}, slots=slots, gpu=gpu)
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
        full_env = {**os.environ, **role_env(roles.WORKER), "KTRDR_NATS_URL": nats_server.url,
                    "KTRDR_WORKER_ID": worker_id,
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
