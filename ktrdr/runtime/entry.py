"""Running a worker process from its entry point (``python -m worker_backtest`` and friends, and
``ktrdr worker ...``/``ktrdr host ...``, which run those).

The order matters: settings first (``KTRDR_*`` variables, then the context ``ktrdr up`` wrote), then
the thread pools sized from the CPUs the process may use (:mod:`ktrdr.runtime.cpus`: numpy and torch
read the variables when they load), and only then the worker's module, which loads them. This module
therefore imports neither at its top.

Exit codes: 0 a stop asked for (SIGTERM, SIGINT), 2 a configuration that cannot work (an unreadable
context, no GPU for the GPU host), 3 refused (NATS refused the credential or cannot be trusted, or
the coordinator refused the worker id: another live process holds it).
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from ktrdr.logs import setup_logging
from ktrdr.runtime.cpus import THREAD_VARS, plan_threads, size_torch
from ktrdr.runtime.settings import WorkerSettings

if TYPE_CHECKING:
    from ktrdr.runtime.worker import Worker

log = logging.getLogger(__name__)

EXIT_CONFIG = 2
EXIT_REFUSED = 3

S = TypeVar("S", bound=WorkerSettings)


class CannotStart(RuntimeError):
    """A worker that cannot run here as configured (the GPU host without a GPU): one line, exit 2."""


def run_worker(build: Callable[[S], Worker] | str, settings_type: type[S] = WorkerSettings,  # type: ignore[assignment]
               *, slots: int = 1) -> int:
    """Run until a signal; returns the exit code (see the module's docstring).

    ``build``: the function that makes the worker, or its module's name (``"worker_backtest.app"``,
    whose ``build_worker`` is used), imported only once the thread pools are sized. ``settings_type``:
    the process's settings class (a host with settings of its own passes its subclass, e.g.
    ``host_ib.settings.IbSettings``). ``slots``: the worker type's slots unless ``KTRDR_SLOTS`` says.
    """
    settings = settings_type()
    setup_logging(settings.log_level)
    if settings.context_problem:
        log.error("%s", settings.context_problem)
        return EXIT_CONFIG
    plan = plan_threads(slots=settings.slots or slots, threads=settings.threads)
    from ktrdr.runtime.connection import NatsConnectError
    from ktrdr.runtime.loop import run
    from ktrdr.runtime.worker import WorkerRefused, run_until_signal
    from ktrdr.security.credentials import CredentialError

    if isinstance(build, str):
        build = importlib.import_module(build).build_worker
    try:
        worker = build(settings)  # type: ignore[operator]
    except CannotStart as exc:
        log.error("%s", exc)
        return EXIT_CONFIG
    size_torch(plan)
    kept = [var for var in THREAD_VARS if var not in plan.set_vars]
    log.info("worker %s: NATS %s (from %s); %d thread(s) per slot for torch and BLAS (%s)%s", worker.worker_id,
             settings.nats_url, settings.nats_url_source, plan.threads, plan.why,
             f"; {', '.join(kept)} as set by the user" if kept else "")
    try:
        run(run_until_signal(worker))
    except (NatsConnectError, CredentialError, WorkerRefused) as exc:
        log.error("%s", exc)
        return EXIT_REFUSED
    return EXIT_REFUSED if worker.refused else 0
