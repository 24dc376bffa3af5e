"""Device choice and per-device tuning for training."""

from __future__ import annotations

from dataclasses import dataclass

import torch


def mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` prefers CUDA, then Apple MPS, then CPU; explicit requests must be available."""
    name = device.lower()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' requested but CUDA is not available")
    if dev.type == "mps" and not mps_available():
        raise RuntimeError("device 'mps' requested but MPS is not available")
    return dev


@dataclass(frozen=True)
class DeviceProfile:
    """How a training step runs on a device; never what it optimises.

    The batch size is not here: it changes the optimisation, and a training offered to the GPU
    first may run on a CPU worker, or resume there from a GPU's checkpoint. It is the strategy's
    ``training.batch_size`` (the schema's 32 when unset) on every device.
    ``cuda_graphs`` captures the training step once and replays it (CUDA only);
    ``steps_per_graph`` unrolls several optimiser steps into one capture to amortise the
    per-replay launch cost for tiny models.
    """

    cuda_graphs: bool = False
    steps_per_graph: int = 1
    eval_chunk: int = 65536


PROFILES: dict[str, DeviceProfile] = {
    "cpu": DeviceProfile(),
    "mps": DeviceProfile(),
    "cuda": DeviceProfile(cuda_graphs=True, steps_per_graph=8, eval_chunk=1 << 20),
}


def default_profile(device: torch.device) -> DeviceProfile:
    return PROFILES.get(device.type, PROFILES["cpu"])
