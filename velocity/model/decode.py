"""Loading a trained Velocity Transformer (`models/velocity.pt`); velocity/model/pieces.py predicts with it.

`models/velocity.pt` is self-contained (see `velocity.model.training.export_model`): "model" (state dict),
"model_config" (ModelConfig as a dict), "vocab" ({"src", "tgt"}), "bins" (data/bins.json),
"windows" (data/windows/stats.json: length, step, ...), "train" (train params), "step",
"best_val_loss", "val_mae", "calibration" (the `pianist` decoding's stretch), "format_version", and
with `train.ensemble` > 1 "members": the state dicts of the networks trained beside "model"'s.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from velocity.model.checkpoint import CheckpointError, load_checkpoint
from velocity.model.transformer import Ensemble, ModelConfig, VelocityNet, build_model

KIND = "velocity-transformer"
# 1: the seed's inputs, encoder-decoder only. 2: note features, `model_config.kind`, `calibration`.
# 3: `members` (an ensemble). A version-1 file still loads (the new keys take their seed defaults)
# but has no calibration.
FORMAT_VERSION = 3


def format_version(ckpt: dict[str, Any]) -> int:
    return int(ckpt.get("format_version", 1))


def load_model(path: Path | str, device: torch.device | str = "cpu") -> tuple[VelocityNet, dict[str, Any]]:
    """The model in eval mode on `device`, and the whole checkpoint dict (vocab, bins, ...)."""
    ckpt = load_checkpoint(path, map_location="cpu")
    if ckpt.get("kind") != KIND:
        raise CheckpointError(f"{path}: not a Velocity Transformer checkpoint (kind={ckpt.get('kind')!r})")
    if format_version(ckpt) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: model file format version {format_version(ckpt)} is newer than this code reads ({FORMAT_VERSION}): update the project")
    try:
        model = assemble(ModelConfig.from_dict(ckpt["model_config"]), [ckpt["model"], *ckpt.get("members", [])])
    except (TypeError, ValueError, RuntimeError, KeyError) as err:
        raise CheckpointError(f"{path}: model file format version {format_version(ckpt)} does not fit this code's model ({err})") from None
    return model.to(device).eval(), ckpt


def assemble(cfg: ModelConfig, states: list[dict[str, torch.Tensor]]) -> VelocityNet:
    """The network of `cfg` with trained weights `states`: one network, or the `Ensemble` of several."""
    networks = []
    for state in states:
        network = build_model(cfg)
        network.load_state_dict(state)
        networks.append(network)
    return networks[0] if len(networks) == 1 else Ensemble(networks)
