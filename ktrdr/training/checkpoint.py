"""Serialising training state to bytes and back.

States are plain dicts of tensors and primitive values, written with ``torch.save`` and read
with ``weights_only=True`` so that loading a checkpoint from elsewhere cannot run code.
"""

from __future__ import annotations

import io
from typing import Any

import torch

CHECKPOINT_FORMAT = "ktrdr.training.checkpoint/1"


def dump_state(state: dict[str, Any]) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def load_state(data: bytes) -> dict[str, Any]:
    state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError("not a ktrdr training state")
    return state


def read_checkpoint(data: bytes) -> dict[str, Any]:
    state = load_state(data)
    if state.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"not a training checkpoint (format {state.get('format')!r})")
    return state


def cpu_state_dict(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}
