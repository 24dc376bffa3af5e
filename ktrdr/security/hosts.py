"""One NATS identity per worker host, each revocable on its own.

Every host that runs workers or an IB host has its own nkey: ``ktrdr fleet invite worker --host
NAME [--gpu]`` mints it, and the server config (``ktrdr.security.serverconf``) holds one user per
host with its role's permissions, the GPU job queue only for hosts invited with ``--gpu``. A host is
cut off with ``ktrdr fleet revoke NAME``: the config is written without it and the running
nats-server reloads it, which closes that host's connections at once and refuses it from then on;
its workers' leases then expire and their operations are retried elsewhere, as for any lost worker.
Inviting a host again mints a new key, so the old one stops working (rotation).

The record of hosts (``<home>/auth/hosts.json``, 0600) holds public keys only: a host's seed exists
in its invite and on the host. The local workers of ``ktrdr up`` are the host ``local``, whose seed
is ``worker.nk`` (and ``local-ib`` is ``ib.nk``): they are not revoked with ``fleet revoke`` but
re-keyed by deleting that file and restarting ``ktrdr up``.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from ktrdr.security.credentials import NatsCredential, write_private
from subjects import names, roles
from subjects.names import validate_token

HOSTS_FILE = "hosts.json"
PID_FILE = "nats-server.pid"  # the embedded server `ktrdr up` runs: what `fleet invite/revoke` reload
LOCAL_HOSTS = {roles.LOCAL_HOST: roles.WORKER, roles.LOCAL_IB_HOST: roles.IB}
HOST_ROLES = (roles.WORKER, roles.IB)


class HostError(ValueError):
    pass


@dataclass(frozen=True, kw_only=True)
class Host:
    name: str
    role: str
    public_key: str
    gpu: bool
    created_at: str

    @property
    def local(self) -> bool:
        return self.name in LOCAL_HOSTS


def validate_host_name(name: str) -> str:
    try:
        validate_token(name, what="host name")
    except ValueError as exc:
        raise HostError(str(exc)) from None
    if name == names.COORDINATOR_HOST:
        # The coordinator writes its own artifacts (a parent's result) under this name.
        raise HostError(f"the host name {name!r} is the coordinator's; choose another")
    return name


def _path(auth_dir: Path) -> Path:
    return auth_dir / HOSTS_FILE


def load_hosts(auth_dir: Path) -> dict[str, Host]:
    """The invited hosts (the local ones are not in the file: their keys are the role files)."""
    try:
        raw = json.loads(_path(auth_dir).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise HostError(f"cannot read {_path(auth_dir)}: {exc}") from None
    return {name: Host(**entry) for name, entry in raw.items()}


def _save(auth_dir: Path, hosts: dict[str, Host]) -> None:
    write_private(_path(auth_dir), json.dumps({n: asdict(h) for n, h in sorted(hosts.items())}, indent=2) + "\n")


def local_hosts(credentials: dict[str, NatsCredential]) -> list[Host]:
    """The hosts ``ktrdr up`` runs on this machine, whose seeds are the role files."""
    return [Host(name=name, role=role, public_key=credentials[role].public_key, gpu=role == roles.WORKER,
                 created_at="") for name, role in LOCAL_HOSTS.items() if role in credentials]


def add_host(auth_dir: Path, *, name: str, role: str, gpu: bool) -> tuple[Host, NatsCredential]:
    """A new key for ``name`` (replacing the one it had, which stops working once the server reloads)."""
    validate_host_name(name)
    if name in LOCAL_HOSTS:
        raise HostError(f"{name!r} is this machine's own workers; invite another host by its own name")
    if role not in HOST_ROLES:
        raise HostError(f"a host runs workers or an IB host: invite it as worker or ib, not {role!r}")
    if gpu and role != roles.WORKER:
        raise HostError("--gpu is for worker hosts (the GPU training queue)")
    credential = NatsCredential.generate()
    hosts = load_hosts(auth_dir)
    hosts[name] = Host(name=name, role=role, public_key=credential.public_key, gpu=gpu,
                       created_at=datetime.now(UTC).isoformat(timespec="seconds"))
    _save(auth_dir, hosts)
    return hosts[name], credential


def remove_host(auth_dir: Path, name: str) -> Host:
    if name in LOCAL_HOSTS:
        raise HostError(f"{name!r} is this machine's own workers: to re-key them, delete "
                        f"{auth_dir / (LOCAL_HOSTS[name] + '.nk')} and restart `ktrdr up`")
    hosts = load_hosts(auth_dir)
    if name not in hosts:
        known = ", ".join(sorted(hosts)) or "none"
        raise HostError(f"no host named {name!r} (invited hosts: {known})")
    host = hosts.pop(name)
    _save(auth_dir, hosts)
    return host


class GpuGrants:
    """Which hosts may serve GPU training, as the coordinator reads it: ``local`` (this machine's
    workers) and every host invited with ``--gpu``; the file is read again when it changes."""

    def __init__(self, *, auth_dir: Path) -> None:
        self.auth_dir = auth_dir
        self._seen: float | None = None
        self._gpu: frozenset[str] = frozenset()

    def __call__(self, host: str) -> bool:
        if host == roles.LOCAL_HOST:
            return True
        try:
            mtime = _path(self.auth_dir).stat().st_mtime
        except OSError:
            mtime = None
        if mtime != self._seen:
            try:
                self._gpu = frozenset(h.name for h in load_hosts(self.auth_dir).values() if h.gpu)
            except HostError:
                self._gpu = frozenset()
            self._seen = mtime
        return host in self._gpu


def write_pid(home: Path, pid: int) -> None:
    write_private(home / PID_FILE, f"{pid}\n")


def clear_pid(home: Path, pid: int) -> None:
    with contextlib.suppress(OSError, ValueError):
        if int((home / PID_FILE).read_text()) == pid:
            (home / PID_FILE).unlink()


def reload_server(home: Path) -> int | None:
    """Have the nats-server ``ktrdr up`` runs read its config again; its pid, or None when none runs
    here (a server of your own: reload it yourself, ``nats-server --signal reload``)."""
    try:
        pid = int((home / PID_FILE).read_text())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        cmdline = b"nats-server"  # no /proc: trust the pid file, which `ktrdr up` clears when it stops
    if b"nats-server" not in cmdline:
        return None
    try:
        os.kill(pid, signal.SIGHUP)
    except (ProcessLookupError, PermissionError):
        return None
    return pid
