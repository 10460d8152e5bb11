"""Predict the velocity of every note of whole pieces: cut into windows, decode, stitch.

A piece longer than one window is cut exactly as the windows stage cuts it with `tail: last`:
windows of `length` notes every `step` notes, plus one window ending at the last note when the
last regular window stops short of it. A piece shorter than one window is one window padded with
<pad> (as `short: pad`). The windows of all pieces are decoded together in batches (DECODINGS),
each only as far as the last note it owns (below): later notes never change earlier ones.

Stitching: a note covered by several overlapping windows takes the prediction of the window in
which it sits nearest the window's centre, i.e. with the most context on both sides (the decoder
has seen the most of the window's own predictions, the encoder the most notes either side). A tie
goes to the earlier window. The distance is measured from the centre of the full window, so in a
padded short piece every note simply takes its only window. Each note therefore gets exactly one
prediction; `plan_windows` returns that choice and `stitch` applies it.

Averaging (`averaged` and `pianist` decodings): instead, every window gives every note it holds a
velocity distribution from the notes alone (one pass), and each note takes the median of the mean
of its distributions, so it hears all the context around it. `pianist` then stretches the result
(`Calibration`, learned on validation) so its dynamics span a pianist's range; a model that carries a
tree (the score model: `velocity.model.trees`) first blends its velocity with the tree's, by a weight also
learned on validation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from velocity.model.checkpoint import CheckpointError
from velocity.model.codec import N_SPECIALS, PAD, Vocab, id_to_velocity, piece_bounds, tokenize, window_starts
from velocity.model.decode import format_version, load_model
from velocity.model.features import feature_ids
from velocity.model.trees import TreeEnsemble
from velocity.model.transformer import ModelConfig, VelocityNet, build_model, greedy_decode, one_pass_logits


@dataclass(frozen=True)
class WindowPlan:
    """Where the windows of one piece start and which window predicts each note."""

    n_notes: int
    length: int
    starts: np.ndarray  # (W,) first note of each window
    owner_window: np.ndarray  # (n_notes,) index into `starts` of the window that predicts the note
    owner_pos: np.ndarray  # (n_notes,) the note's position inside that window

    def window_rows(self) -> np.ndarray:
        """(W, length) note index of each window slot, -1 for pad."""
        rows = self.starts[:, None] + np.arange(self.length)[None, :]
        return np.where(rows < self.n_notes, rows, -1)


def plan_windows(n_notes: int, length: int, step: int) -> WindowPlan:
    """Windows covering every note of an `n_notes`-note piece and the owning window of each note."""
    if length < 1 or not 1 <= step <= length:
        raise ValueError(f"need 1 <= step <= length, got length={length}, step={step}")
    starts = np.asarray(window_starts(n_notes, length, step, tail="last", short="pad"), dtype=np.int64)
    if n_notes == 0:
        empty = np.zeros(0, dtype=np.int64)
        return WindowPlan(0, length, starts, empty, empty)

    # Every (window, position) slot that holds a real note, scored by twice its distance from the
    # centre (integers, so ties are exact): |2*pos - (length-1)|.
    window = np.repeat(np.arange(len(starts)), length)
    pos = np.tile(np.arange(length), len(starts))
    note = starts[window] + pos
    real = note < n_notes
    window, pos, note = window[real], pos[real], note[real]
    distance = np.abs(2 * pos - (length - 1))
    # Sort by note, then distance, then window: the first slot of each note is its owner.
    order = np.lexsort((window, distance, note))
    first = np.ones(len(order), dtype=bool)
    first[1:] = note[order][1:] != note[order][:-1]
    owners = order[first]
    if len(owners) != n_notes:  # window_starts left a gap: a bug, never a data problem
        raise AssertionError(f"windows cover {len(owners)} of {n_notes} notes")
    return WindowPlan(n_notes, length, starts, window[owners], pos[owners])


def stitch(window_values: np.ndarray, plan: WindowPlan) -> np.ndarray:
    """One value per note from (W, length) per-window values, by the plan's owners."""
    if window_values.shape != (len(plan.starts), plan.length):
        raise ValueError(f"expected window values of shape {(len(plan.starts), plan.length)}, got {window_values.shape}")
    return window_values[plan.owner_window, plan.owner_pos]



# ---------------------------------------------------------------------------------------------
# Decoding whole pieces with a trained model


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
    def calibration(self) -> Calibration | None:
        found = self.checkpoint.get("calibration")
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
    # The window geometry of training; a checkpoint without it was trained on windows as long as
    # the model's positional table, and the default hop is half a window.
    length = int(ckpt.get("windows", {}).get("length", model.cfg.max_len))
    step = int(ckpt.get("windows", {}).get("step", max(1, length // 2)))
    return VelocityModel(model=model, bins=ckpt["bins"], vocab=Vocab.from_dict(ckpt["vocab"]), length=length, step=step, checkpoint=ckpt)


def untrained_twin(trained: VelocityModel) -> VelocityModel:
    """The same architecture initialized from the same seed as training did, never trained."""
    seed = int(trained.train_params.get("seed", 0))
    config = ModelConfig.from_dict(trained.checkpoint["model_config"])
    device = next(trained.model.parameters()).device
    with torch.random.fork_rng(devices=[]):  # leave the caller's random state alone
        torch.manual_seed(seed)  # what model.training.train does before build_model
        model = build_model(config)
    return replace(trained, model=model.to(device).eval())


def piece_windows(values: np.ndarray, plan: WindowPlan) -> np.ndarray:
    """(W, length, ...) per-note values (source ids, or (n_notes, F) feature ids) of a piece's
    windows, <pad> (0) after its last note."""
    rows = plan.window_rows()
    values = np.asarray(values, dtype=np.int64)
    taken = values[np.maximum(rows, 0)]  # (W, length, ...)
    pad = (rows < 0).reshape(rows.shape + (1,) * (values.ndim - 1))
    return np.where(pad, PAD, taken)


@dataclass(frozen=True)
class Decoding:
    """How a window's velocities are chosen."""

    pick: str  # argmax or median of each note's distribution (`pick_velocity`)
    feed_back: bool  # feed each choice back into the decoder (`greedy_decode`); an encoder has none
    average: bool = False  # average each note's distribution over every window holding it (one pass)
    calibrated: bool = False  # then stretch the dynamics as learned on validation (`Calibration`)


DECODINGS = {
    "greedy": Decoding("argmax", True),  # the seed's: the likeliest velocity, fed back note by note
    "median": Decoding("median", True),  # the median of each note's distribution (least absolute error), fed back
    "notes-only": Decoding("median", False),  # each note's median from the notes alone, centre window
    "averaged": Decoding("median", False, average=True),  # the median of the note's distribution averaged over its windows
    "pianist": Decoding("median", False, average=True, calibrated=True),  # averaged, with a pianist's range restored
}


# What `velocity predict` uses unless told otherwise, and what evaluate's `*_predict` keys score.
DEFAULT_DECODING = "pianist"


@dataclass(frozen=True)
class Calibration:
    """Stretch predicted dynamics back towards a pianist's range: each piece's mean moves away from
    `centre` by `between`, each note away from its piece's mean by `within`. Learned on validation
    (`fit_calibration`): a predictor that minimises absolute error shrinks towards the middle.
    A model with a tree first takes `network_weight` of the network's velocity and the rest of the
    tree's (`fit_network_weight`)."""

    centre: float = 64.0
    between: float = 1.0
    within: float = 1.0
    network_weight: float = 1.0

    def apply(self, velocity: np.ndarray) -> np.ndarray:
        """One piece's predicted velocities, stretched, rounded and kept in 1..127."""
        velocity = np.asarray(velocity, dtype=np.float64)
        if len(velocity) == 0:
            return velocity.astype(np.int64)
        mean = velocity.mean()
        stretched = self.centre + self.between * (mean - self.centre) + self.within * (velocity - mean)
        return np.clip(np.floor(stretched + 0.5), 1, 127).astype(np.int64)


def fit_calibration(predicted: np.ndarray, true: np.ndarray, piece_id: np.ndarray, min_std_ratio: float) -> Calibration:
    """The stretch with the least absolute error among those whose predictions spread at least
    `min_std_ratio` as widely as the truth (std of prediction / std of truth); the widest one if
    none does. A grid search over between, within in 1.00, 1.05, ..., 2.50."""
    predicted = np.asarray(predicted, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    _, piece = np.unique(piece_id, return_inverse=True)
    piece_mean = (np.bincount(piece, weights=predicted) / np.bincount(piece))[piece]
    centre = float(predicted.mean())
    true_std = true.std()
    best: tuple[bool, float, Calibration] | None = None
    for between in np.arange(1.0, 2.5001, 0.05):
        for within in np.arange(1.0, 2.5001, 0.05):
            stretched = centre + between * (piece_mean - centre) + within * (predicted - piece_mean)
            stretched = np.clip(np.floor(stretched + 0.5), 1, 127)
            ratio = stretched.std() / true_std if true_std > 0 else 1.0
            wide_enough = ratio >= min_std_ratio
            score = np.mean(np.abs(stretched - true)) if wide_enough else -ratio
            candidate = (wide_enough, -score, Calibration(centre, round(float(between), 2), round(float(within), 2)))
            if best is None or candidate[:2] > best[:2]:
                best = candidate
    assert best is not None
    return best[2]


def blend(network: np.ndarray, tree: np.ndarray, network_weight: float) -> np.ndarray:
    """`network_weight` of the network's velocity and the rest of the tree's."""
    return network_weight * network + (1 - network_weight) * tree


def fit_network_weight(network: np.ndarray, tree: np.ndarray, true: np.ndarray) -> float:
    """The network's share in `blend` with the least absolute error, among 0.00, 0.05, ..., 1.00."""
    weights = np.round(np.arange(0.0, 1.0001, 0.05), 2)
    errors = [np.mean(np.abs(blend(network, tree, w) - true)) for w in weights]
    return float(weights[int(np.argmin(errors))])


def decode_windows(
    model: VelocityNet,
    src: np.ndarray,
    steps: np.ndarray,
    batch_windows: int = 256,
    progress: bool = False,
    decoding: str = "greedy",
    features: np.ndarray | None = None,
) -> np.ndarray:
    """(W, length) velocities of (W, length) source windows (and their (W, length, F) feature ids),
    each decoded up to its own `steps[w]` notes (later slots stay 0), as `decoding` (a key of
    DECODINGS, not averaged) says. Only windows with equal step counts share a batch, so no batch
    decodes further than its windows need; batching never changes a window's result (padding
    masks keep windows apart)."""
    from tqdm import tqdm

    if batch_windows < 1:
        raise ValueError(f"batch_windows must be positive, got {batch_windows}")
    how = _decoding(decoding)
    features = _no_features(src) if features is None else features
    device = next(model.parameters()).device
    velocity = np.zeros(src.shape, dtype=np.int64)
    # Windows needing the same number of steps share batches (a 10,000-note piece: ~155 inner
    # windows of 96 steps and one tail window of up to 128).
    batches = []
    for n_steps in np.unique(steps):
        group = np.flatnonzero(steps == n_steps)
        batches += [group[i : i + batch_windows] for i in range(0, len(group), batch_windows)]
    for batch in tqdm(batches, desc="decoding windows", unit="batch", disable=not progress):
        n_steps = int(steps[batch].max())
        if n_steps == 0:  # windows that own no note (possible only with a very small step)
            continue
        ids = greedy_decode(model, _tensor(src[batch], device), n_steps, how.pick, how.feed_back, features=_tensor(features[batch], device))
        velocity[batch, :n_steps] = id_to_velocity(ids.cpu().numpy())
    return velocity


@torch.no_grad()
def averaged_distributions(
    model: VelocityNet, src: np.ndarray, features: np.ndarray, rows: np.ndarray, n_notes: int,
    batch_windows: int = 256, progress: bool = False,
) -> np.ndarray:
    """(n_notes, 128) velocity distribution of each note, the mean over every window holding it of
    the one-pass distribution (`one_pass_logits`); `rows` (W, length) gives each slot's note, -1 = pad."""
    from tqdm import tqdm

    device = next(model.parameters()).device
    model.eval()
    total = torch.zeros(n_notes, model.cfg.tgt_vocab - N_SPECIALS, dtype=torch.float64)
    count = torch.zeros(n_notes, dtype=torch.float64)
    for begin in tqdm(range(0, len(src), batch_windows), desc="decoding windows", unit="batch", disable=not progress):
        batch = slice(begin, begin + batch_windows)
        logits = one_pass_logits(model, _tensor(src[batch], device), _tensor(features[batch], device))
        probs = logits[..., N_SPECIALS:].float().softmax(dim=-1).cpu().double()  # (B, L, 128)
        slot_rows = torch.as_tensor(rows[batch]).flatten()
        real = slot_rows >= 0
        total.index_add_(0, slot_rows[real], probs.flatten(0, 1)[real])
        count.index_add_(0, slot_rows[real], torch.ones(int(real.sum()), dtype=torch.float64))
    if n_notes and bool((count == 0).any()):
        raise AssertionError("a note is in no window")  # window_starts covers every note: a bug
    return (total / count.clamp(min=1)[:, None]).numpy()


def median_velocity(probs: np.ndarray) -> np.ndarray:
    """(n, 128) distributions -> (n,) their medians (the least expected absolute error)."""
    return np.argmax(np.cumsum(probs, axis=1) >= 0.5, axis=1).astype(np.int64)


def predict_pieces(
    model: VelocityNet,
    pieces_src: list[np.ndarray],
    length: int,
    step: int,
    batch_windows: int = 256,
    progress: bool = False,
    decoding: str = "greedy",
    pieces_features: list[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """Predicted velocity (int64, 0..127) of every note of each piece, from each piece's source ids
    in note order (and its (n_notes, F) feature ids): the windows of all pieces are decoded
    together, batch by batch, then each piece is stitched (or its notes' distributions averaged).
    A calibrated decoding gives its velocities before calibration (`predict_notes` applies it)."""
    how = _decoding(decoding)
    if pieces_features is None:
        pieces_features = [np.zeros((len(src), 0), dtype=np.int64) for src in pieces_src]
    plans = [plan_windows(len(src), length, step) for src in pieces_src]
    n_features = pieces_features[0].shape[1] if pieces_features else 0
    windows = _stack([piece_windows(src, plan) for src, plan in zip(pieces_src, plans)], (0, length))
    features = _stack([piece_windows(f, plan) for f, plan in zip(pieces_features, plans)], (0, length, n_features))
    if how.average:
        offsets = np.cumsum([0] + [len(src) for src in pieces_src])
        rows = _stack([np.where(plan.window_rows() >= 0, plan.window_rows() + offset, -1) for plan, offset in zip(plans, offsets)], (0, length))
        probs = averaged_distributions(model, windows, features, rows, int(offsets[-1]), batch_windows, progress)
        velocity = median_velocity(probs)
        return [velocity[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    # Decode each window only as far as the last note it owns (the centre rule leaves the last
    # quarter of an inner window to its neighbour).
    steps = np.concatenate([owned_steps(plan) for plan in plans]) if plans else np.zeros(0, dtype=np.int64)
    velocity = decode_windows(model, windows, steps, batch_windows, progress, decoding, features)
    result, begin = [], 0
    for plan in plans:
        result.append(stitch(velocity[begin : begin + len(plan.starts)], plan))
        begin += len(plan.starts)
    return result


def owned_steps(plan: WindowPlan) -> np.ndarray:
    """(W,) how many leading notes of each window must be decoded: up to the last one it owns."""
    steps = np.zeros(len(plan.starts), dtype=np.int64)
    np.maximum.at(steps, plan.owner_window, plan.owner_pos + 1)
    return steps


def predict_notes(
    model: VelocityModel, notes: pd.DataFrame, batch_windows: int = 256, progress: bool = False, decoding: str = "greedy"
) -> np.ndarray:
    """Predicted velocity of every row of a notes table (columns pitch, start, dstart, duration,
    and velocity when the vocabulary carries a velocity hint). Rows with the same `piece_id` form
    one piece and must be contiguous, in note order; without a `piece_id` column the table is one piece."""
    if _decoding(decoding).calibrated and model.calibration is None:
        raise CheckpointError(
            f"the model file (format version {format_version(model.checkpoint)}) holds no calibration of the dynamics, which "
            f"decoding {decoding!r} needs: decode with 'averaged' or 'notes-only', or retrain (dvc repro train)"
        )
    src_ids, _ = tokenize(notes, model.bins, model.vocab)
    note_features = feature_ids(notes, model.bins.get("features") or {})
    if "piece_id" in notes:
        bounds = piece_bounds(notes["piece_id"].to_numpy())
    else:
        bounds = np.array([0, len(notes)])
    pieces = list(zip(bounds[:-1], bounds[1:]))
    predicted = predict_pieces(
        model.model, [src_ids[a:b] for a, b in pieces], model.length, model.step, batch_windows, progress, decoding,
        [note_features[a:b] for a, b in pieces],
    )
    if not predicted:
        return np.zeros(0, dtype=np.int64)
    if not _decoding(decoding).calibrated:
        return np.concatenate(predicted)
    calibration, tree = model.calibration, model.tree
    if tree is not None:
        blended = blend(np.concatenate(predicted), tree.predict(notes), calibration.network_weight)
        predicted = [blended[a:b] for a, b in pieces]
    return np.concatenate([calibration.apply(velocity) for velocity in predicted])


def _decoding(name: str) -> Decoding:
    if name not in DECODINGS:
        raise ValueError(f"unknown decoding {name!r}: expected one of {', '.join(DECODINGS)}")
    return DECODINGS[name]


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.int64), device=device)


def _no_features(src: np.ndarray) -> np.ndarray:
    return np.zeros((*src.shape, 0), dtype=np.int64)


def _stack(arrays: list[np.ndarray], empty_shape: tuple[int, ...]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(empty_shape, dtype=np.int64)
