"""The nats-server configuration that enforces ktrdr's roles (and TLS, when the server is reachable
from other hosts).

Written as JSON, which nats-server's config format accepts as it is. Only public keys go in; the
file is still kept private, since its permission blocks map the platform.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ktrdr.security.credentials import NatsCredential, write_private
from ktrdr.security.hosts import Host
from ktrdr.security.tls import TlsFiles
from subjects import roles
from subjects.limits import NATS_MAX_PAYLOAD


def _block(p: roles.Permissions) -> dict[str, Any]:
    publish: dict[str, Any] = {"allow": list(p.publish)}
    subscribe: dict[str, Any] = {"allow": list(p.subscribe)}
    if p.deny_publish:
        publish["deny"] = list(p.deny_publish)
    if p.deny_subscribe:
        subscribe["deny"] = list(p.deny_subscribe)
    block: dict[str, Any] = {"publish": publish, "subscribe": subscribe}
    if p.allow_responses:
        block["allow_responses"] = {"max": 1}
    return block


def authorization(credentials: dict[str, NatsCredential], hosts: Iterable[Host] = ()) -> dict[str, Any]:
    """One user per role and one per invited host, identified by its nkey; no anonymous user."""
    # The worker and ib role keys are this machine's own hosts (local, local-ib): the defaults.
    users = [{"nkey": cred.public_key, "permissions": _block(roles.permissions(role, cred.public_key))}
             for role, cred in credentials.items()]
    users += [{"nkey": h.public_key, "permissions": _block(roles.permissions(h.role, h.public_key, gpu=h.gpu,
                                                                           host=h.name))}
              for h in hosts if not h.local]
    return {"users": users}


def render(*, credentials: dict[str, NatsCredential], hosts: Iterable[Host] = (), tls: TlsFiles | None = None,
           monitor: str | None = None, server_name: str | None = None) -> str:
    """``monitor``: ``host:port`` of the monitoring endpoint, which has no auth of its own, so it is
    only ever bound to loopback by ``ktrdr up``. ``server_name``: the name the server runs with; a
    config that lacks it cannot be reloaded (nats-server refuses a reload that changes the name)."""
    conf: dict[str, Any] = {"max_payload": NATS_MAX_PAYLOAD, "authorization": authorization(credentials, hosts)}
    if server_name:
        conf["server_name"] = server_name
    if tls is not None:
        # Required of every client once present: nobody joins in plain text.
        conf["tls"] = {"cert_file": str(tls.cert), "key_file": str(tls.key), "ca_file": str(tls.ca),
                       "timeout": 5}
    if monitor:
        conf["http"] = monitor
    return json.dumps(conf, indent=2) + "\n"


def write(path: Path, text: str) -> Path:
    write_private(path, text)
    return path


def rewrite_authorization(path: Path, credentials: dict[str, NatsCredential], hosts: Iterable[Host]) -> None:
    """The config at ``path`` with its users as they are now (an invite or a revocation), the rest kept."""
    conf = json.loads(path.read_text())
    conf["authorization"] = authorization(credentials, hosts)
    write_private(path, json.dumps(conf, indent=2) + "\n")
