"""Container healthchecks, standard library only (one runs every 30 s in every container):

``healthcheck.py http URL``: the URL answers 2xx (the coordinator's /health/ready, nats-server's /healthz).
``healthcheck.py nats``: this container holds an established TCP connection to the port of
``KTRDR_NATS_URL``'s first server.
``healthcheck.py lease``: a worker's lease is live: the file ``KTRDR_LEASE_FILE`` names, which the
worker writes after each lease write with the lease's TTL in it, was written within that TTL. A
worker connected but stuck (its loop blocked, its writes refused) is unhealthy, as the
coordinator sees it.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.request
from urllib.parse import urlsplit

ESTABLISHED = "01"


def http(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=4) as reply:  # noqa: S310 - a URL of our own
            return 200 <= reply.status < 300
    except OSError:
        return False


def nats_connected() -> bool:
    first = os.environ.get("KTRDR_NATS_URL", "nats://127.0.0.1:4222").split(",")[0].strip()
    port = urlsplit(first if "://" in first else f"nats://{first}").port or 4222
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                rows = [line.split() for line in f.readlines()[1:]]
        except OSError:
            continue
        if any(len(r) > 3 and r[3] == ESTABLISHED and int(r[2].rsplit(":", 1)[1], 16) == port for r in rows):
            return True
    return False


def lease_live() -> bool:
    path = os.environ.get("KTRDR_LEASE_FILE")
    if not path:
        return False
    try:
        ttl = float(open(path).read().strip() or "5")
        return time.time() - os.stat(path).st_mtime <= ttl
    except (OSError, ValueError):
        return False


if __name__ == "__main__":
    args = sys.argv[1:]
    checks = {"nats": nats_connected, "lease": lease_live}
    ok = http(args[1]) if args[:1] == ["http"] and len(args) == 2 else (
        checks[args[0]]() if len(args) == 1 and args[0] in checks else None)
    if ok is None:
        sys.exit("usage: healthcheck.py http URL | healthcheck.py nats | healthcheck.py lease")
    sys.exit(0 if ok else 1)
