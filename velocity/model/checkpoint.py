"""Self-describing checkpoints: tensors and plain Python values only, loaded with weights_only=True."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from velocity.io import atomic_path


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> None:
    """Write `state` (tensors, dicts, lists, numbers, strings) to `path` atomically.

    A kill during the write leaves the previous checkpoint intact: the bytes go to a temporary
    file beside `path`, are fsynced, and only then renamed over it.
    """
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated or not one of ours."""


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint without unpickling arbitrary objects (weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch raises several types for corrupt or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({err.__class__.__name__}: {err})") from err
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors and values, got {type(state).__name__}")
    return state
