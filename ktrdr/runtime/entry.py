"""Running a worker process from its entry point (``python -m worker_backtest`` and friends)."""

from __future__ import annotations

from collections.abc import Callable

from ktrdr.logs import setup_logging
from ktrdr.runtime.loop import run
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.worker import Worker, run_until_signal


def run_worker(build: Callable[[WorkerSettings], Worker]) -> None:
    settings = WorkerSettings()
    setup_logging(settings.log_level)
    worker = build(settings)
    run(run_until_signal(worker))
