"""The GPU host's worker: training.gpu first, with its device and slots in the lease."""

from __future__ import annotations

import pytest

import host_gpu.app
from host_gpu.device import GpuDevice, slots_for_memory
from ktrdr.runtime.settings import WorkerSettings
from subjects import names


@pytest.mark.parametrize(("memory_mb", "slots"), [(None, 1), (8_192, 1), (40_960, 2), (81_920, 4), (144_000, 4)])
def test_slots_follow_device_memory(memory_mb: int | None, slots: int) -> None:
    assert slots_for_memory(memory_mb) == slots


def test_the_gpu_host_serves_gpu_training_and_announces_its_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_gpu.app, "require_gpu",
                        lambda: GpuDevice(kind="cuda", name="NVIDIA H100", memory_mb=81_559, count=1))
    worker = host_gpu.app.build_worker(WorkerSettings(worker_id="gpu1"))
    assert worker.capabilities == [names.CAP_TRAINING_GPU, names.CAP_DUMMY_ANY]
    info = worker.info
    assert (info.gpu, info.device_name, info.device_memory_mb, info.slots) == (True, "cuda:NVIDIA H100", 81_559, 4)
    assert host_gpu.app.build_worker(WorkerSettings(worker_id="gpu1", slots=1)).slots == 1
