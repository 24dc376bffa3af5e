"""Everything the local platform's security needs, made once under ``KTRDR_HOME`` by ``ktrdr up``:
a credential per role, the nats-server config that enforces the roles, TLS files when the server
is reachable from other hosts, and what another host needs to join.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ktrdr.security.credentials import NatsCredential, credential_path, ensure_credentials, write_private
from ktrdr.security.serverconf import render
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
              own_tls: TlsFiles | None = None, monitor: str | None = None) -> Fleet:
    """Credentials kept from earlier runs (joined hosts keep working), the config written anew.

    ``tls``: serve TLS with a certificate from the fleet's own CA covering ``tls_names`` (plus
    loopback and this host's name), unless ``own_tls`` names the user's own files.
    """
    auth_dir = home / "auth"
    credentials = ensure_credentials(auth_dir)
    tls_files = own_tls if own_tls is not None else (
        ensure_server_cert(home / "tls", server_names(tls_names)) if tls else None)
    config = auth_dir / SERVER_CONFIG
    write_private(config, render(credentials=credentials, tls=tls_files, monitor=monitor))
    return Fleet(home=home, credentials=credentials, config=config, tls=tls_files)


def write_fleet_file(home: Path, *, urls: list[str], tls: bool) -> None:
    write_private(home / FLEET_FILE, json.dumps({"urls": urls, "tls": tls}, indent=2) + "\n")


def read_fleet_file(home: Path) -> dict[str, object] | None:
    try:
        return json.loads((home / FLEET_FILE).read_text())
    except (OSError, ValueError):
        return None


def invite(*, home: Path, role: str, url: str, ca: Path | None) -> str:
    """A shell script that puts a ``role`` credential (and the CA) on another host and says how to
    run a component there. It holds a secret: whoever has it acts as ``role``."""
    if role not in roles.ROLES or role == roles.COORDINATOR:
        raise ValueError(f"invite a worker, ib, client or viewer, not {role!r}")
    seed = NatsCredential.load(credential_path(home / "auth", role)).seed
    lines = [
        "#!/bin/sh",
        f"# ktrdr: join the fleet at {url} as '{role}'. This file holds a secret credential: keep it",
        "# private, run it on the joining host, then delete it.",
        "set -e",
        'dir="${KTRDR_HOME:-$HOME/.ktrdr}/join"',
        'mkdir -p "$dir" && chmod 700 "$dir"',
        "umask 077",
        f"cat > \"$dir/{role}.nk\" <<'EOF'",
        seed,
        "EOF",
    ]
    flags = f"--nats {url} --creds $dir/{role}.nk"
    env = f"KTRDR_NATS_URL={url} KTRDR_NATS_CREDS=$dir/{role}.nk"
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
