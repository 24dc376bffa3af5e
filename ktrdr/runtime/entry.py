"""Running a worker process from its entry point (``python -m worker_backtest`` and friends)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from ktrdr.logs import setup_logging
from ktrdr.runtime.connection import NatsConnectError
from ktrdr.runtime.loop import run
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.worker import Worker, run_until_signal
from ktrdr.security.credentials import CredentialError

log = logging.getLogger(__name__)


def run_worker(build: Callable[[WorkerSettings], Worker]) -> int:
    """Run until a signal; returns the exit code (3: NATS refused us or cannot be trusted)."""
    settings = WorkerSettings()
    setup_logging(settings.log_level)
    worker = build(settings)
    try:
        run(run_until_signal(worker))
    except (NatsConnectError, CredentialError) as exc:
        log.error("%s", exc)
        return 3
    return 0
