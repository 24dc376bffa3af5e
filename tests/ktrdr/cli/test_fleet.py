"""Joining from another host: a worker in its own network namespace, connected over a veth pair with
TLS and the credential `ktrdr fleet invite worker` hands out, runs a backtest. With the wrong CA or
without a credential it is refused, with a message that says why.

Network namespaces need root (CI runs as root); elsewhere these tests are skipped with the reason.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from coordinator.app import Coordinator
from ktrdr.natsd import NatsServer, free_port
from ktrdr.runtime.connection import NatsAuth
from ktrdr.runtime.topology import ensure_topology
from ktrdr.security.credentials import NatsCredential
from ktrdr.security.fleet import Fleet, provision, write_fleet_file
from ktrdr.security.hosts import write_pid
from ktrdr.security.tls import ensure_ca
from subjects import names, roles
from subjects.models import OpStatus, SubmitRequest
from tests.backtesting import TIMEFRAME, backtest_params, publish_synth
from tests.conftest import FAST, ROOT, bounded, coordinator_settings
from tests.support import assert_eventually, wait_status

HOST_IP, REMOTE_IP = "10.200.73.1", "10.200.73.2"


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


@dataclass
class Namespace:
    name: str

    def command(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]


@pytest.fixture
def remote_host() -> Iterator[Namespace]:
    """A second 'host': a network namespace joined to this one by a veth pair on a private /30."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2's `ip`; the join test did not run")
    ns = Namespace(f"ktrdr-{secrets.token_hex(3)}")
    host_if, ns_if = f"kh{ns.name[-6:]}", f"kr{ns.name[-6:]}"
    try:
        _sh("ip", "netns", "add", ns.name)
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"cannot make a network namespace here ({getattr(exc, 'stderr', exc)}); the join test did not run")
    try:
        _sh("ip", "link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        _sh("ip", "link", "set", ns_if, "netns", ns.name)
        _sh("ip", "addr", "add", f"{HOST_IP}/30", "dev", host_if)
        _sh("ip", "link", "set", host_if, "up")
        _sh(*ns.command("ip", "addr", "add", f"{REMOTE_IP}/30", "dev", ns_if))
        _sh(*ns.command("ip", "link", "set", ns_if, "up"))
        _sh(*ns.command("ip", "link", "set", "lo", "up"))
        yield ns
    finally:
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns.name], capture_output=True)


@dataclass
class TlsFleet:
    fleet: Fleet
    server: NatsServer

    @property
    def url(self) -> str:
        return f"tls://{HOST_IP}:{self.server.port}"


@pytest.fixture
def tls_fleet(remote_host: Namespace, tmp_path: Path) -> Iterator[TlsFleet]:
    """What `ktrdr up --listen <address>` makes: TLS from the fleet's CA, a credential per role."""
    fleet = provision(tmp_path / "home", tls=True, tls_names=[HOST_IP])
    server = NatsServer(store_dir=tmp_path / "nats", host=HOST_IP, port=free_port(HOST_IP), config_file=fleet.config)
    server.start()
    write_pid(fleet.home, server.pid or 0)  # as `ktrdr up` does: `fleet invite` reloads it
    write_fleet_file(fleet.home, urls=[f"tls://{HOST_IP}:{server.port}"], tls=True)
    try:
        yield TlsFleet(fleet=fleet, server=server)
    finally:
        server.stop()


def _auth(fleet: Fleet, role: str) -> NatsAuth:
    assert fleet.tls is not None
    return NatsAuth(credential=fleet.credentials[role], credential_file=fleet.credential_file(role), ca=fleet.tls.ca)


@pytest.fixture
async def tls_coordinator(tls_fleet: TlsFleet) -> AsyncIterator[Coordinator]:
    s = tls_fleet.fleet
    assert s.tls is not None
    c = Coordinator(settings=coordinator_settings(tls_fleet.url, nats_creds=s.credential_file(roles.COORDINATOR),
                                                  nats_ca=s.tls.ca, home=s.home))
    await c.start()
    try:
        yield c
    finally:
        await bounded(c.stop(), "the coordinator")


def _ktrdr(*args: str, home: Path, ns: Namespace | None = None, **env: str) -> list[str]:
    return [*(ns.command() if ns else []), "env", f"KTRDR_HOME={home}", "KTRDR_LOG_LEVEL=INFO",
            f"KTRDR_LEASE_TTL_S={FAST['lease_ttl_s']}", f"KTRDR_HEARTBEAT_S={FAST['heartbeat_s']}",
            *(f"{k}={v}" for k, v in env.items()), sys.executable, "-m", "ktrdr.cli.app", *args]


def _env() -> dict[str, str]:
    # A joining host has only what the invite gave it: no credentials of this host leak in.
    return {k: v for k, v in os.environ.items() if not k.startswith("KTRDR_")}


async def test_a_worker_on_another_host_joins_with_tls_and_a_credential_and_runs_a_backtest(
        tls_fleet: TlsFleet, tls_coordinator: Coordinator, remote_host: Namespace, tmp_path: Path) -> None:
    invite = subprocess.run(_ktrdr("fleet", "invite", "worker", "--host", "remote-box", home=tls_fleet.fleet.home),
                            env=_env(), capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert invite.returncode == 0, invite.stderr
    assert "host remote-box added: nats-server" in invite.stderr  # reloaded: its key is a user now
    assert tls_fleet.url in invite.stdout and "BEGIN CERTIFICATE" in invite.stdout
    remote_home = tmp_path / "remote-home"
    joined = subprocess.run([*remote_host.command("env", f"KTRDR_HOME={remote_home}", "sh")], input=invite.stdout,
                            capture_output=True, text=True, timeout=30)
    assert joined.returncode == 0, joined.stderr
    creds, ca = remote_home / "join" / "remote-box.nk", remote_home / "join" / "ca.pem"
    assert oct(creds.stat().st_mode & 0o777) == "0o600"

    nc = tls_coordinator.nc
    await publish_synth(nc, tmp_path / "publisher")
    log = open(tmp_path / "remote-worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen(
        _ktrdr("worker", "backtest", "--nats", tls_fleet.url, "--creds", str(creds), "--ca", str(ca),
               home=remote_home, ns=remote_host, KTRDR_WORKER_ID="remote-backtest"),
        env=_env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        await assert_eventually(lambda: "remote-backtest" in tls_coordinator.registry.workers, timeout=30,
                                message="the remote worker never held a lease")
        op = await tls_coordinator.dispatcher.submit(SubmitRequest(type="backtesting", params=backtest_params()))
        done = await wait_status(tls_coordinator, op.op_id, OpStatus.COMPLETED, OpStatus.FAILED, timeout=60)
        assert done.status is OpStatus.COMPLETED, done.error
        assert done.worker_id == "remote-backtest"
        lease = tls_coordinator.registry.workers["remote-backtest"]
        assert lease.host  # registered over the veth pair, from the other namespace
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()


def _run_remote(ns: Namespace, url: str, home: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(_ktrdr("worker", "backtest", "--nats", url, *extra, home=home, ns=ns),
                          env=_env(), capture_output=True, text=True, cwd=ROOT, timeout=60)


def test_a_worker_with_the_wrong_ca_is_refused_with_a_clear_message(
        tls_fleet: TlsFleet, remote_host: Namespace, tmp_path: Path) -> None:
    other_ca_dir = tmp_path / "other-ca"
    ensure_ca(other_ca_dir)
    done = _run_remote(remote_host, tls_fleet.url, tmp_path / "remote", "--creds",
                       str(tls_fleet.fleet.credential_file(roles.WORKER)), "--ca", str(other_ca_dir / "ca.pem"))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "not signed by the CA" in done.stdout + done.stderr


def test_a_worker_without_a_credential_is_refused_with_a_clear_message(
        tls_fleet: TlsFleet, remote_host: Namespace, tmp_path: Path) -> None:
    assert tls_fleet.fleet.tls is not None
    done = _run_remote(remote_host, tls_fleet.url, tmp_path / "remote", "--ca", str(tls_fleet.fleet.tls.ca))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "requires a credential" in done.stdout + done.stderr


def test_a_worker_with_a_credential_the_fleet_does_not_know_is_refused(
        tls_fleet: TlsFleet, remote_host: Namespace, tmp_path: Path) -> None:
    assert tls_fleet.fleet.tls is not None
    stranger = tmp_path / "stranger.nk"
    stranger.write_text(NatsCredential.generate().seed + "\n")
    done = _run_remote(remote_host, tls_fleet.url, tmp_path / "remote", "--creds", str(stranger),
                       "--ca", str(tls_fleet.fleet.tls.ca))
    assert done.returncode == 3, done.stdout + done.stderr
    assert "refused the credential" in done.stdout + done.stderr


async def test_plain_text_is_refused_by_a_tls_server(tls_fleet: TlsFleet) -> None:
    from ktrdr.runtime.connection import NatsConnectError, connect

    auth = NatsAuth(credential=tls_fleet.fleet.credentials[roles.CLIENT])  # no CA: no way to verify the server
    with pytest.raises(NatsConnectError):
        await asyncio.wait_for(connect(f"nats://{HOST_IP}:{tls_fleet.server.port}", name="plain", auth=auth,
                                       reconnect=False, quiet=True), 30)


__all__ = ["TIMEFRAME", "ensure_topology", "names"]
