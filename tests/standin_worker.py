"""A real worker process whose every job kind runs the dummy handler.

Tests start it as ``python -m tests.standin_worker`` to kill, freeze or SIGTERM a worker, and to
stand in for a GPU host (``KTRDR_GPU=true KTRDR_EXTRA_CAPABILITIES=training.gpu``) on machines
without one. Capabilities come from ``KTRDR_EXTRA_CAPABILITIES``.
"""

from __future__ import annotations

from ktrdr.dummy import run_dummy
from ktrdr.runtime.entry import run_worker
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.worker import Worker
from subjects import names


def build_worker(settings: WorkerSettings) -> Worker:
    kinds = {names.KIND_DUMMY, names.KIND_TRAINING, names.KIND_BACKTEST, names.KIND_DATA}
    return Worker(settings=settings, worker_type="standin", capabilities=[],
                  handlers=dict.fromkeys(kinds, run_dummy), slots=1)


if __name__ == "__main__":
    run_worker(build_worker)
