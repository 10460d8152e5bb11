"""Self-describing checkpoints: tensors and plain Python values only, loaded with weights_only=True."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def save_checkpoint(path: Path | str, state: dict[str, Any]) -> None:
    """Write `state` (tensors, dicts, lists, numbers, strings) to `path` atomically.

    A kill during the write leaves the previous checkpoint intact: we write a temporary file in
    the same folder, fsync it, then rename it over `path`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0600; a checkpoint should read like any new file
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


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
