"""Running a worker process from its entry point (``python -m worker_backtest`` and friends)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from ktrdr.logs import setup_logging
from ktrdr.runtime.connection import NatsConnectError
from ktrdr.runtime.loop import run
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.worker import Worker, run_until_signal
from ktrdr.security.credentials import CredentialError

log = logging.getLogger(__name__)

S = TypeVar("S", bound=WorkerSettings)


def run_worker(build: Callable[[S], Worker], settings_type: type[S] = WorkerSettings) -> int:  # type: ignore[assignment]
    """Run until a signal; returns the exit code (3: NATS refused us or cannot be trusted).

    ``settings_type``: the process's settings class, read from the environment (a host with
    settings of its own passes its subclass, e.g. ``host_ib.settings.IbSettings``).
    """
    settings = settings_type()
    setup_logging(settings.log_level)
    worker = build(settings)
    try:
        run(run_until_signal(worker))
    except (NatsConnectError, CredentialError) as exc:
        log.error("%s", exc)
        return 3
    return 3 if worker.refused else 0
