"""Detecting the accelerator the GPU host runs on."""

from __future__ import annotations

from dataclasses import dataclass

from ktrdr.runtime.entry import CannotStart


@dataclass(frozen=True)
class GpuDevice:
    kind: str  # "cuda" or "mps"
    name: str
    memory_mb: int | None
    count: int


class NoGpuError(CannotStart):
    pass


def detect_gpu() -> GpuDevice | None:
    try:
        import torch
    except ImportError:
        return None
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return GpuDevice(kind="cuda", name=props.name, memory_mb=props.total_memory // (1024 * 1024),
                         count=torch.cuda.device_count())
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return GpuDevice(kind="mps", name="Apple MPS", memory_mb=None, count=1)
    return None


def require_gpu() -> GpuDevice:
    device = detect_gpu()
    if device is None:
        raise NoGpuError("host_gpu needs a CUDA or MPS device and found none "
                         "(torch.cuda.is_available() and torch.backends.mps.is_available() are false, "
                         "or torch is not installed); run `ktrdr worker training` for CPU training")
    return device


# Concurrent trainings per GPU by memory: strategy MLPs are small, so memory is rarely the limit;
# the cap keeps kernels from several jobs from starving each other.
GIB_PER_SLOT = 16
MAX_SLOTS = 4


def slots_for_memory(memory_mb: int | None) -> int:
    """One training slot per 16 GiB of device memory, 1 to 4 (1 when the memory is unknown, e.g. MPS)."""
    if not memory_mb:
        return 1
    return max(1, min(MAX_SLOTS, memory_mb // (GIB_PER_SLOT * 1024)))
