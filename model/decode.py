"""Loading a trained Velocity Transformer (`models/velocity.pt`); model/pieces.py predicts with it.

`models/velocity.pt` is self-contained (see `model.training.export_model`): "model" (state dict),
"model_config" (ModelConfig as a dict), "vocab" ({"src", "tgt"}), "bins" (data/bins.json),
"windows" (data/windows/stats.json: length, step, ...), "train" (train params), "step",
"best_val_loss", "val_mae".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from model.checkpoint import CheckpointError, load_checkpoint
from model.transformer import EncoderDecoder, ModelConfig, build_model

KIND = "velocity-transformer"


def load_model(path: Path | str, device: torch.device | str = "cpu") -> tuple[EncoderDecoder, dict[str, Any]]:
    """The model in eval mode on `device`, and the whole checkpoint dict (vocab, bins, ...)."""
    ckpt = load_checkpoint(path, map_location="cpu")
    if ckpt.get("kind") != KIND:
        raise CheckpointError(f"{path}: not a Velocity Transformer checkpoint (kind={ckpt.get('kind')!r})")
    model = build_model(ModelConfig.from_dict(ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.to(device).eval(), ckpt
