"""The processes ``ktrdr up`` runs: each one's output is shown in ``ktrdr up``'s terminal, as it
always was, and kept in a log file of its own (``$KTRDR_HOME/logs/<name>.log``), so that a component
that never came up can be named with the file that says why."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO


def log_name(component: str) -> str:
    """``backtest worker 0`` → ``backtest-worker-0.log``."""
    return "-".join(component.split()) + ".log"


@dataclass
class Child:
    name: str
    module: str
    env: dict[str, str]
    log_file: Path | None = None  # None: output straight to this terminal, kept nowhere
    proc: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    started: float = field(default=0.0)
    _copier: threading.Thread | None = None

    def start(self) -> None:
        command = [sys.executable, "-m", self.module]
        if self.log_file is None:
            self.proc = subprocess.Popen(command, env=self.env)
        else:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            # A fresh file per `ktrdr up`; a restarted component adds to it, after the crash it explains.
            log = self.log_file.open("ab" if self.restarts else "wb")
            self.proc = subprocess.Popen(command, env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            assert self.proc.stdout is not None
            self._copier = threading.Thread(target=_copy, args=(self.proc.stdout, log), daemon=True,
                                            name=f"output of {self.name}")
            self._copier.start()
        self.started = time.monotonic()

    def output_done(self, timeout: float = 2.0) -> None:
        """Wait (briefly) until what the exited process wrote is shown and in its log."""
        if self._copier is not None:
            self._copier.join(timeout)


def _copy(source: IO[bytes], log: IO[bytes]) -> None:
    """Line by line to the terminal and the log, until the process closes its output."""
    terminal = getattr(sys.stdout, "buffer", None)
    try:
        for line in iter(source.readline, b""):
            log.write(line)
            log.flush()
            if terminal is not None:
                try:
                    terminal.write(line)
                    terminal.flush()
                except (OSError, ValueError):
                    terminal = None  # nobody reads our output any more (a closed pipe): the log still gets it
    finally:
        log.close()
        source.close()
