from __future__ import annotations

from host_gpu.device import require_gpu
from ktrdr.dummy import run_dummy
from ktrdr.runtime.settings import WorkerSettings
from ktrdr.runtime.worker import Worker
from subjects import names


def build_worker(settings: WorkerSettings) -> Worker:
    device = require_gpu()
    return Worker(settings=settings, worker_type="gpu", capabilities=[names.CAP_DUMMY_ANY],
                  handlers={names.KIND_DUMMY: run_dummy}, slots=1, gpu=True,
                  device_name=f"{device.kind}:{device.name}", device_memory_mb=device.memory_mb)
