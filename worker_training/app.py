from __future__ import annotations

from ktrdr.dummy import run_dummy
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.worker import Worker
from subjects import names


def build_worker(settings: WorkerSettings) -> Worker:
    return Worker(settings=settings, worker_type="training", capabilities=[names.CAP_DUMMY_ANY],
                  handlers={names.KIND_DUMMY: run_dummy}, slots=1)
