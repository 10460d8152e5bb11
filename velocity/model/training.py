"""Training the Velocity Transformer: its windows, its loss, its validation, plugged into the
shared loop of velocity/model/harness.py (accumulation, checkpoints, exact resume, DistributedDataParallel).

The seed's recipe: label-smoothed KL loss (or CRPS) per target token, Adam(0.9, 0.98, eps 1e-9)
driven by the Noam schedule, gradient accumulation.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from velocity.model.checkpoint import save_checkpoint
from velocity.model.config import ParamsError
from velocity.model.harness import Distributed, FitResult, LoopConfig, budget_steps, distributed_from_env, fit
from velocity.model.loss import abs_error_sum, crps, label_smoothed_kl
from velocity.model.runtime import autocast, seed_everything
from velocity.model.schedule import lr_at
from velocity.model.stitching import disjoint_windows
from velocity.model.codec import N_SPECIALS, PAD, PIANO_PITCHES, START
from velocity.model.transformer import ModelConfig, VelocityNet, build_model, decoder_input

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """The `train:` section of params.yaml."""

    batch_size: int  # windows per micro-batch
    accum: int  # micro-batches per optimizer step (the seed: 10)
    warmup: int  # Noam warmup, optimizer steps
    lr_factor: float  # Noam factor
    epochs: float | None  # passes over the train windows (a fraction counts: 2.5 is two and a half); None: no bound
    max_steps: int | None  # optimizer steps at most; None: no bound (training stops at whichever bound comes first)
    label_smoothing: float
    seed: int
    device: str  # auto: CUDA when present, else CPU
    eval_every: int  # optimizer steps between validation passes
    checkpoint_every: int  # optimizer steps between resumable checkpoints
    eval_windows: int | None  # validate on the first N windows only; None: all
    # Length curriculum: the first `curriculum_steps` steps train on the windows cut into pieces of
    # `curriculum_length` notes. Cross-attention must learn to find note t among the window's notes:
    # on a synthetic token -> velocity task it did so in ~150 steps over 16 notes and carried over
    # to 128, but not within 600 steps over 128 notes. (On the demo corpus: no gain in 400 steps.)
    curriculum_steps: int
    curriculum_length: int
    # Each decoder-input velocity is replaced by <s> ("previous velocity unknown", as at the first
    # note) with this probability, so the decoder cannot lean on copying the previous velocity, which
    # teacher forcing rewards and free-running decoding punishes. 0: off, as the seed.
    input_dropout: float
    # kl: the seed's label-smoothed KL. crps: the squared distance between the predicted and the
    # true velocity's cumulative distributions, an ordinal loss whose per-note optimum is the true
    # distribution and which, unlike KL, charges a guess 30 velocities off more than one 3 off.
    loss: str
    # The `pianist` decoding's stretch is fitted on the validation notes so that its predictions
    # spread at least this share of the true velocities' standard deviation (velocity/model/pieces.py).
    min_std_ratio: float
    # ... and for scores without dynamics markings, whose stretch the score model fits apart (on the
    # validation scores read with one notated velocity): the performance model has none.
    min_std_ratio_unmarked: float
    # Pitch-transpose augmentation: each training window moves by a random -n..n semitones (0: off),
    # unless that would push a note off the keyboard. Timing features do not change with pitch.
    transpose: int
    # Notation dropout (scores only): each training window's notated dynamics are replaced with
    # probability p by what a score without markings reads as (velocity/model/features.py FLAT_NOTATION), so
    # the model learns every style without markings too, not only the styles whose scores are flat.
    notation_dropout: float
    # Processes on this machine: > 1 makes the train stage launch itself through torchrun
    # (DistributedDataParallel; each process takes batch_size windows per micro-batch).
    nproc_per_node: int
    compile: bool  # torch.compile the network (worth it on CUDA for long runs)
    loader_workers: int  # DataLoader processes reading the next steps' windows (0: in the training process)
    # Networks trained alike from seeds seed, seed + 1, ...; the model file keeps them all and each
    # note's distribution is their mean (model.transformer.Ensemble; encoder-only models).
    ensemble: int
    # Ensemble members trained at once, each in its own process with a share of the CPU threads
    # (1: one after another in this process, their curves live in dvclive; else each member's
    # curves are written when it finishes). Ignored under torchrun.
    member_processes: int
    # The averaged decodings (`velocity predict`'s): each network reads windows every `averaged_hop`
    # of a window's length, its windows offset from the previous network's by a share of that hop
    # (velocity/model/stitching.py `staggered_windows`). In (0, 1]; 0.5 is the default windows' hop.
    averaged_hop: float
    # ... and at most `averaged_max_windows` windows of one piece: a longer piece's hop widens, so
    # that a long piece's decoding time stops growing with it (`velocity.model.pieces.piece_hop`).
    averaged_max_windows: int
    # Validation judges, and the model keeps, a moving average of the weights over about the last
    # 1 / (1 - ema) steps (the decay ramps up from the first steps; velocity/model/harness.py); 0: the raw weights.
    ema: float

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ParamsError(f"train.loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        for name in ("batch_size", "accum", "warmup", "eval_every", "checkpoint_every", "nproc_per_node", "ensemble", "member_processes",
                     "averaged_max_windows"):
            if getattr(self, name) < 1:
                raise ParamsError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if not 0 < self.averaged_hop <= 1:
            raise ParamsError(f"train.averaged_hop is a share of a window's length, in (0, 1], got {self.averaged_hop}")
        if self.epochs is not None and not self.epochs > 0:
            raise ParamsError(f"train.epochs must be positive or null, got {self.epochs}")
        if self.epochs is None and self.max_steps is None:
            raise ParamsError("train.epochs and train.max_steps are both null: give at least one")
        if self.max_steps is not None and self.max_steps < 1:
            raise ParamsError(f"train.max_steps must be at least 1 or null, got {self.max_steps}")
        if self.curriculum_steps < 0 or self.curriculum_length < 1:
            raise ParamsError(f"train.curriculum_steps must be >= 0 and train.curriculum_length >= 1, got {self.curriculum_steps} and {self.curriculum_length}")
        for name in ("input_dropout", "notation_dropout"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ParamsError(f"train.{name} must be in [0, 1], got {getattr(self, name)}")
        if self.loader_workers < 0:
            raise ParamsError(f"train.loader_workers must be >= 0, got {self.loader_workers}")
        if not 0.0 <= self.ema < 1.0:
            raise ParamsError(f"train.ema must be in [0, 1), got {self.ema}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ParamsError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")


# The seed's configuration (blog post and original code), as overrides of params.yaml's sections.
# An empty section replaces params.yaml's whole section (features: {} = the seed's inputs only).
SEED_PRESET: dict[str, dict[str, Any]] = {
    "features": {},
    "model": {"kind": "encoder-decoder", "layers": 6, "heads": 8, "d_model": 512, "d_ff": 2048, "dropout": 0.1, "aligned": False},
    "train": {"batch_size": 16, "accum": 10, "warmup": 4000, "lr_factor": 1.0, "epochs": 5, "max_steps": None, "label_smoothing": 0.1,
              "curriculum_steps": 0, "input_dropout": 0.0, "loss": "kl"},
}


def dvc_set_args(preset: dict[str, dict[str, Any]] = SEED_PRESET) -> str:
    """`-S section.key=value ...` for `dvc exp run`, e.g. to train the seed's configuration."""
    def value(v: Any) -> str:  # YAML spelling
        return "null" if v is None else str(v).lower() if isinstance(v, bool) else str(v)

    return " ".join(
        f"-S {section}={{}}" if not keys else " ".join(f"-S {section}.{key}={value(v)}" for key, v in keys.items())
        for section, keys in preset.items()
    )


LOSSES = ("kl", "crps")


class WindowsError(ValueError):
    """A windows array is missing, or not the (n_windows, length) integer array we expect."""


Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (B, T) source ids, (B, T) targets, (B, T, F) feature ids


class Windows:
    """One split's source and target windows (n_windows, length) and their notes' feature ids
    (n_windows, length, n_features), memory-mapped from .npy files."""

    def __init__(self, src: np.ndarray, tgt: np.ndarray, features: np.ndarray | None = None, name: str = "windows") -> None:
        if src.ndim != 2 or src.shape != tgt.shape:
            raise WindowsError(f"{name}: source {src.shape} and target {tgt.shape} must be equal (n_windows, length) arrays")
        if features is None:
            features = np.zeros((*src.shape, 0), dtype=np.int16)
        if features.shape[:2] != src.shape or features.ndim != 3:
            raise WindowsError(f"{name}: features {features.shape} must be (n_windows, length, n_features) for source {src.shape}")
        if not all(np.issubdtype(a.dtype, np.integer) for a in (src, tgt, features)):
            raise WindowsError(f"{name}: expected integer ids, got {src.dtype}, {tgt.dtype} and {features.dtype}")
        self.src, self.tgt, self.features, self.name = src, tgt, features, name

    @classmethod
    def load(cls, folder: Path | str, split: str) -> "Windows":
        """`{folder}/{split}_src.npy`, `_tgt.npy` and `_features.npy` (if any), memory-mapped
        (only the batches read are loaded)."""
        arrays = []
        for kind in ("src", "tgt", "features"):
            path = Path(folder) / f"{split}_{kind}.npy"
            if kind == "features" and not path.is_file():
                arrays.append(None)  # windows written without features
                continue
            if not path.is_file():
                raise WindowsError(f"{path}: no such file (run the windows stage first)")
            try:
                arrays.append(np.load(path, mmap_mode="r"))
            except ValueError as err:
                raise WindowsError(f"{path}: not a readable .npy array ({err})") from err
        return cls(*arrays, name=f"{Path(folder) / split}_{{src,tgt,features}}.npy")

    def subset(self, keep: np.ndarray) -> "Windows":
        """The windows where `keep` (bool per window) is true, in memory."""
        keep = np.asarray(keep, dtype=bool)
        return Windows(self.src[keep], self.tgt[keep], self.features[keep], name=f"{self.name} (subset)")

    @property
    def n_features(self) -> int:
        return self.features.shape[2]

    def __len__(self) -> int:
        return self.src.shape[0]

    @property
    def length(self) -> int:
        return self.src.shape[1]

    def batch(self, index: np.ndarray, device: torch.device) -> Batch:
        """(B, T) source and target ids and (B, T, n_features) feature ids, int64 on `device`."""
        index = np.sort(index)  # ascending reads from the memory map
        arrays = (self.src[index], self.tgt[index], self.features[index])
        return tuple(torch.from_numpy(np.asarray(a, dtype=np.int64)).to(device, non_blocking=True) for a in arrays)


# ---------------------------------------------------------------------------------------------
# The model's part of a step: augmentation, logits, loss


def cut_windows(batch: Batch, length: int) -> Batch:
    """(B, T) windows -> (B * T / length, length) shorter ones, all-padding pieces dropped; each
    piece is then a window of its own (its decoder input starts with <s>). Ragged ends are cut off."""
    src, tgt, features = batch
    B, T = src.shape
    usable = T - T % length
    src = src[:, :usable].reshape(-1, length)  # (B * T / length, length)
    tgt = tgt[:, :usable].reshape(-1, length)
    features = features[:, :usable].reshape(src.shape[0], length, -1)
    keep = src[:, 0] != PAD  # pads only trail a piece's notes, so a piece starting with one is empty
    return src[keep], tgt[keep], features[keep]


def drop_inputs(tgt_in: torch.Tensor, p: float) -> torch.Tensor:
    """Decoder input with each velocity token replaced by <s> with probability `p` (torch's RNG)."""
    if p <= 0.0:
        return tgt_in
    drop = torch.rand(tgt_in.shape, device=tgt_in.device) < p
    return tgt_in.masked_fill(drop & (tgt_in != PAD), START)


def transpose_batch(batch: Batch, max_semitones: int, tokens_per_pitch: int) -> Batch:
    """Each window's source tokens moved by its own random shift in -n..n semitones (torch's RNG);
    a window the shift would push off the 88 keys stays where it is. Source ids are pitch-major
    (velocity/model/codec.py: id = 3 + (pitch - 21) * tokens_per_pitch + ...), so a semitone is one stride."""
    src, tgt, features = batch
    if max_semitones <= 0:
        return batch
    shift = torch.randint(-max_semitones, max_semitones + 1, (src.shape[0], 1), device=src.device)
    note = src >= N_SPECIALS
    pitch = torch.div(src - N_SPECIALS, tokens_per_pitch, rounding_mode="floor") + shift
    fits = (~note | ((pitch >= 0) & (pitch < len(PIANO_PITCHES)))).all(dim=1, keepdim=True)
    return torch.where(note & fits, src + shift * tokens_per_pitch, src), tgt, features


def hide_notation(batch: Batch, flat_ids: dict[int, int], p: float) -> Batch:
    """Each window's notated-dynamics feature columns (column -> the id a flat score gives it) set
    to their flat ids with probability `p` (torch's RNG): the score without its markings."""
    if p <= 0.0 or not flat_ids:
        return batch
    src, tgt, features = batch
    hidden = (torch.rand(src.shape[0], device=src.device) < p)[:, None] & (src != PAD)  # (B, T)
    features = features.clone()
    for column, flat_id in flat_ids.items():
        features[..., column] = torch.where(hidden, flat_id, features[..., column])
    return src, tgt, features


def velocity_logits(model: nn.Module, batch: Batch, kind: str, input_dropout: float = 0.0) -> torch.Tensor:
    """(B, T, tgt_vocab) logits of a batch: teacher forced through the decoder (each input velocity
    hidden with probability `input_dropout`), or in one pass for an encoder-only model. `model` may
    be wrapped (DistributedDataParallel, torch.compile), hence `kind` rather than its class."""
    src, tgt, features = batch
    if kind == "encoder":
        return model(src, features)
    return model(src, drop_inputs(decoder_input(tgt), input_dropout), features=features)


def batch_loss(logits: torch.Tensor, tgt: torch.Tensor, loss: str, smoothing: float) -> tuple[torch.Tensor, int]:
    """Summed training criterion over the batch's notes, and their count."""
    return crps(logits, tgt) if loss == "crps" else label_smoothed_kl(logits, tgt, smoothing)


@torch.no_grad()
def validation_sums(
    model: nn.Module, windows: Windows, indices: np.ndarray, device: torch.device, kind: str,
    smoothing: float, batch_size: int, loss: str,
) -> dict[str, float]:
    """Teacher-forced sums over the windows `indices`: `loss` (the training criterion),
    `cross_entropy` (nats), `mae` (|argmax velocity - true velocity|) and the note `count`."""
    sums = {"loss": 0.0, "cross_entropy": 0.0, "mae": 0.0, "count": 0.0}
    for first in range(0, len(indices), batch_size):
        batch = windows.batch(indices[first : first + batch_size], device)
        tgt = batch[1]
        with autocast(device):
            logits = velocity_logits(model, batch, kind)
        batch_loss_sum, batch_tokens = batch_loss(logits, tgt, loss, smoothing)
        sums["loss"] += batch_loss_sum.item()
        sums["cross_entropy"] += F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten(), ignore_index=PAD, reduction="sum").item()
        sums["mae"] += abs_error_sum(logits.float(), tgt)[0].item()
        sums["count"] += batch_tokens
    return sums


def evaluate(
    model: VelocityNet, windows: Windows, device: torch.device, smoothing: float, batch_size: int, loss: str
) -> dict[str, float]:
    """Teacher-forced means per note over all `windows` (see `validation_sums`)."""
    kind = model.cfg.kind
    was_training = model.training
    model.eval()
    sums = validation_sums(model, windows, np.arange(len(windows)), device, kind, smoothing, batch_size, loss)
    model.train(was_training)
    count = sums.pop("count")
    if count == 0:
        raise WindowsError(f"{windows.name}: no notes to validate on")
    return {name: value / count for name, value in sums.items()}


# ---------------------------------------------------------------------------------------------
# Training: the Velocity Transformer as a task of the shared loop (velocity/model/harness.py)


def make_optimizer(model: nn.Module) -> torch.optim.Adam:
    # lr is set before every step from the Noam schedule.
    return torch.optim.Adam(model.parameters(), lr=0.0, betas=(0.9, 0.98), eps=1e-9)


class VelocityTask:
    """What the loop needs of the Velocity Transformer: windows, the loss of a step, validation."""

    def __init__(
        self, model_cfg: ModelConfig, cfg: TrainConfig, train_windows: Windows, val_windows: Windows, flat_notation: dict[int, int] | None = None
    ) -> None:
        self.model_cfg, self.cfg = model_cfg, cfg
        self.flat_notation = flat_notation or {}  # feature column -> its id in a score without markings
        self.train_windows, self.val_windows = train_windows, val_windows
        self.n_train = len(train_windows)
        if self.n_train == 0:
            raise WindowsError(f"{train_windows.name}: no training windows (the train split is empty)")
        self.n_validation = len(val_windows) if cfg.eval_windows is None else min(len(val_windows), cfg.eval_windows)
        if self.n_validation == 0:
            raise WindowsError(f"{val_windows.name}: no validation windows (the validation split is empty)")
        self.tokens_per_pitch = (model_cfg.src_vocab - N_SPECIALS) // len(PIANO_PITCHES)
        if cfg.transpose and self.tokens_per_pitch == 0:
            raise ParamsError(f"train.transpose: the {model_cfg.src_vocab}-token source vocabulary has no pitch-major layout to transpose")

    def train_batch(self, indices: np.ndarray) -> Batch:
        return self.train_windows.batch(indices, torch.device("cpu"))

    def loss(self, model: nn.Module, batch: Batch, step: int) -> tuple[torch.Tensor, int]:
        cfg = self.cfg
        if step < cfg.curriculum_steps:
            batch = cut_windows(batch, cfg.curriculum_length)
        if cfg.transpose:
            batch = transpose_batch(batch, cfg.transpose, self.tokens_per_pitch)
        batch = hide_notation(batch, self.flat_notation, cfg.notation_dropout)
        with autocast(batch[0].device):
            logits = velocity_logits(model, batch, self.model_cfg.kind, cfg.input_dropout)  # (B, T, V)
        return batch_loss(logits, batch[1], cfg.loss, cfg.label_smoothing)

    def validation_sums(self, model: nn.Module, indices: np.ndarray, device: torch.device) -> dict[str, float]:
        cfg = self.cfg
        return validation_sums(model, self.val_windows, indices, device, self.model_cfg.kind, cfg.label_smoothing, max(cfg.batch_size, 64), cfg.loss)

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return make_optimizer(model)

    def lr(self, step: int) -> float:
        return lr_at(step, self.model_cfg.d_model, self.cfg.warmup, self.cfg.lr_factor)


def total_steps(cfg: TrainConfig, n_train_windows: int, world_size: int = 1) -> int:
    """Optimizer steps of the whole run: `max_steps` or `epochs` passes over the windows at the
    global batch (batch_size x accum x processes), whichever comes first."""
    return budget_steps(cfg.max_steps, cfg.epochs, n_train_windows, cfg.batch_size * cfg.accum * world_size)


def loop_config(cfg: TrainConfig, n_train_windows: int, world_size: int = 1, progress: bool = True, label: str = "train") -> LoopConfig:
    return LoopConfig(
        steps=total_steps(cfg, n_train_windows, world_size), batch_size=cfg.batch_size, accum=cfg.accum,
        eval_every=cfg.eval_every, checkpoint_every=cfg.checkpoint_every, seed=cfg.seed, device=cfg.device,
        compile=cfg.compile, loader_workers=cfg.loader_workers, progress=progress, label=label, ema=cfg.ema,
    )  # fmt: skip


# Train params that do not change what is learned: a run may resume with other values of them.
NOT_FINGERPRINTED = ("checkpoint_every", "device", "nproc_per_node", "compile", "loader_workers", "ensemble", "member_processes", "averaged_hop",
                     "averaged_max_windows", "min_std_ratio_unmarked")


def train(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    train_windows: Windows,
    val_windows: Windows,
    checkpoint_dir: Path | str,
    run_fingerprint: str = "",
    log_point: Callable[[dict[str, float]], None] | None = None,
    progress: bool = True,
    dist: Distributed | None = None,
    flat_notation: dict[int, int] | None = None,
    init_state: dict[str, torch.Tensor] | None = None,
    label: str = "train",
) -> FitResult:
    """Train from scratch (or from `init_state`, see `warm_start`), or continue the run of
    `run_fingerprint` in `checkpoint_dir`; `flat_notation` (feature column -> flat id) is what
    `notation_dropout` hides the dynamics with; `label` names the progress bar."""
    dist = dist or distributed_from_env()
    seed_everything(cfg.seed)  # the initial weights: the same on every process
    model = build_model(model_cfg)
    if init_state:
        model.load_state_dict(init_state, strict=False)
    task = VelocityTask(model_cfg, cfg, train_windows, val_windows, flat_notation)
    return fit(task, model, loop_config(cfg, len(train_windows), dist.world_size, progress, label), checkpoint_dir, run_fingerprint, log_point, dist)


def train_from_folder(windows_dir: Path, model_cfg: ModelConfig, cfg: TrainConfig, checkpoint_dir: Path, run_fingerprint: str,
                      log_point: Callable[[dict[str, float]], None] | None = None, **options: Any) -> FitResult:  # fmt: skip
    """`train` on the train windows of a windows stage's folder, validated on its validation windows
    that hold each note once (`disjoint_windows`); a job that pickles (harness.side_by_side), as it
    carries paths rather than the windows."""
    validation = Windows.load(windows_dir, "validation")
    if (rows := windows_dir / "validation_rows.npy").exists():
        keep = np.zeros(len(validation), dtype=bool)
        keep[disjoint_windows(np.load(rows, mmap_mode="r"))] = True
        validation = validation.subset(keep)
    return train(model_cfg, cfg, Windows.load(windows_dir, "train"), validation, checkpoint_dir, run_fingerprint, log_point, **options)


_FEATURE_EMBEDDING = re.compile(r"(.*\.features\.)(\d+)(\.weight)$")


def warm_start(
    model: nn.Module, source: dict[str, torch.Tensor], features: dict[str, list[float]], source_features: dict[str, list[float]]
) -> dict[str, torch.Tensor]:
    """The weights of another Velocity Transformer (`source`, e.g. the performance model) that mean
    the same in `model`: every weight of the same name and shape, and each note feature's embedding
    where both embed that feature with the same bin edges (`features` and `source_features`: name ->
    edges, in embedding order). A state dict for `model.load_state_dict(..., strict=False)`."""
    own = model.state_dict()
    source_index = {name: i for i, name in enumerate(source_features)}
    state = {}
    for key, weight in own.items():
        match = _FEATURE_EMBEDDING.match(key)
        if match:  # feature j here is feature i there, if it is quantized the same way
            name = list(features)[int(match.group(2))]
            i = source_index.get(name)
            if i is None or source_features[name] != features[name]:
                continue
            key_there = f"{match.group(1)}{i}{match.group(3)}"
        else:
            key_there = key
        if key_there in source and source[key_there].shape == weight.shape:
            state[key] = source[key_there]
    return state


def export_model(
    path: Path | str, result: FitResult, model_cfg: ModelConfig, cfg: TrainConfig, members: Sequence[dict[str, torch.Tensor]] = (), **extra: Any
) -> None:
    """Write the self-contained `velocity.pt`: best weights (and the other ensemble members' best
    weights, `members`) plus all `velocity predict` needs."""
    from velocity.model.decode import FORMAT_VERSION, KIND

    save_checkpoint(path, {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "model": result.best_model,
        "model_config": model_cfg.to_dict(),
        "train": asdict(cfg),
        "step": result.best_step,
        "steps_trained": result.step,
        "best_val_loss": result.best["loss"],
        "val_mae": result.best["mae"],
        **({"members": list(members)} if members else {}),
        **extra,  # vocab, bins, windows, calibration
    })


__all__ = [
    "TrainConfig", "Windows", "WindowsError", "VelocityTask", "train", "evaluate", "validation_sums",
    "export_model", "total_steps", "SEED_PRESET", "dvc_set_args", "cut_windows", "make_optimizer",
]
