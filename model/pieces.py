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
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from model.checkpoint import CheckpointError
from model.codec import PAD, Vocab, id_to_velocity, piece_bounds, tokenize, window_starts
from model.decode import load_model
from model.transformer import EncoderDecoder, ModelConfig, build_model, greedy_decode


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

    model: EncoderDecoder
    bins: dict[str, Any]
    vocab: Vocab
    length: int  # notes per window
    step: int  # hop between window starts
    checkpoint: dict[str, Any]  # the rest: model_config, train params, ...

    @property
    def train_params(self) -> dict[str, Any]:
        return dict(self.checkpoint.get("train") or {})


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


def piece_windows(src_ids: np.ndarray, plan: WindowPlan) -> np.ndarray:
    """(W, length) source ids of a piece's windows, <pad> after its last note."""
    rows = plan.window_rows()
    return np.where(rows >= 0, np.asarray(src_ids, dtype=np.int64)[np.maximum(rows, 0)], PAD)


# How a window's velocities are chosen: (pick, feed_back) of `greedy_decode`.
DECODINGS = {
    "greedy": ("argmax", True),  # the seed's: the likeliest velocity, fed back note by note
    "median": ("median", True),  # the median of each note's distribution (least absolute error), fed back
    "notes-only": ("median", False),  # each note's median from the notes alone, nothing fed back
}


def decode_windows(
    model: EncoderDecoder,
    src: np.ndarray,
    steps: np.ndarray,
    batch_windows: int = 256,
    progress: bool = False,
    decoding: str = "greedy",
) -> np.ndarray:
    """(W, length) velocities of (W, length) source windows, each decoded up to its own `steps[w]`
    notes (later slots stay 0), as `decoding` (a key of DECODINGS) says. Only windows with equal
    step counts share a batch, so no batch decodes further than its windows need; batching never
    changes a window's result (padding masks keep windows apart)."""
    from tqdm import tqdm

    if batch_windows < 1:
        raise ValueError(f"batch_windows must be positive, got {batch_windows}")
    if decoding not in DECODINGS:
        raise ValueError(f"unknown decoding {decoding!r}: expected one of {', '.join(DECODINGS)}")
    pick, feed_back = DECODINGS[decoding]
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
        ids = greedy_decode(model, torch.as_tensor(src[batch], dtype=torch.long, device=device), n_steps, pick, feed_back)
        velocity[batch, :n_steps] = id_to_velocity(ids.cpu().numpy())
    return velocity


def predict_pieces(
    model: EncoderDecoder,
    pieces_src: list[np.ndarray],
    length: int,
    step: int,
    batch_windows: int = 256,
    progress: bool = False,
    decoding: str = "greedy",
) -> list[np.ndarray]:
    """Predicted velocity (int64, 0..127) of every note of each piece, from each piece's source ids
    in note order: the windows of all pieces are decoded together, batch by batch, then each
    piece is stitched."""
    plans = [plan_windows(len(src), length, step) for src in pieces_src]
    windows = [piece_windows(src, plan) for src, plan in zip(pieces_src, plans)]
    all_windows = np.concatenate(windows) if windows else np.zeros((0, length), dtype=np.int64)
    # Decode each window only as far as the last note it owns (the centre rule leaves the last
    # quarter of an inner window to its neighbour).
    steps = np.concatenate([owned_steps(plan) for plan in plans]) if plans else np.zeros(0, dtype=np.int64)
    velocity = decode_windows(model, all_windows, steps, batch_windows, progress, decoding)
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
    """Predicted velocity of every row of a notes table (columns pitch, dstart, duration, and
    velocity when the vocabulary carries a velocity hint). Rows with the same `piece_id` form one
    piece and must be contiguous, in note order; without a `piece_id` column the table is one piece."""
    src_ids, _ = tokenize(notes, model.bins, model.vocab)
    if "piece_id" in notes:
        bounds = piece_bounds(notes["piece_id"].to_numpy())
    else:
        bounds = np.array([0, len(notes)])
    pieces = [src_ids[begin:end] for begin, end in zip(bounds[:-1], bounds[1:])]
    predicted = predict_pieces(model.model, pieces, model.length, model.step, batch_windows, progress, decoding)
    return np.concatenate(predicted) if predicted else np.zeros(0, dtype=np.int64)
