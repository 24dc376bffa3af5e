"""Container healthchecks, standard library only (one runs every 30 s in every container):

``healthcheck.py http URL``: the URL answers 2xx (the coordinator's /health/ready, nats-server's /healthz).
``healthcheck.py nats``: this container holds an established TCP connection to the port of
``KTRDR_NATS_URL``'s first server (a worker: its NATS client, whose pings find a dead peer).
"""

from __future__ import annotations

import os
import sys
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


if __name__ == "__main__":
    args = sys.argv[1:]
    ok = http(args[1]) if args[:1] == ["http"] and len(args) == 2 else nats_connected() if args == ["nats"] else None
    if ok is None:
        sys.exit("usage: healthcheck.py http URL | healthcheck.py nats")
    sys.exit(0 if ok else 1)
