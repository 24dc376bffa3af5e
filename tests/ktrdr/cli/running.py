"""Running the ``ktrdr`` command as a user does, stdout and stderr apart, at a terminal 80 columns wide."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

from ktrdr.natsd import NatsServer
from subjects import roles
from tests.conftest import ROOT, role_env


async def cli(server: NatsServer | None, *args: str, timeout: float = 60, unset: tuple[str, ...] = (),
              **env: str) -> subprocess.CompletedProcess[str]:
    """``ktrdr ARGS`` with the client's credential, against ``server`` (None: whatever the settings say);
    ``unset``: variables the command must not see."""
    full = {k: v for k, v in {**os.environ, **role_env(roles.CLIENT), "COLUMNS": "80", **env}.items()
            if k not in unset}
    if server is not None:
        full["KTRDR_NATS_URL"] = server.url
    return await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "ktrdr.cli.app", *args], cwd=ROOT, env=full,
                                   capture_output=True, text=True, timeout=timeout)


def error_lines(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stderr.splitlines() if line.strip()]
