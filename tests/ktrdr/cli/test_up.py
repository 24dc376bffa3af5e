"""`ktrdr up` is secure with nothing to set up: it makes the credentials, the server config and the
API token, every component connects with its role, the CLI finds its credential by itself, and an
anonymous connection is refused."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

import nats
from ktrdr.natsd import free_port
from tests.conftest import ROOT
from tests.support import assert_eventually


def _cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("KTRDR_")}
    full |= {"KTRDR_HOME": str(home), "COLUMNS": "200", **env}
    return subprocess.run([sys.executable, "-m", "ktrdr.cli.app", *args], cwd=ROOT, env=full, capture_output=True,
                          text=True, timeout=60)


async def test_up_makes_everything_security_needs_and_the_cli_finds_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    nats_port, monitor_port, api_port = free_port(), free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KTRDR_")} | {"KTRDR_HOME": str(home)}
    log = open(tmp_path / "up.log", "wb")  # noqa: SIM115 - closed below
    up = subprocess.Popen([sys.executable, "-m", "ktrdr.cli.app", "up", "--nats-port", str(nats_port),
                           "--monitor-port", str(monitor_port), "--api-port", str(api_port), "--training-workers",
                           "0", "--no-gpu"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                          # Its own process group: a Ctrl-C in a terminal reaches every process in it.
                          start_new_session=True)
    url = f"nats://127.0.0.1:{nats_port}"
    try:
        token_file = home / "auth" / "api.token"
        await assert_eventually(lambda: _api_up(api_port, token_file), timeout=60, interval=0.2,
                                message="ktrdr up did not come up")
        for path in [*(home / "auth").glob("*.nk"), token_file, home / "auth" / "nats-server.conf"]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        assert {p.stem for p in (home / "auth").glob("*.nk")} == {"coordinator", "operator", "worker", "ib", "client",
                                                                   "viewer"}

        # No KTRDR_NATS_URL: the context `ktrdr up` wrote leads the CLI to the ports it chose.
        done = await asyncio.to_thread(_cli, home, "dummy", "--duration", "0.5", "--follow")
        assert done.returncode == 0, done.stdout + done.stderr
        assert "completed" in done.stdout
        where = await asyncio.to_thread(_cli, home, "context", "--json")
        shown = json.loads(where.stdout)
        assert shown["nats_url"] == url and shown["api_url"] == f"http://127.0.0.1:{api_port}"
        assert shown["from"] == f"the context {home / 'contexts' / 'default.json'}"

        # The dashboard's link, whole on one line, carries the token to sign the page in.
        token = token_file.read_text().strip()
        link = f"http://127.0.0.1:{api_port}/#token={token}"
        assert f"dashboard: {link}\n" in (tmp_path / "up.log").read_text()
        async with httpx.AsyncClient() as http:
            page = await http.get(link)
            assert page.status_code == 200 and "ktrdr" in page.text and token not in page.text

        with pytest.raises(Exception, match="Authorization Violation"):
            await nats.connect(url, allow_reconnect=False, connect_timeout=2)
        async with httpx.AsyncClient() as http:
            assert (await http.get(f"http://127.0.0.1:{api_port}/api/v1/workers")).status_code == 401
    finally:
        os.killpg(up.pid, signal.SIGINT)  # as Ctrl-C does
        try:
            code = up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            code = up.wait()
        log.close()
    output = (tmp_path / "up.log").read_text()
    assert code == 0, output[-3000:]
    # A clean stop closes each connection on purpose: nothing was lost, so nothing warns of it.
    assert "disconnected" not in output, output[-3000:]


async def _api_up(port: int, token_file: Path) -> bool:
    if not token_file.exists():
        return False
    try:
        async with httpx.AsyncClient() as http:
            r = await http.get(f"http://127.0.0.1:{port}/api/v1/workers",
                               headers={"Authorization": f"Bearer {token_file.read_text().strip()}"})
            return r.status_code == 200 and len(r.json()) >= 1
    except httpx.HTTPError:
        return False


def test_up_refuses_to_listen_beyond_loopback_without_tls(tmp_path: Path) -> None:
    done = _cli(tmp_path, "up", "--listen", "0.0.0.0", "--no-tls", "--nats-port", str(free_port()),
                "--monitor-port", str(free_port()), "--api-port", str(free_port()))
    assert done.returncode == 2
    [line] = done.stderr.splitlines()
    assert line.startswith("error: refusing to listen on 0.0.0.0 without TLS")
