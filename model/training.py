"""Training the Velocity Transformer: data streaming, one optimizer step, evaluation, the loop.

The seed's recipe: label-smoothed KL loss divided by the number of target tokens, Adam(0.9, 0.98,
eps 1e-9) driven by the Noam schedule, gradient accumulation. The loop checkpoints atomically every
`checkpoint_every` steps (model, optimizer, step, RNG states) and resumes from that exactly: the
data order is a pure function of (seed, epoch), so the step number alone says where in the data
the run stopped.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.loss import abs_error_sum, crps, label_smoothed_kl
from model.runtime import autocast, pick_device, seed_everything
from model.schedule import lr_at
from model.codec import N_SPECIALS, PAD, PIANO_PITCHES, START
from model.transformer import EncoderOnly, ModelConfig, VelocityNet, build_model, decoder_input

log = logging.getLogger(__name__)

LAST, BEST = "last.pt", "best.pt"


@dataclass(frozen=True)
class TrainConfig:
    """The `train:` section of params.yaml."""

    batch_size: int = 16  # windows per micro-batch
    accum: int = 1  # micro-batches per optimizer step (the seed: 10)
    warmup: int = 4000  # Noam warmup, optimizer steps
    lr_factor: float = 1.0  # Noam factor
    epochs: int = 5
    max_steps: int | None = None  # optimizer steps; None: as many as `epochs` give
    label_smoothing: float = 0.1
    seed: int = 0
    device: str = "auto"  # auto: CUDA when present, else CPU
    eval_every: int = 100  # optimizer steps between validation passes
    checkpoint_every: int = 100  # optimizer steps between resumable checkpoints
    eval_windows: int | None = None  # validate on the first N windows only; None: all
    # Length curriculum: the first `curriculum_steps` steps train on the windows cut into pieces of
    # `curriculum_length` notes. Cross-attention must learn to find note t among the window's notes:
    # on a synthetic token -> velocity task it did so in ~150 steps over 16 notes and carried over
    # to 128, but not within 600 steps over 128 notes. (On the demo corpus: no gain in 400 steps.)
    curriculum_steps: int = 0
    curriculum_length: int = 16
    # Each decoder-input velocity is replaced by <s> ("previous velocity unknown", as at the first
    # note) with this probability, so the decoder cannot lean on copying the previous velocity, which
    # teacher forcing rewards and free-running decoding punishes. 0: off, as the seed.
    input_dropout: float = 0.0
    # kl: the seed's label-smoothed KL. crps: the squared distance between the predicted and the
    # true velocity's cumulative distributions, an ordinal loss whose per-note optimum is the true
    # distribution and which, unlike KL, charges a guess 30 velocities off more than one 3 off.
    loss: str = "kl"
    # The `pianist` decoding's stretch is fitted on the validation notes so that its predictions
    # spread at least this share of the true velocities' standard deviation (model/pieces.py).
    min_std_ratio: float = 0.8
    # Pitch-transpose augmentation: each training window moves by a random -n..n semitones (0: off),
    # unless that would push a note off the keyboard. Timing features do not change with pitch.
    transpose: int = 0

    def __post_init__(self) -> None:
        if self.loss not in LOSSES:
            raise ValueError(f"train.loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        for name in ("batch_size", "accum", "warmup", "epochs", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if self.max_steps is not None and self.max_steps < 1:
            raise ValueError(f"train.max_steps must be at least 1 or null, got {self.max_steps}")
        if self.curriculum_steps < 0 or self.curriculum_length < 1:
            raise ValueError(f"train.curriculum_steps must be >= 0 and train.curriculum_length >= 1, got {self.curriculum_steps} and {self.curriculum_length}")
        if not 0.0 <= self.input_dropout <= 1.0:
            raise ValueError(f"train.input_dropout must be in [0, 1], got {self.input_dropout}")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"train.label_smoothing must be in [0, 1), got {self.label_smoothing}")


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
# Data order: a pure function of (seed, epoch), so a resumed run reads exactly what it would have


def epoch_order(n_windows: int, seed: int, epoch: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n_windows, generator=generator).numpy()


class BatchStream:
    """Micro-batches of window indices, epoch after epoch; micro-batch k is always the same."""

    def __init__(self, n_windows: int, batch_size: int, seed: int) -> None:
        if n_windows == 0:
            raise WindowsError("no training windows: the train split is empty")
        self.n_windows, self.batch_size, self.seed = n_windows, batch_size, seed
        self.batches_per_epoch = math.ceil(n_windows / batch_size)
        self._order: tuple[int, np.ndarray] | None = None

    def position(self, micro_batch: int) -> tuple[int, int]:
        """(epoch, batch within the epoch) of the k-th micro-batch."""
        return divmod(micro_batch, self.batches_per_epoch)

    def indices(self, micro_batch: int) -> np.ndarray:
        epoch, b = self.position(micro_batch)
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, epoch_order(self.n_windows, self.seed, epoch))
        return self._order[1][b * self.batch_size : (b + 1) * self.batch_size]


def total_steps(cfg: TrainConfig, n_train_windows: int) -> int:
    """Optimizer steps of the whole run: `max_steps`, else what `epochs` of micro-batches give."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, cfg.epochs * math.ceil(n_train_windows / cfg.batch_size) // cfg.accum)


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


# ---------------------------------------------------------------------------------------------
# One step, one evaluation


def make_optimizer(model: VelocityNet) -> torch.optim.Adam:
    # lr is set before every step from the Noam schedule.
    return torch.optim.Adam(model.parameters(), lr=0.0, betas=(0.9, 0.98), eps=1e-9)


def drop_inputs(tgt_in: torch.Tensor, p: float) -> torch.Tensor:
    """Decoder input with each velocity token replaced by <s> with probability `p` (torch's RNG)."""
    if p <= 0.0:
        return tgt_in
    drop = torch.rand(tgt_in.shape, device=tgt_in.device) < p
    return tgt_in.masked_fill(drop & (tgt_in != PAD), START)


def transpose_batch(batch: Batch, max_semitones: int, tokens_per_pitch: int) -> Batch:
    """Each window's source tokens moved by its own random shift in -n..n semitones (torch's RNG);
    a window the shift would push off the 88 keys stays where it is. Source ids are pitch-major
    (model/codec.py: id = 3 + (pitch - 21) * tokens_per_pitch + ...), so a semitone is one stride."""
    src, tgt, features = batch
    if max_semitones <= 0:
        return batch
    shift = torch.randint(-max_semitones, max_semitones + 1, (src.shape[0], 1), device=src.device)
    note = src >= N_SPECIALS
    pitch = torch.div(src - N_SPECIALS, tokens_per_pitch, rounding_mode="floor") + shift
    fits = (~note | ((pitch >= 0) & (pitch < len(PIANO_PITCHES)))).all(dim=1, keepdim=True)
    return torch.where(note & fits, src + shift * tokens_per_pitch, src), tgt, features


def velocity_logits(model: VelocityNet, batch: Batch, input_dropout: float = 0.0) -> torch.Tensor:
    """(B, T, tgt_vocab) logits of a batch: teacher forced through the decoder (each input velocity
    hidden with probability `input_dropout`), or in one pass for an encoder-only model."""
    src, tgt, features = batch
    if isinstance(model, EncoderOnly):
        return model(src, features)
    return model(src, drop_inputs(decoder_input(tgt), input_dropout), features=features)


def batch_loss(logits: torch.Tensor, tgt: torch.Tensor, loss: str, smoothing: float) -> tuple[torch.Tensor, int]:
    """Summed training criterion over the batch's notes, and their count."""
    return crps(logits, tgt) if loss == "crps" else label_smoothed_kl(logits, tgt, smoothing)


def train_step(
    model: VelocityNet,
    optimizer: torch.optim.Optimizer,
    micro_batches: list[Batch],
    lr: float,
    cfg: TrainConfig,
    device: torch.device,
) -> tuple[float, int]:
    """One optimizer step over `micro_batches` (gradient accumulation); returns (loss sum, tokens).

    Each micro-batch's loss is divided by its own token count, as the seed did, and by the number of
    micro-batches so the step size does not grow with accumulation.
    """
    model.train()
    loss_sum, n_tokens = 0.0, 0
    for batch in micro_batches:
        with autocast(device):
            logits = velocity_logits(model, batch, cfg.input_dropout)  # (B, T, V)
        batch_loss_sum, batch_tokens = batch_loss(logits, batch[1], cfg.loss, cfg.label_smoothing)
        (batch_loss_sum / max(batch_tokens, 1) / len(micro_batches)).backward()
        loss_sum += batch_loss_sum.item()
        n_tokens += batch_tokens
    for group in optimizer.param_groups:
        group["lr"] = lr
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, n_tokens


@torch.no_grad()
def evaluate(
    model: VelocityNet,
    windows: Windows,
    device: torch.device,
    smoothing: float = 0.1,
    batch_size: int = 64,
    max_windows: int | None = None,
    loss: str = "kl",
) -> dict[str, float]:
    """Teacher-forced validation per note: `loss` (the training criterion), `cross_entropy` (nats)
    and `mae` (|argmax velocity - true velocity|)."""
    was_training = model.training
    model.eval()
    n = len(windows) if max_windows is None else min(len(windows), max_windows)
    loss_sum, ce_sum, err_sum, n_tokens = 0.0, 0.0, 0.0, 0
    for start in range(0, n, batch_size):
        batch = windows.batch(np.arange(start, min(start + batch_size, n)), device)
        tgt = batch[1]
        with autocast(device):
            logits = velocity_logits(model, batch)
        batch_loss_sum, batch_tokens = batch_loss(logits, tgt, loss, smoothing)
        batch_err, _ = abs_error_sum(logits.float(), tgt)
        ce_sum += F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten(), ignore_index=PAD, reduction="sum").item()
        loss_sum += batch_loss_sum.item()
        err_sum += batch_err.item()
        n_tokens += batch_tokens
    model.train(was_training)
    if n_tokens == 0:
        raise WindowsError(f"{windows.name}: no notes to validate on")
    return {"loss": loss_sum / n_tokens, "cross_entropy": ce_sum / n_tokens, "mae": err_sum / n_tokens}


# ---------------------------------------------------------------------------------------------
# Checkpoints and resuming


def fingerprint(*parts: Any, files: list[Path] = ()) -> str:
    """sha256 over JSON-able `parts` and the bytes of `files`: what a checkpoint was trained on."""
    h = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    for path in files:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def find_resumable(checkpoint_dir: Path | str, expected_fingerprint: str) -> dict[str, Any] | None:
    """The last checkpoint in `checkpoint_dir` when it belongs to this very run, else None.

    A checkpoint of other params or data (a stale one) or an unreadable one is ignored, so the run
    starts over instead of continuing someone else's training.
    """
    path = Path(checkpoint_dir) / LAST
    if not path.exists():
        return None
    try:
        state = load_checkpoint(path)
    except CheckpointError as err:
        log.warning("ignoring %s", err)
        return None
    if state.get("fingerprint") != expected_fingerprint:
        log.info("%s was trained with other params or data: starting over", path)
        return None
    return state


@dataclass
class TrainResult:
    start_step: int  # 0 for a fresh run, else the step it resumed from
    step: int  # optimizer steps done
    best_step: int
    best_val_loss: float
    best_val_mae: float
    best_model: dict[str, torch.Tensor]  # state dict of the best validation loss


def train(
    model_cfg: ModelConfig,
    cfg: TrainConfig,
    train_windows: Windows,
    val_windows: Windows,
    checkpoint_dir: Path | str,
    run_fingerprint: str = "",
    resume: dict[str, Any] | None = None,
    log_metrics: Callable[[int, dict[str, float]], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train from scratch, or continue from `resume` (a checkpoint from `find_resumable`).

    Writes `checkpoint_dir/last.pt` every `checkpoint_every` steps and at the end, and
    `checkpoint_dir/best.pt` whenever the validation loss improves. `log_metrics(step, metrics)`
    receives train_loss, val_loss, val_mae and lr after every evaluation.
    """
    checkpoint_dir = Path(checkpoint_dir)
    device = pick_device(cfg.device)
    seed_everything(cfg.seed)
    model = build_model(model_cfg).to(device)
    optimizer = make_optimizer(model)
    stream = BatchStream(len(train_windows), cfg.batch_size, cfg.seed)
    n_steps = total_steps(cfg, len(train_windows))
    tokens_per_pitch = (model_cfg.src_vocab - N_SPECIALS) // len(PIANO_PITCHES)

    step, best = 0, {"step": 0, "val_loss": math.inf, "val_mae": math.inf}
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        step, best = int(resume["step"]), dict(resume["best"])
        set_rng_state(resume["rng"])
        log.info("resuming from step %d of %d (%s)", step, n_steps, checkpoint_dir / LAST)
    else:
        for name in (LAST, BEST):  # stale files of another run must not be mistaken for ours
            (checkpoint_dir / name).unlink(missing_ok=True)
    start_step = step
    log.info(
        "training %s parameters on %s for %d steps (%d windows, %d micro-batches/epoch, accum %d)",
        f"{model.num_params():,}", device, n_steps, len(train_windows), stream.batches_per_epoch, cfg.accum,
    )

    def save_last() -> None:
        epoch, batch = stream.position(step * cfg.accum)
        save_checkpoint(checkpoint_dir / LAST, {
            "fingerprint": run_fingerprint,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "step": step,
            "epoch": epoch,  # where the next micro-batch comes from (informative; derived from step)
            "batch_in_epoch": batch,
            "dvclive_step": step,  # metrics are logged with the optimizer step as their x
            "best": best,
            "rng": rng_state(),
        })

    window_loss, window_tokens = 0.0, 0
    bar = tqdm(total=n_steps, initial=step, desc="train", unit="step", disable=not progress, dynamic_ncols=True)
    while step < n_steps:
        first = step * cfg.accum
        micro_batches = [train_windows.batch(stream.indices(k), device) for k in range(first, first + cfg.accum)]
        if step < cfg.curriculum_steps:
            micro_batches = [cut_windows(batch, cfg.curriculum_length) for batch in micro_batches]
        if cfg.transpose:
            micro_batches = [transpose_batch(batch, cfg.transpose, tokens_per_pitch) for batch in micro_batches]
        lr = lr_at(step + 1, model_cfg.d_model, cfg.warmup, cfg.lr_factor)
        loss_sum, n_tokens = train_step(model, optimizer, micro_batches, lr, cfg, device)
        step += 1
        window_loss, window_tokens = window_loss + loss_sum, window_tokens + n_tokens
        bar.update(1)
        bar.set_postfix(loss=f"{loss_sum / max(n_tokens, 1):.3f}", lr=f"{lr:.2e}")

        if step % cfg.eval_every == 0 or step == n_steps:
            val = evaluate(model, val_windows, device, cfg.label_smoothing, max(cfg.batch_size, 64), cfg.eval_windows, cfg.loss)
            metrics = {"train_loss": window_loss / max(window_tokens, 1), "val_loss": val["loss"], "val_mae": val["mae"], "lr": lr}
            window_loss, window_tokens = 0.0, 0
            if val["loss"] < best["val_loss"]:
                best = {"step": step, "val_loss": val["loss"], "val_mae": val["mae"]}
                save_checkpoint(checkpoint_dir / BEST, {"fingerprint": run_fingerprint, "model": model.state_dict(), **best})
            if log_metrics is not None:
                log_metrics(step, metrics)
            bar.write(f"step {step}: train loss {metrics['train_loss']:.4f}, val loss {val['loss']:.4f}, val MAE {val['mae']:.2f}")
        if step % cfg.checkpoint_every == 0 or step == n_steps:
            save_last()
    bar.close()

    best_state = load_checkpoint(checkpoint_dir / BEST)
    if best_state.get("fingerprint") != run_fingerprint:
        raise CheckpointError(f"{checkpoint_dir / BEST}: belongs to another run")
    return TrainResult(
        start_step=start_step,
        step=step,
        best_step=int(best["step"]),
        best_val_loss=float(best["val_loss"]),
        best_val_mae=float(best["val_mae"]),
        best_model=best_state["model"],
    )


def export_model(path: Path | str, result: TrainResult, model_cfg: ModelConfig, cfg: TrainConfig, **extra: Any) -> None:
    """Write the self-contained `velocity.pt`: best weights plus all `velocity predict` needs."""
    from model.decode import FORMAT_VERSION, KIND

    save_checkpoint(path, {
        "kind": KIND,
        "format_version": FORMAT_VERSION,
        "model": result.best_model,
        "model_config": model_cfg.to_dict(),
        "train": asdict(cfg),
        "step": result.best_step,
        "steps_trained": result.step,
        "best_val_loss": result.best_val_loss,
        "val_mae": result.best_val_mae,
        **extra,  # vocab, bins, windows, calibration
    })


__all__ = [
    "TrainConfig", "Windows", "WindowsError", "BatchStream", "train", "train_step", "evaluate",
    "find_resumable", "fingerprint", "export_model", "total_steps", "SEED_PRESET", "dvc_set_args",
    "cut_windows", "make_optimizer",
]
