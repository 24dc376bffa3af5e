"""One identity per host, revoked on its own: `ktrdr fleet invite worker --host NAME [--gpu]` mints a
key, `ktrdr fleet revoke NAME` takes it out of the running nats-server's config (a reload, nothing
restarts), the host's connections close, its operations move to other workers, and its seed is
refused from then on."""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import nats.errors
import pytest
from nats.aio.client import Client
from typer.testing import CliRunner

import nats
from coordinator.app import Coordinator
from ktrdr.cli.app import app
from ktrdr.dummy import run_dummy
from ktrdr.natsd import NatsServer
from ktrdr.optypes.dummy import DUMMY
from ktrdr.optypes.training import TRAINING
from ktrdr.runtime.connection import NatsAuth, NatsConnectError, connect
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.worker import Worker
from ktrdr.security.credentials import HOST_LINE, NatsCredential
from ktrdr.security.fleet import apply_hosts, invite, provision, revoke
from ktrdr.security.hosts import HostError, load_hosts, write_pid
from subjects import names
from subjects.models import OpEvent, OpEventKind, OpStatus, SubmitRequest
from tests.conftest import FAST, bounded, coordinator_settings, fleet
from tests.subjects.conftest import Denials
from tests.support import assert_eventually, dummy_standin, wait_status


def seed_in(script: str) -> NatsCredential:
    return NatsCredential.from_seed(next(line for line in script.splitlines() if line.startswith("SU")))


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A KTRDR_HOME with the suite's role keys (the coordinator's among them) and the config they make."""
    home = tmp_path / "home"
    shutil.copytree(fleet().home / "auth", home / "auth", ignore=shutil.ignore_patterns("*.conf", "hosts.json"))
    provision(home)
    return home


@pytest.fixture
def server(home: Path, tmp_path: Path) -> Iterator[NatsServer]:
    s = NatsServer(store_dir=tmp_path / "nats", config_file=home / "auth" / "nats-server.conf")
    s.start()
    write_pid(home, s.pid or 0)  # as `ktrdr up` does: what `fleet invite/revoke` reload
    try:
        yield s
    finally:
        s.stop()


def invite_host(home: Path, name: str, *, gpu: bool = False) -> NatsCredential:
    credential = seed_in(invite(home=home, role="worker", url="nats://127.0.0.1:4222", ca=None, host=name, gpu=gpu))
    apply_hosts(home)
    return replace(credential, host=name)


@pytest.fixture
async def started(server: NatsServer) -> AsyncIterator[list[Worker | Coordinator]]:
    parts: list[Worker | Coordinator] = []
    yield parts
    for part in reversed(parts):
        await bounded(part.stop(), "a part of the test's platform")


async def start_coordinator(server: NatsServer, home: Path, started: list[Worker | Coordinator]) -> Coordinator:
    """The coordinator of ``home`` (its hosts.json says which hosts may serve GPU training)."""
    coordinator = Coordinator(settings=coordinator_settings(server.url, home=home))
    await coordinator.start()
    started.append(coordinator)
    return coordinator


async def host_worker(server: NatsServer, tmp_path: Path, credential: NatsCredential, worker_id: str, *,
                      capabilities: list[str] | None = None, handlers: dict[Any, Any] | None = None,
                      gpu: bool = False) -> Worker:
    """A worker of the host ``credential`` names, started with the credential file its invite writes."""
    path = tmp_path / f"{worker_id}.nk"
    path.write_text(f"{HOST_LINE} {credential.host}\n{credential.seed}\n")  # what the invite writes
    worker = Worker(settings=WorkerSettings(nats_url=server.url, worker_id=worker_id, nats_creds=path,
                                            **{**FAST, "fetch_timeout_s": 0.3, "grace_s": 1.0}),
                    worker_type="test", capabilities=capabilities or [names.CAP_DUMMY_ANY],
                    handlers=handlers or {DUMMY: run_dummy}, slots=2, gpu=gpu)
    await worker.start()
    return worker


async def test_a_revoked_host_is_cut_off_its_op_moves_to_the_other_host_and_its_seed_is_refused(
        home: Path, server: NatsServer, started: list[Worker | Coordinator], tmp_path: Path) -> None:
    a, b = invite_host(home, "host-a"), invite_host(home, "host-b")
    coordinator = await start_coordinator(server, home, started)
    worker_a = await host_worker(server, tmp_path, a, "a1")
    started.append(worker_a)
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 30, "steps": 30}))
    running = await wait_status(coordinator, op.op_id, OpStatus.RUNNING)
    assert running.worker_id == "a1"
    started.append(await host_worker(server, tmp_path, b, "b1"))

    revoke(home, "host-a")
    assert "host-a" not in load_hosts(home / "auth")
    await assert_eventually(lambda: worker_a.nc is not None and not worker_a.nc.is_connected, timeout=10,
                            message="the revoked host's connection was not closed within 10 s")
    moved = await assert_eventually(
        lambda: (o := coordinator.ops.get(op.op_id)) is not None and o.worker_id == "b1" and o.attempt == 2 and o,
        timeout=20, message="the revoked host's op was not retried on the other host")
    assert moved.status is OpStatus.RUNNING
    other = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0, "steps": 1}))
    assert (await wait_status(coordinator, other.op_id, OpStatus.COMPLETED, OpStatus.FAILED,
                              timeout=40)).status is OpStatus.COMPLETED
    with pytest.raises(NatsConnectError, match="refused the credential"):
        await connect(server.url, name="revoked", auth=NatsAuth(credential=a), reconnect=False, quiet=True)
    # The cut-off worker said why once and stopped, instead of retrying four times a second for ever.
    assert worker_a.refused is not None and "refused the credential" in worker_a.refused


async def test_inviting_a_host_again_gives_it_a_new_key_and_the_old_one_stops_working(
        home: Path, server: NatsServer) -> None:
    first = invite_host(home, "host-a")
    held = await nats.connect(server.url, nkeys_seed_str=first.seed)
    try:
        second = invite_host(home, "host-a")
        await assert_eventually(lambda: not held.is_connected, timeout=10)
        with pytest.raises(NatsConnectError, match="refused the credential"):
            await connect(server.url, name="old", auth=NatsAuth(credential=first), reconnect=False, quiet=True)
        fresh = await nats.connect(server.url, nkeys_seed_str=second.seed)
        await fresh.close()
    finally:
        with contextlib.suppress(Exception):
            await held.close()


@pytest.mark.parametrize("gpu", [False, True])
async def test_only_a_host_invited_with_gpu_may_pull_gpu_training_jobs(home: Path, server: NatsServer,
                                                                        gpu: bool) -> None:
    credential = invite_host(home, "host-c", gpu=gpu)
    denials = Denials()
    nc: Client = await nats.connect(server.url, nkeys_seed_str=credential.seed, error_cb=denials.record,
                                    inbox_prefix=credential.inbox_prefix)
    try:
        for capability in (names.CAP_TRAINING_GPU, names.CAP_TRAINING_CPU):
            await nc.publish(names.jobs_pull_subject(capability), b'{"batch": 1, "expires": 1000000}',
                             reply=nc.new_inbox())
        await nc.flush()
        pull_gpu = names.jobs_pull_subject(names.CAP_TRAINING_GPU)
        if gpu:
            # The server answers in order: a refusal of the pulls would have come before the flush's PONG.
            assert not any("permissions violation" in s for s in denials.seen)
        else:
            await denials.expect("publish", pull_gpu)
            assert not any(names.CAP_TRAINING_CPU.replace(".", "-") in s for s in denials.seen)
    finally:
        await nc.close()


def test_the_cli_lists_hosts_and_refuses_what_would_leave_a_host_unnamed_or_cut_off_this_machine(
        home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KTRDR_HOME", str(home))
    runner = CliRunner()
    made = runner.invoke(app, ["fleet", "invite", "worker", "--host", "gpu-box", "--gpu", "--url", "nats://x:4222"])
    assert made.exit_code == 0, made.output
    assert "# ktrdr host: gpu-box" in made.stdout and "no `ktrdr up` server runs here" in made.stderr
    listed = runner.invoke(app, ["fleet", "hosts", "--json"])
    hosts = {h["name"]: h for h in json.loads(listed.stdout)}
    assert set(hosts) == {"local", "local-ib", "gpu-box"} and hosts["gpu-box"]["gpu"] is True
    unnamed = runner.invoke(app, ["fleet", "invite", "worker", "--url", "nats://x:4222"])
    assert unnamed.exit_code == 2 and "--host NAME" in unnamed.stderr
    local = runner.invoke(app, ["fleet", "revoke", "local"])
    assert local.exit_code == 2 and "this machine's own workers" in local.stderr
    gone = runner.invoke(app, ["fleet", "revoke", "gpu-box"])
    assert gone.exit_code == 0 and "revoked host gpu-box" in gone.stdout
    with pytest.raises(HostError, match="no host named 'gpu-box'"):
        revoke(home, "gpu-box")


async def test_a_host_key_cannot_touch_another_hosts_lease_registration_or_reports(
        home: Path, server: NatsServer, started: list[Worker | Coordinator], tmp_path: Path) -> None:
    a, b = invite_host(home, "host-a"), invite_host(home, "host-b")
    coordinator = await start_coordinator(server, home, started)
    started.append(await host_worker(server, tmp_path, b, "b1"))
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 30, "steps": 30}))
    await wait_status(coordinator, op.op_id, OpStatus.RUNNING)
    denials = Denials()
    thief: Client = await nats.connect(server.url, nkeys_seed_str=a.seed, error_cb=denials.record,
                                       inbox_prefix=a.inbox_prefix)
    try:
        js = thief.jetstream(timeout=0.5)
        forged = OpEvent(op_id=op.op_id, event=OpEventKind.COMPLETED, worker_id="b1", attempt=1,
                         result={"made": "up"})
        lease = f"$KV.{names.WORKERS_BUCKET}.{names.lease_key('host-b', 'b1')}"
        for subject in (lease, names.worker_register("host-b"), names.ops_events(op.op_id, "host-b"),
                        names.ops_progress(op.op_id, "host-b")):
            with contextlib.suppress(nats.errors.TimeoutError):
                await js.publish(subject, forged.encode())
            await denials.expect("publish", subject)
        # Under its own name the server lets it publish, and the coordinator refuses it: b1 is host-b's.
        for kind in (OpEventKind.COMPLETED, OpEventKind.FAILED):
            await js.publish(names.ops_events(op.op_id, "host-a"), OpEvent(
                op_id=op.op_id, event=kind, worker_id="b1", attempt=1, result={"made": "up"}, error="forged").encode())
        await assert_eventually(lambda: rejected(coordinator, "other host") >= 2)
        now = coordinator.ops.get(op.op_id)
        assert now is not None and now.status is OpStatus.RUNNING and now.worker_id == "b1" and now.result is None
        assert "b1" in coordinator.registry.workers
    finally:
        await thief.close()


async def test_a_host_cannot_start_or_end_an_attempt_it_did_not_claim(
        home: Path, server: NatsServer, started: list[Worker | Coordinator]) -> None:
    a = invite_host(home, "host-a")
    coordinator = await start_coordinator(server, home, started)
    op = await coordinator.dispatcher.submit(SubmitRequest(type="dummy", params={"duration": 0, "steps": 1}))
    thief = await nats.connect(server.url, nkeys_seed_str=a.seed, inbox_prefix=a.inbox_prefix)
    try:
        js = thief.jetstream()
        for kind in (OpEventKind.STARTED, OpEventKind.COMPLETED):  # no worker has pulled it: nobody's claim
            await js.publish(names.ops_events(op.op_id, "host-a"), OpEvent(
                op_id=op.op_id, event=kind, worker_id="a1", attempt=1, result={"made": "up"}).encode())
        await assert_eventually(lambda: rejected(coordinator, "not the claimant") >= 2)
        now = coordinator.ops.get(op.op_id)
        assert now is not None and now.status is OpStatus.PENDING and now.worker_id is None
    finally:
        await thief.close()


def rejected(coordinator: Coordinator, reason: str) -> float:
    return sum(s.value for m in coordinator.metrics.rejected.collect() for s in m.samples
               if s.name.endswith("_total") and s.labels.get("reason") == reason)


@pytest.mark.parametrize("gpu", [False, True])
async def test_a_gpu_worker_counts_as_one_only_on_a_host_invited_with_gpu(
        home: Path, server: NatsServer, started: list[Worker | Coordinator], tmp_path: Path, gpu: bool) -> None:
    credential = invite_host(home, "box", gpu=gpu)
    coordinator = await start_coordinator(server, home, started)
    started.append(await host_worker(server, tmp_path, credential, "fake-gpu", capabilities=[names.CAP_TRAINING_GPU],
                                     handlers={TRAINING: dummy_standin}, gpu=True))
    lease = await assert_eventually(lambda: coordinator.registry.workers.get("fake-gpu"))
    assert (names.CAP_TRAINING_GPU in lease.capabilities) is gpu and lease.gpu is gpu
    assert [w.worker_id for w in coordinator.registry.with_capability(names.CAP_TRAINING_GPU)] == (
        ["fake-gpu"] if gpu else [])
