"""What the compose file's one-shot `provision` service does, without docker: `ktrdr provision` lays out a
server folder that nats-server runs as it is and role folders that hold one credential each; a worker
and the host's CLI (through `ktrdr context add --from -`) connect with them over TLS; the containers'
healthchecks read the server's /healthz and the NATS connection. And deploy/'s build helpers."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
import subprocess
import sys
import zipfile
from pathlib import Path
from types import ModuleType

import nats
from ktrdr.natsd import NatsServer, free_port
from ktrdr.runtime.connection import NatsAuth
from ktrdr.runtime.hostpool import claim_credential
from ktrdr.security.credentials import NatsCredential
from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"


def ktrdr(*args: str, home: Path, input: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KTRDR_")} | {"KTRDR_HOME": str(home),
                                                                               "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "ktrdr.cli.app", *args], env=env, cwd=ROOT, input=input,
                          capture_output=True, text=True, timeout=60)


def private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) == 0o600


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"deploy_{name}", DEPLOY / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_provision_lays_out_what_each_container_mounts(tmp_path: Path) -> None:
    home, server_dir, worker_dir = tmp_path / "home", tmp_path / "nats-conf", tmp_path / "worker-auth"
    port, monitor = free_port(), free_port()
    args = ("provision", "--home", str(home), "--tls-name", "nats", "--server-dir", str(server_dir),
            "--monitor", f"127.0.0.1:{monitor}", "--host-pool", f"worker=3@{worker_dir}",
            "--nats-url", f"tls://127.0.0.1:{port}", "--api-url", "http://127.0.0.1:18000", "--bundle")
    first = ktrdr(*args, home=tmp_path / "unused")
    assert first.returncode == 0, first.stderr
    bundle = json.loads(first.stdout)  # stdout is the bundle alone; what provision says goes to stderr
    assert "nats-server config" in first.stderr
    assert sorted(p.name for p in worker_dir.iterdir()) == [
        "ca.pem", "worker-pool-01.nk", "worker-pool-02.nk", "worker-pool-03.nk"]
    assert sorted(p.name for p in server_dir.iterdir()) == ["ca.pem", "nats-server.conf", "server-key.pem",
                                                            "server.pem"]
    assert all(private(p) for p in [*worker_dir.iterdir(), *server_dir.iterdir()])
    conf = json.loads((server_dir / "nats-server.conf").read_text())
    assert conf["tls"]["cert_file"] == str(server_dir / "server.pem") and conf["http"] == f"127.0.0.1:{monitor}"
    # Run again (every `compose up` does): nothing that works changes.
    kept = {p: p.read_bytes() for p in [*worker_dir.iterdir(), *server_dir.iterdir(), home / "auth" / "api.token"]}
    again = ktrdr(*args, home=tmp_path / "unused")
    assert again.returncode == 0, again.stderr
    assert {p: p.read_bytes() for p in kept} == kept
    assert json.loads(again.stdout) == bundle

    server = NatsServer(store_dir=tmp_path / "js", port=port, config_file=server_dir / "nats-server.conf")
    with server:
        # A worker with its folder only: TLS against the fleet's CA, a host key of the pool, a host of its own.
        key, hold = claim_credential(worker_dir)
        auth = NatsAuth(credential=NatsCredential.load(key), ca=worker_dir / "ca.pem")
        assert auth.credential is not None and auth.credential.host == "worker-pool-01"
        hold.close()
        nc = await nats.connect(f"tls://127.0.0.1:{port}", **auth.options())
        try:
            # The containers' healthchecks: nats-server's /healthz, and "this netns holds a NATS connection".
            check = [sys.executable, str(DEPLOY / "healthcheck.py")]
            env = {**os.environ, "KTRDR_NATS_URL": f"tls://nats:{port}"}
            assert subprocess.run([*check, "http", f"http://127.0.0.1:{monitor}/healthz?js-enabled-only=true"],
                                  timeout=30).returncode == 0
            assert subprocess.run([*check, "nats"], env=env, timeout=30).returncode == 0
        finally:
            await nc.close()
        assert subprocess.run([*check, "nats"], env={**env, "KTRDR_NATS_URL": f"nats://x:{free_port()}"},
                              timeout=30).returncode == 1

        # The host's CLI: a context made from the bundle, its secrets kept private beside it.
        host = tmp_path / "host"
        added = ktrdr("context", "add", "lab", "--from", "-", home=host, input=first.stdout)
        assert added.returncode == 0, added.stderr
        shown = json.loads(ktrdr("--context", "lab", "context", "--json", home=host).stdout)
        assert shown["nats_url"] == f"tls://127.0.0.1:{port}" and shown["api_url"] == "http://127.0.0.1:18000"
        assert shown["nats_creds"] == str(host / "contexts" / "lab" / "client.nk")
        assert all(private(p) for p in (host / "contexts" / "lab").iterdir())
        client = NatsAuth(credential=NatsCredential.load(Path(shown["nats_creds"])), ca=Path(shown["nats_ca"]))
        nc = await nats.connect(shown["nats_url"], **client.options())
        await nc.close()


def test_context_add_checks_what_it_is_given(tmp_path: Path) -> None:
    bad_name = ktrdr("context", "add", "../x", "--nats-url", "nats://h:4222", home=tmp_path)
    assert bad_name.returncode == 2 and "context name" in bad_name.stderr
    no_url = ktrdr("context", "add", "x", home=tmp_path)
    assert no_url.returncode == 2 and "no NATS URL" in no_url.stderr
    junk = tmp_path / "junk.nk"
    junk.write_text("not a seed\n")
    bad_creds = ktrdr("context", "add", "x", "--nats-url", "nats://h:4222", "--creds", str(junk), home=tmp_path)
    assert bad_creds.returncode == 2 and "no NATS user nkey seed" in bad_creds.stderr
    not_bundle = ktrdr("context", "add", "x", "--from", "-", home=tmp_path, input='{"a": 1}')
    assert not_bundle.returncode == 2 and "not what `ktrdr provision --bundle` prints" in not_bundle.stderr
    ok = ktrdr("context", "add", "x", "--nats-url", "nats://h:4222", home=tmp_path)
    assert ok.returncode == 0, ok.stderr
    written = json.loads((tmp_path / "contexts" / "x.json").read_text())
    assert written["nats_url"] == "nats://h:4222" and written["written_by"].startswith("ktrdr context add")


def test_the_backtest_image_leaves_torch_out_and_nothing_else(tmp_path: Path) -> None:
    install = load("install")
    requires = ["nats-py<3,>=2.16", "uvloop>=0.19; sys_platform != \"win32\"", "torch<=2.13.0,>=2.3",
                "pytest>=8; extra == \"dev\""]
    assert install.requirements(requires, {"torch"}) == requires[:2]
    assert install.requirements(requires, set()) == requires[:3]


def test_an_image_s_inputs_ignore_when_a_wheel_was_built(tmp_path: Path) -> None:
    build = load("build")
    wheels = []
    for i, when in enumerate([(2020, 1, 1, 0, 0, 0), (2026, 12, 7, 12, 0, 0)]):
        path = tmp_path / str(i) / "ktrdr-0.1.0-py3-none-any.whl"
        path.parent.mkdir()
        with zipfile.ZipFile(path, "w") as z:
            z.writestr(zipfile.ZipInfo("ktrdr/__init__.py", when), "x = 1\n")
            z.writestr(zipfile.ZipInfo("ktrdr-0.1.0.dist-info/METADATA", when),
                       "Name: ktrdr\nRequires-Dist: numpy>=1.26\nRequires-Dist: torch; extra == 'gpu'\n\nReadme\n")
        wheels.append(path)
    assert build.fingerprint(wheels[0]) == build.fingerprint(wheels[1])
    assert build.requires(wheels[0]) == "numpy>=1.26\ntorch; extra == 'gpu'\n"
    with zipfile.ZipFile(wheels[1], "a") as z:
        z.writestr("ktrdr/new.py", "")
    assert build.fingerprint(wheels[0]) != build.fingerprint(wheels[1])


def test_a_workers_healthcheck_is_its_lease_written_within_its_ttl(tmp_path: Path) -> None:
    lease = tmp_path / "lease"
    check = [sys.executable, str(DEPLOY / "healthcheck.py"), "lease"]
    env = {**os.environ, "KTRDR_LEASE_FILE": str(lease)}
    assert subprocess.run(check, env=env, timeout=30).returncode == 1  # no lease written yet
    lease.write_text("5.0\n")
    assert subprocess.run(check, env=env, timeout=30).returncode == 0
    os.utime(lease, (lease.stat().st_atime, lease.stat().st_mtime - 6))
    assert subprocess.run(check, env=env, timeout=30).returncode == 1  # older than its TTL: a lost lease
