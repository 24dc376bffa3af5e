from __future__ import annotations

from ktrdr.dummy import run_dummy
from ktrdr.optypes.dummy import DUMMY
from ktrdr.optypes.training import TRAINING
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.worker import Worker
from subjects import names
from worker_training.handler import make_training_handler


def build_worker(settings: WorkerSettings) -> Worker:
    training = make_training_handler(device="cpu", data_root=settings.home / "data")
    return Worker(settings=settings, worker_type="training",
                  capabilities=[names.CAP_TRAINING_CPU, names.CAP_DUMMY_ANY],
                  handlers={TRAINING: training, DUMMY: run_dummy}, slots=1)
