"""Using a trained Velocity Transformer: load `models/velocity.pt`, predict windows of notes.

`models/velocity.pt` is self-contained (see `model.training.export_model`): "model" (state dict),
"model_config" (ModelConfig as a dict), "vocab" ({"src", "tgt"}), "bins" (data/bins.json),
"windows" (data/windows/stats.json: length, step, ...), "train" (train params), "step",
"best_val_loss", "val_mae".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from model.checkpoint import CheckpointError, load_checkpoint
from model.runtime import autocast
from model.transformer import N_SPECIALS, PAD, EncoderDecoder, ModelConfig, build_model, greedy_decode

KIND = "velocity-transformer"


def load_model(path: Path | str, device: torch.device | str = "cpu") -> tuple[EncoderDecoder, dict[str, Any]]:
    """The model in eval mode on `device`, and the whole checkpoint dict (vocab, bins, ...)."""
    ckpt = load_checkpoint(path, map_location="cpu")
    if ckpt.get("kind") != KIND:
        raise CheckpointError(f"{path}: not a Velocity Transformer checkpoint (kind={ckpt.get('kind')!r})")
    model = build_model(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt


def predict_windows(
    model: EncoderDecoder,
    src: np.ndarray,  # (n_windows, T) int source ids, 0 = pad
    batch_size: int = 256,
    device: torch.device | str | None = None,
    progress: bool = False,
) -> np.ndarray:
    """Greedy-decoded velocities (n_windows, T) int16, 0 where the source is padding."""
    device = torch.device(device) if device is not None else next(model.parameters()).device
    out = np.zeros(src.shape, dtype=np.int16)
    starts = range(0, len(src), batch_size)
    for start in tqdm(starts, desc="decode", unit="batch", disable=not progress):
        batch = torch.from_numpy(np.asarray(src[start : start + batch_size], dtype=np.int64)).to(device)
        with autocast(device):
            ids = greedy_decode(model, batch)  # (b, T) target ids
        velocity = (ids - N_SPECIALS).clamp(min=0).masked_fill(batch == PAD, 0)
        out[start : start + len(batch)] = velocity.cpu().numpy()
    return out
