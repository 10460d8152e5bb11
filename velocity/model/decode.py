"""Loading a trained Velocity Transformer (`models/velocity.pt`); velocity/model/pieces.py predicts with it.

`load_velocity_model` gives the network with everything its checkpoint says about quantizing new
notes like its training data (bins, vocabulary, window geometry) and about the `pianist` decoding
(calibration, tree).

`models/velocity.pt` is self-contained (see `velocity.model.training.export_model`): "model" (state dict),
"model_config" (ModelConfig as a dict), "vocab" ({"src", "tgt"}), "bins" (data/bins.json),
"windows" (data/windows/stats.json: length, step, ...), "train" (train params), "step",
"best_val_loss", "val_mae", "calibration" (the `pianist` decoding's stretch), "format_version", and
with `train.ensemble` > 1 "members": the state dicts of the networks trained beside "model"'s. The
score model also carries "tree" and "calibration_unmarked" (the stretch for scores without markings).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from velocity.model.calibration import Calibration
from velocity.model.checkpoint import CheckpointError, load_checkpoint
from velocity.model.codec import Vocab
from velocity.model.transformer import Ensemble, ModelConfig, VelocityNet, build_model
from velocity.model.trees import TreeEnsemble

KIND = "velocity-transformer"
# 1: the seed's inputs, encoder-decoder only. 2: note features, `model_config.kind`, `calibration`.
# 3: `members` (an ensemble). A version-1 file still loads (the new keys take their seed defaults)
# but has no calibration.
FORMAT_VERSION = 3
# What a version-1 file's model_config meant by the keys it predates: the seed's network and inputs.
VERSION_1_MODEL_CONFIG = {"aligned": False, "kind": "encoder-decoder", "features": ()}


def format_version(ckpt: dict[str, Any]) -> int:
    return int(ckpt.get("format_version", 1))


def model_config(ckpt: dict[str, Any]) -> ModelConfig:
    """The network's shape as the checkpoint records it."""
    stored = ckpt["model_config"]
    if format_version(ckpt) == 1:
        stored = {**VERSION_1_MODEL_CONFIG, **stored}
    return ModelConfig.from_dict(stored)


def load_model(path: Path | str, device: torch.device | str = "cpu") -> tuple[VelocityNet, dict[str, Any]]:
    """The model in eval mode on `device`, and the whole checkpoint dict (vocab, bins, ...)."""
    ckpt = load_checkpoint(path, map_location="cpu")
    if ckpt.get("kind") != KIND:
        raise CheckpointError(f"{path}: not a Velocity Transformer checkpoint (kind={ckpt.get('kind')!r})")
    if format_version(ckpt) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: model file format version {format_version(ckpt)} is newer than this code reads ({FORMAT_VERSION}): update the project")
    try:
        model = assemble(model_config(ckpt), [ckpt["model"], *ckpt.get("members", [])])
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


@dataclass(frozen=True)
class VelocityModel:
    """A model with everything its checkpoint says about quantizing new notes like its training
    data: the bins, the vocabulary and the window geometry."""

    model: VelocityNet
    bins: dict[str, Any]
    vocab: Vocab
    length: int  # notes per window
    step: int  # hop between window starts
    checkpoint: dict[str, Any]  # the rest: model_config, train params, ...

    @property
    def train_params(self) -> dict[str, Any]:
        return dict(self.checkpoint.get("train") or {})

    @property
    def averaged_hop(self) -> int:
        """Notes between each network's windows in the averaged decodings (`train.averaged_hop` of
        the window's length); in a file from before that key, the training windows' step."""
        share = self.train_params.get("averaged_hop")
        return max(1, round(share * self.length)) if share else self.step

    @property
    def averaged_max_windows(self) -> int | None:
        """The most windows each network reads of one piece in the averaged decodings (None: no bound,
        a file from before `train.averaged_max_windows`)."""
        return self.train_params.get("averaged_max_windows")

    @property
    def calibration(self) -> Calibration | None:
        found = self.checkpoint.get("calibration")
        return Calibration(**found) if found else None

    @property
    def unmarked_calibration(self) -> Calibration | None:
        """The score model's blend and stretch for scores without dynamics markings (None: `calibration` serves every piece)."""
        found = self.checkpoint.get("calibration_unmarked")
        return Calibration(**found) if found else None

    @property
    def tree(self) -> TreeEnsemble | None:
        """The tree the `pianist` decoding blends with (the score model's), if the model carries one."""
        found = self.checkpoint.get("tree")
        return TreeEnsemble.from_state(found) if found else None


def load_velocity_model(path: Path | str, device: torch.device | str = "cpu") -> VelocityModel:
    """Load a self-contained `models/velocity.pt` (weights_only) for predicting whole pieces."""
    model, ckpt = load_model(path, device)
    missing = [key for key in ("bins", "vocab") if key not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: the checkpoint lacks '{missing[0]}', so new notes cannot be quantized like its training data")
    # The window geometry of training (data/windows/stats.json); the positional table is as long as a window.
    windows = ckpt.get("windows") or {}
    if "step" not in windows:
        raise CheckpointError(f"{path}: the checkpoint lacks the step of its training windows, so new pieces cannot be cut like its training data")
    length = int(windows.get("length", model.cfg.max_len))
    return VelocityModel(model=model, bins=ckpt["bins"], vocab=Vocab.from_dict(ckpt["vocab"]), length=length, step=int(windows["step"]), checkpoint=ckpt)


def untrained_twin(trained: VelocityModel) -> VelocityModel:
    """The same architecture initialized from the same seed as training did, never trained."""
    seed = int(trained.train_params["seed"])
    device = next(trained.model.parameters()).device
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)  # what model.training.train does before build_model
        model = build_model(model_config(trained.checkpoint))
    return replace(trained, model=model.to(device).eval())
