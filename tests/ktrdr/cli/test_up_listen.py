"""`ktrdr up --listen ADDR` for an address other than 127.0.0.1: nats-server listens there only, so
the coordinator, the workers and the CLI's context must connect there too (the TLS certificate covers
it). And a start-up whose coordinator cannot reach its server fails at once, saying why, rather than
leaving the coordinator to retry for ever behind a banner that says all is well.

One address is 127.0.0.2 (any machine); the other an interface of its own in a network namespace, as
an operator binds one interface (needs root and iproute2; skipped with the reason elsewhere).
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from ktrdr.natsd import free_port
from ktrdr.security.tls import ensure_server_cert
from tests.conftest import ROOT
from tests.support import assert_eventually

NS_IP, PEER_IP = "10.251.7.1", "10.251.7.2"


def _sh(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True, text=True)


@pytest.fixture
def netns() -> Iterator[list[str]]:
    """A network namespace whose one interface (besides lo) has NS_IP: the prefix that runs a command in it."""
    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("network namespaces need root and iproute2's `ip`; the one-interface test did not run")
    name = f"ktrdr-up-{secrets.token_hex(3)}"
    outer, inner = f"ku{name[-6:]}", f"ki{name[-6:]}"
    try:
        _sh("ip", "netns", "add", name)
    except (subprocess.CalledProcessError, OSError) as exc:
        pytest.skip(f"cannot make a network namespace here ({getattr(exc, 'stderr', exc)})")
    prefix = ["ip", "netns", "exec", name]
    try:
        _sh("ip", "link", "add", outer, "type", "veth", "peer", "name", inner)
        _sh("ip", "link", "set", inner, "netns", name)
        _sh("ip", "addr", "add", f"{PEER_IP}/30", "dev", outer)
        _sh("ip", "link", "set", outer, "up")
        _sh(*prefix, "ip", "addr", "add", f"{NS_IP}/30", "dev", inner)
        _sh(*prefix, "ip", "link", "set", inner, "up")
        _sh(*prefix, "ip", "link", "set", "lo", "up")
        yield prefix
    finally:
        subprocess.run(["ip", "link", "del", outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", name], capture_output=True)


def _env(home: Path, **extra: str) -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("KTRDR_")} | {
        "KTRDR_HOME": str(home), "COLUMNS": "200", **extra}


def _ktrdr(prefix: list[str], home: Path, *args: str, timeout: float = 60,
           **extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*prefix, sys.executable, "-m", "ktrdr.cli.app", *args], cwd=ROOT, env=_env(home, **extra),
                          capture_output=True, text=True, timeout=timeout)


def _workers_up(prefix: list[str], home: Path) -> bool:
    done = _ktrdr(prefix, home, "workers", "--json", timeout=30)
    return done.returncode == 0 and len(json.loads(done.stdout or "[]")) >= 1


@pytest.mark.parametrize("where", ["127.0.0.2", "netns"])
async def test_up_listening_on_one_address_comes_up_and_runs_an_op(
        where: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    prefix: list[str] = request.getfixturevalue("netns") if where == "netns" else []
    address = NS_IP if where == "netns" else "127.0.0.2"
    home = tmp_path / "home"
    nats_port, api_port = free_port(), free_port()
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115 - closed below
    up = subprocess.Popen([*prefix, sys.executable, "-m", "ktrdr.cli.app", "up", "--listen", address, "--name",
                           address, "--nats-port", str(nats_port), "--api-port", str(api_port),
                           "--training-workers", "0", "--no-gpu"], cwd=ROOT, env=_env(home), stdout=log,
                          stderr=subprocess.STDOUT, start_new_session=True)
    try:
        await assert_eventually(lambda: up.poll() is not None or (home / "contexts" / "default.json").exists(),
                                timeout=60, interval=0.2)
        assert up.poll() is None, (tmp_path / "up.log").read_text()[-3000:]
        context = json.loads((home / "contexts" / "default.json").read_text())
        # Where the server listens, with TLS (beyond 127.0.0.1): the certificate covers the address.
        assert context["nats_url"] == f"tls://{address}:{nats_port}"
        await assert_eventually(lambda: asyncio.to_thread(_workers_up, prefix, home), timeout=90, interval=1.0,
                                message=f"ktrdr up never came up: {(tmp_path / 'up.log').read_text()[-3000:]}")
        done = await asyncio.to_thread(_ktrdr, prefix, home, "dummy", "--duration", "0.5", "--follow")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "completed" in done.stdout
        output = (tmp_path / "up.log").read_text()
        assert "cannot reach NATS" not in output and "Connection refused" not in output, output[-3000:]
    finally:
        os.killpg(up.pid, signal.SIGINT)
        try:
            code = up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            code = up.wait()
        log.close()
    assert code == 0, (tmp_path / "up.log").read_text()[-3000:]


def test_up_fails_at_once_when_its_coordinator_cannot_reach_nats(tmp_path: Path) -> None:
    url = f"nats://127.0.0.1:{free_port()}"
    done = _ktrdr([], tmp_path / "home", "up", "--api-port", str(free_port()), "--training-workers", "0", "--no-gpu",
                  KTRDR_NATS_URL=url)
    assert done.returncode == 3, done.stdout + done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.strip()]
    assert line.startswith(f"error: the coordinator cannot connect to NATS at {url}: cannot reach NATS at {url}")
    assert "ktrdr is up" not in done.stdout


def test_up_says_when_its_own_certificate_does_not_cover_the_address(tmp_path: Path) -> None:
    own = ensure_server_cert(tmp_path / "own-tls", ["127.0.0.1"])  # not 127.0.0.2
    port = free_port()
    done = _ktrdr([], tmp_path / "home", "up", "--listen", "127.0.0.2", "--nats-port", str(port), "--api-port",
                  str(free_port()), "--training-workers", "0", "--no-gpu", "--tls-cert", str(own.cert),
                  "--tls-key", str(own.key), "--tls-ca", str(own.ca))
    assert done.returncode == 3, done.stdout + done.stderr
    [line] = [line for line in done.stderr.splitlines() if line.strip()]
    assert f"the coordinator cannot connect to NATS at tls://127.0.0.2:{port}" in line
    assert "does not cover" in line and "127.0.0.2" in line
