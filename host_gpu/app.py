from __future__ import annotations

from host_gpu.device import require_gpu, slots_for_memory
from ktrdr.dummy import run_dummy
from ktrdr.optypes.dummy import DUMMY
from ktrdr.optypes.training import TRAINING
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.worker import Worker
from subjects import names
from worker_training.handler import make_training_handler


def build_worker(settings: WorkerSettings) -> Worker:
    device = require_gpu()
    training = make_training_handler(device=device.kind, data_root=settings.home / "data")
    # Worker prefers settings.slots (KTRDR_SLOTS) over the memory-based default.
    return Worker(settings=settings, worker_type="gpu", capabilities=[names.CAP_TRAINING_GPU, names.CAP_DUMMY_ANY],
                  handlers={TRAINING: training, DUMMY: run_dummy},
                  slots=slots_for_memory(device.memory_mb), gpu=True,
                  device_name=f"{device.kind}:{device.name}", device_memory_mb=device.memory_mb)
