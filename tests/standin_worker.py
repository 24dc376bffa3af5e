"""A real worker process whose every job kind runs the dummy handler.

Tests start it as ``python -m tests.standin_worker`` to kill, freeze or SIGTERM a worker, and to
stand in for a GPU host (``KTRDR_GPU=true KTRDR_EXTRA_CAPABILITIES=training.gpu``) on machines
without one. Capabilities come from ``KTRDR_EXTRA_CAPABILITIES``.

``KTRDR_STANDIN_REAL_TRAINING=1`` serves ``training`` with the real training handler (on CPU,
bars under ``$KTRDR_HOME/data``), to kill a worker in the middle of a real training.
"""

from __future__ import annotations

import os

from ktrdr.dummy import run_dummy
from ktrdr.runtime.context import Handler
from ktrdr.runtime.entry import run_worker
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.worker import Worker
from subjects import names


def build_worker(settings: WorkerSettings) -> Worker:
    kinds = {names.KIND_DUMMY, names.KIND_TRAINING, names.KIND_BACKTEST, names.KIND_DATA}
    handlers: dict[str, Handler] = dict.fromkeys(kinds, run_dummy)
    if os.environ.get("KTRDR_STANDIN_REAL_TRAINING") == "1":
        from worker_training.handler import make_training_handler

        handlers[names.KIND_TRAINING] = make_training_handler(device="cpu", data_root=settings.home / "data")
    return Worker(settings=settings, worker_type="standin", capabilities=[], handlers=handlers, slots=1)


if __name__ == "__main__":
    raise SystemExit(run_worker(build_worker))
