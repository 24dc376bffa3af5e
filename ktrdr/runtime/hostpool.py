"""A host credential taken from a pool, one per running process.

Scaled containers (``docker compose up --scale backtest-worker=5``) are copies of one service with
nothing to tell them apart before they start, yet each should act as a fleet host of its own, so
that a key stolen from one container writes only that host's leases, reports and results
(``subjects.roles``). ``ktrdr provision --host-pool worker=COUNT@DIR`` mints COUNT host keys into
DIR; a worker started with ``KTRDR_NATS_CREDS_POOL=DIR`` holds the first one no other process holds.

The hold is an ``flock`` on the key's file, kept for the process's life: the kernel releases it
however the process ends (``docker kill`` included), so a key is never left taken by a container
that is gone, and a restarted container takes a key again. Locks on one docker volume are shared by
every container that mounts it (one kernel, one inode), and ``flock`` needs no write access, so the
pool can be mounted read-only.
"""

from __future__ import annotations

import fcntl
from pathlib import Path
from typing import IO

from ktrdr.security.credentials import CredentialError


def hold(path: Path, mode: str = "rb") -> IO[bytes] | None:
    """``path`` opened and ``flock``-ed for this process's life (the open file is the hold), or None
    when another process holds it or it cannot be opened."""
    try:
        handle = open(path, mode)  # noqa: SIM115 - held open for the process's life: that is the hold
    except OSError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    return handle


def claim_credential(folder: Path) -> tuple[Path, IO[bytes]]:
    """The first key file in ``folder`` no other process holds, and the open file that holds it."""
    try:
        keys = sorted(p for p in folder.iterdir() if p.suffix == ".nk" and p.is_file())
    except OSError as exc:
        raise CredentialError(f"cannot read the host credential pool {folder}: {exc.strerror or exc}") from None
    if not keys:
        raise CredentialError(f"the host credential pool {folder} holds no keys (*.nk): "
                              "`ktrdr provision --host-pool worker=COUNT@DIR` makes them")
    for key in keys:
        if (handle := hold(key)) is not None:
            return key, handle
    raise CredentialError(f"all {len(keys)} host credentials in {folder} are held by running workers: make the "
                          "pool larger (KTRDR_WORKER_HOSTS for deploy/compose.yaml, then restart nats) or run "
                          "fewer workers")
