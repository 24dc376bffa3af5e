"""Everything the local platform's security needs, made once under ``KTRDR_HOME`` by ``ktrdr up``:
a credential per role, the nats-server config that enforces the roles, TLS files when the server
is reachable from other hosts, and what another host needs to join.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ktrdr.security.credentials import (
    HOST_LINE,
    CredentialError,
    NatsCredential,
    credential_path,
    ensure_credentials,
    write_private,
)
from ktrdr.security.hosts import HOST_ROLES, Host, add_host, load_hosts, reload_server, remove_host
from ktrdr.security.serverconf import render, rewrite_authorization
from ktrdr.security.tls import TlsFiles, ensure_server_cert, server_names
from subjects import roles

SERVER_CONFIG = "nats-server.conf"
FLEET_FILE = "fleet.json"  # what `ktrdr fleet invite` tells joining hosts: the URL to reach


@dataclass(frozen=True, kw_only=True)
class Fleet:
    home: Path
    credentials: dict[str, NatsCredential]
    config: Path
    tls: TlsFiles | None

    @property
    def auth_dir(self) -> Path:
        return self.home / "auth"

    def credential_file(self, role: str) -> Path:
        return credential_path(self.auth_dir, role)

    def env(self, role: str) -> dict[str, str]:
        """The variables a child process of ``role`` connects with."""
        out = {"KTRDR_NATS_CREDS": str(self.credential_file(role))}
        if self.tls is not None:
            out["KTRDR_NATS_CA"] = str(self.tls.ca)
        return out


def provision(home: Path, *, tls: bool = False, tls_names: list[str] | None = None,
              own_tls: TlsFiles | None = None, monitor: str | None = None, server_name: str = "ktrdr") -> Fleet:
    """Credentials kept from earlier runs (joined hosts keep working), the config written anew.

    ``tls``: serve TLS with a certificate from the fleet's own CA covering ``tls_names`` (plus
    loopback and this host's name), unless ``own_tls`` names the user's own files.
    """
    auth_dir = home / "auth"
    credentials = ensure_credentials(auth_dir)
    tls_files = own_tls if own_tls is not None else (
        ensure_server_cert(home / "tls", server_names(tls_names)) if tls else None)
    config = auth_dir / SERVER_CONFIG
    write_private(config, render(credentials=credentials, hosts=load_hosts(auth_dir).values(), tls=tls_files,
                                 monitor=monitor, server_name=server_name))
    return Fleet(home=home, credentials=credentials, config=config, tls=tls_files)


def write_fleet_file(home: Path, *, urls: list[str], tls: bool) -> None:
    write_private(home / FLEET_FILE, json.dumps({"urls": urls, "tls": tls}, indent=2) + "\n")


def read_fleet_file(home: Path) -> dict[str, object] | None:
    try:
        return json.loads((home / FLEET_FILE).read_text())
    except (OSError, ValueError):
        return None


def invite(*, home: Path, role: str, url: str, ca: Path | None, host: str | None = None, gpu: bool = False) -> str:
    """A shell script that puts a credential (and the CA) on another host and says how to run a
    component there. It holds a secret: whoever has it acts as that host (or, for a client or a
    viewer, as that role).

    A worker or IB host gets a key of its own (``host``), minted here and added to the server's
    config (:func:`apply_hosts` reloads a running server); a client or viewer gets the role's key.
    """
    if role not in roles.ROLES or role in roles.TRUSTED:
        raise ValueError(f"invite a worker, ib, client or viewer, not {role!r} (it never leaves this host)")
    auth_dir = home / "auth"
    if role in HOST_ROLES:
        if not host:
            raise ValueError(f"name the {role} host: --host NAME (each host gets a credential of its own, "
                             "revoked on its own with `ktrdr fleet revoke NAME`)")
        _, credential = add_host(auth_dir, name=host, role=role, gpu=gpu)
        seed, file, who = credential.seed, f"{host}.nk", f"host '{host}' ({role}{', GPU' if gpu else ''})"
    else:
        if host or gpu:
            raise ValueError(f"--host and --gpu are for worker and ib hosts; a {role} shares the role's credential")
        seed, file, who = NatsCredential.load(credential_path(auth_dir, role)).seed, f"{role}.nk", f"'{role}'"
    lines = [
        "#!/bin/sh",
        f"# ktrdr: join the fleet at {url} as {who}. This file holds a secret credential: keep it",
        "# private, run it on the joining host, then delete it.",
        "set -e",
        'dir="${KTRDR_HOME:-$HOME/.ktrdr}/join"',
        'mkdir -p "$dir" && chmod 700 "$dir"',
        "umask 077",
        f"cat > \"$dir/{file}\" <<'EOF'",
        *([f"{HOST_LINE} {host}"] if role in HOST_ROLES else []),
        seed,
        "EOF",
    ]
    flags = f"--nats {url} --creds $dir/{file}"
    env = f"KTRDR_NATS_URL={url} KTRDR_NATS_CREDS=$dir/{file}"
    if ca is not None:
        lines += ["cat > \"$dir/ca.pem\" <<'EOF'", ca.read_text().strip(), "EOF"]
        flags += " --ca $dir/ca.pem"
        env += " KTRDR_NATS_CA=$dir/ca.pem"
    lines.append('echo "ktrdr: credential written to $dir. On this host, run:"')
    if role == roles.WORKER:
        lines += [f'echo "  ktrdr worker backtest {flags}"',
                  'echo "  (or: ktrdr worker training / ktrdr host gpu, with the same options)"']
    elif role == roles.IB:
        lines.append(f'echo "  ktrdr host ib {flags}"')
    else:
        lines += [f'echo "  export {env}"', 'echo "  ktrdr workers; ktrdr ops list"']
    return "\n".join(lines) + "\n"


def host_pool(home: Path, *, role: str, folder: Path, count: int) -> list[str]:
    """``count`` hosts of ``role``, ``<role>-pool-01`` on, each with a key of its own in
    ``folder/<name>.nk`` (``ktrdr.runtime.hostpool``: one per running worker, for scaled containers).

    Kept where the file still holds the key the fleet knows for that host; minted anew otherwise.
    Keys of a larger pool before are taken out of the fleet. The server's config is written by
    the caller afterwards (:func:`provision` reads the hosts when it writes it).
    """
    if role not in HOST_ROLES:
        raise ValueError(f"a host pool is of worker or ib hosts, not {role!r}")
    if not 0 <= count <= 999:
        raise ValueError(f"a host pool of {count} keys: 0 to 999")
    auth_dir = home / "auth"
    folder.mkdir(parents=True, exist_ok=True)
    hosts = load_hosts(auth_dir)
    wanted = [f"{role}-pool-{i:02d}" for i in range(1, count + 1)]
    for name in wanted:
        path = folder / f"{name}.nk"
        known = hosts.get(name)
        try:
            held = NatsCredential.load(path) if path.exists() else None
        except CredentialError:
            held = None
        if known is None or known.role != role or held is None or held.public_key != known.public_key:
            _, credential = add_host(auth_dir, name=name, role=role, gpu=False)
            write_private(path, f"{HOST_LINE} {name}\n{credential.seed}\n")
    # The role's shared key (what --role-dir puts there) must not be taken as one of the pool's.
    (folder / f"{role}.nk").unlink(missing_ok=True)
    for stale in sorted(folder.glob(f"{role}-pool-*.nk")):
        if stale.stem not in wanted:
            stale.unlink()
            if stale.stem in load_hosts(auth_dir):
                remove_host(auth_dir, stale.stem)
    return wanted


def apply_hosts(home: Path) -> int | None:
    """Write the server config's users as the hosts now are and reload the server ``ktrdr up`` runs
    here; its pid, or None when none runs here."""
    auth_dir = home / "auth"
    config = auth_dir / SERVER_CONFIG
    hosts = list(load_hosts(auth_dir).values())
    if config.exists():
        rewrite_authorization(config, ensure_credentials(auth_dir), hosts)
    return reload_server(home)


def revoke(home: Path, name: str) -> Host:
    """Take ``name`` out of the fleet: its key leaves the config and the running server reloads it."""
    host = remove_host(home / "auth", name)
    apply_hosts(home)
    return host
