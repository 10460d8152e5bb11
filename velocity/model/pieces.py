"""Predict the velocity of every note of whole pieces: cut into windows, decode, stitch.

The windows of all pieces (velocity/model/stitching.py: cut as the windows stage cuts training data)
are decoded together in batches, as the decoding says (velocity/model/decodings.py), each only as far
as the last note it owns: later notes never change earlier ones. Each note takes the prediction
of the window in which it sits nearest the centre.

Averaging (`averaged` and `pianist` decodings): instead, every window gives every note it holds a
velocity distribution from the notes alone (one pass), and each note takes the median of the mean
of its distributions, so it hears all the context around it. An ensemble's networks each read
their own windows, one every `train.averaged_hop` of a window's length, offset from one another
(`staggered_windows`): each note still gets a distribution from every network, in a different
context, for fewer windows than every network reading every window. `pianist` then blends with
the model's tree, if it carries one, and stretches the dynamics (velocity/model/calibration.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from velocity.model.calibration import Calibration, blend_with_tree
from velocity.model.checkpoint import CheckpointError
from velocity.model.codec import N_SPECIALS, PAD, id_to_velocity, piece_bounds, tokenize
from velocity.model.decode import VelocityModel, format_version
from velocity.model.decodings import DEFAULT_BATCH_WINDOWS, default_batch_windows, find_decoding
from velocity.model.features import feature_ids, unmarked
from velocity.model.runtime import batch_map
from velocity.model.stitching import owned_steps, piece_windows, plan_windows, staggered_windows, stitch
from velocity.model.transformer import EncoderDecoder, Ensemble, VelocityNet, greedy_decode, one_pass_logits


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
    how = find_decoding(decoding)
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


@torch.inference_mode()
def averaged_medians(
    networks: Sequence[VelocityNet], src: np.ndarray, features: np.ndarray, rows: np.ndarray, reader: np.ndarray,
    batch_windows: int = DEFAULT_BATCH_WINDOWS, progress: bool = False,
) -> np.ndarray:
    """(n_notes,) the median (`median_velocity`) of every note's velocity distribution averaged over
    every window holding it (each window's from `one_pass_logits` of the network `reader` (W,)
    names), without an (n_notes, 128) table. `src` (n_notes,) and
    `features` (n_notes, F) are per note, `rows` (W, length) each window slot's note (-1 = pad),
    windows in order of first note; each batch's windows are gathered only when decoded, about
    `batch_windows` for each network. A note's median is taken once the last window holding it is
    decoded, so only the notes of the windows in flight are held (a 200,000-note piece: a few MB,
    not 200 MB of float64)."""
    from tqdm import tqdm

    device = next(networks[0].parameters()).device
    for network in networks:
        network.eval()
    batch_windows *= len(networks)
    n_notes = len(src)
    velocity = np.zeros(n_notes, dtype=np.int64)
    # open_from[e]: the first note that a window from e on holds; every note before it is complete
    # once windows [0, e) are decoded.
    first_row = np.where(rows >= 0, rows, n_notes).min(axis=1, initial=n_notes)
    open_from = np.append(np.minimum.accumulate(first_row[::-1])[::-1], n_notes)
    n_velocities = networks[0].cfg.tgt_vocab - N_SPECIALS
    low = 0  # total[i] and count[i] belong to note low + i
    total = torch.zeros(0, n_velocities, dtype=torch.float64)
    count = torch.zeros(0, dtype=torch.float64)

    def probabilities(begin: int) -> torch.Tensor:
        """(B, L, 128) float64 velocity distributions of the windows from `begin` on."""
        batch_rows = rows[begin : begin + batch_windows]
        pad = batch_rows < 0
        slots = np.maximum(batch_rows, 0)  # as `windowed`: <pad> (0) where a slot holds no note
        batch_src = np.where(pad, PAD, src[slots])
        batch_features = np.where(pad[..., None], PAD, features[slots])
        batch_reader = reader[begin : begin + batch_windows]
        probs = torch.empty(*batch_rows.shape, n_velocities, dtype=torch.float64)
        for k, network in enumerate(networks):
            mine = batch_reader == k
            if mine.any():
                logits = one_pass_logits(network, _tensor(batch_src[mine], device), _tensor(batch_features[mine], device))
                probs[torch.as_tensor(mine)] = logits[..., N_SPECIALS:].float().softmax(dim=-1).cpu().double()
        return probs

    begins = range(0, len(rows), batch_windows)
    decoded = batch_map(probabilities, begins, device)
    for begin, probs in tqdm(zip(begins, decoded), total=len(begins), desc="decoding windows", unit="batch", disable=not progress):
        end = min(begin + batch_windows, len(rows))
        batch_rows = rows[begin:end]
        slot_rows = torch.as_tensor(batch_rows).flatten()
        real = slot_rows >= 0
        high = int(slot_rows.max()) + 1 if bool(real.any()) else low
        if high > low + len(total):  # room for the batch's new notes
            total = torch.cat([total, torch.zeros(high - low - len(total), n_velocities, dtype=torch.float64)])
            count = torch.cat([count, torch.zeros(high - low - len(count), dtype=torch.float64)])
        total.index_add_(0, slot_rows[real] - low, probs.flatten(0, 1)[real])
        count.index_add_(0, slot_rows[real] - low, torch.ones(int(real.sum()), dtype=torch.float64))
        done = int(open_from[end]) - low  # notes no later window holds
        if done > 0:
            if done > len(count) or bool((count[:done] == 0).any()):
                raise AssertionError("a note is in no window")  # window_starts covers every note: a bug
            velocity[low : low + done] = median_velocity((total[:done] / count[:done].clamp(min=1)[:, None]).numpy())
            total, count, low = total[done:].clone(), count[done:].clone(), low + done
    if low < n_notes:
        raise AssertionError("a note is in no window")
    return velocity


def median_velocity(probs: np.ndarray) -> np.ndarray:
    """(n, 128) distributions -> (n,) their medians (the least expected absolute error)."""
    return np.argmax(np.cumsum(probs, axis=1) >= 0.5, axis=1).astype(np.int64)


def predict_pieces(
    model: VelocityNet,
    pieces_src: list[np.ndarray],
    length: int,
    step: int,
    batch_windows: int | None = None,
    progress: bool = False,
    decoding: str = "greedy",
    pieces_features: list[np.ndarray] | None = None,
    max_windows: int | None = None,
) -> list[np.ndarray]:
    """Predicted velocity (int64, 0..127) of every note of each piece, from each piece's source ids
    in note order (and its (n_notes, F) feature ids): the windows of all pieces are decoded
    together, batch by batch, then each piece is stitched (or its notes' distributions averaged).
    Windows start every `step` notes (an averaged decoding's: each network's, `staggered_windows`,
    at most about `max_windows` of a piece: `piece_hop`).
    A calibrated decoding gives its velocities before calibration (`calibrated` applies it).
    `batch_windows` None: the decoding's default (`default_batch_windows`)."""
    how = find_decoding(decoding)
    batch_windows = batch_windows or default_batch_windows(decoding)
    if pieces_features is None:
        pieces_features = [np.zeros((len(src), 0), dtype=np.int64) for src in pieces_src]
    n_features = pieces_features[0].shape[1] if pieces_features else 0
    if how.average:  # windows gathered batch by batch (`averaged_medians`), never all at once
        networks = list(model.members) if isinstance(model, Ensemble) else [model]
        offsets = np.cumsum([0] + [len(src) for src in pieces_src])
        staggered = [staggered_windows(len(src), length, piece_hop(len(src), length, step, max_windows), len(networks)) for src in pieces_src]
        rows = _stack([np.where(rows >= 0, rows + offset, -1) for (rows, _), offset in zip(staggered, offsets)], (0, length))
        reader = _joined([reader for _, reader in staggered], (0,))
        src = _joined(pieces_src, (0,))
        features = _joined(pieces_features, (0, n_features))
        velocity = averaged_medians(networks, src, features, rows, reader, batch_windows, progress)
        return [velocity[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
    plans = [plan_windows(len(src), length, step) for src in pieces_src]
    windows = _stack([piece_windows(src, plan) for src, plan in zip(pieces_src, plans)], (0, length))
    features = _stack([piece_windows(f, plan) for f, plan in zip(pieces_features, plans)], (0, length, n_features))
    # Decode each window only as far as the last note it owns (the centre rule leaves the last
    # quarter of an inner window to its neighbour).
    steps = np.concatenate([owned_steps(plan) for plan in plans]) if plans else np.zeros(0, dtype=np.int64)
    velocity = decode_windows(model, windows, steps, batch_windows, progress, decoding, features)
    result, begin = [], 0
    for plan in plans:
        result.append(stitch(velocity[begin : begin + len(plan.starts)], plan))
        begin += len(plan.starts)
    return result


def piece_hop(n_notes: int, length: int, hop: int, max_windows: int | None) -> int:
    """The hop between one network's windows over an `n_notes`-note piece in the averaged
    decodings: `hop`, widened on a piece so long that it would need more than `max_windows` windows
    (never beyond the window's `length`): averaging over more windows lowers the error a little
    (docs/experiments.md), and on a long piece costs time that grows with it."""
    if max_windows is None:
        return hop
    return min(length, max(hop, -(-n_notes // max_windows)))


def predict_notes(
    model: VelocityModel, notes: pd.DataFrame, batch_windows: int | None = None, progress: bool = False, decoding: str = "greedy"
) -> np.ndarray:
    """Predicted velocity of every row of a notes table (columns pitch, start, dstart, duration,
    and velocity when the vocabulary carries a velocity hint). Rows with the same `piece_id` form
    one piece and must be contiguous, in note order; without a `piece_id` column the table is one piece."""
    return decode_notes(model, notes, (decoding,), batch_windows, progress)[decoding]


def decode_notes(
    model: VelocityModel, notes: pd.DataFrame, decodings: Sequence[str], batch_windows: int | None = None, progress: bool = False
) -> dict[str, np.ndarray]:
    """`predict_notes` for each of `decodings`, with one network pass for all those that read the
    same distributions: `averaged` and `pianist` (which then calibrates), and on an encoder-only
    model every decoding with the same pick (its `median` and `notes-only` are one pass)."""
    for decoding in decodings:
        if find_decoding(decoding).calibrated and model.calibration is None:
            raise CheckpointError(
                f"the model file (format version {format_version(model.checkpoint)}) holds no calibration of the dynamics, which "
                f"decoding {decoding!r} needs: decode with 'averaged' or 'notes-only', or retrain (dvc repro train)"
            )
    src_ids, _ = tokenize(notes, model.bins, model.vocab)
    note_features = feature_ids(notes, model.bins.get("features") or {})
    bounds = piece_bounds(notes["piece_id"].to_numpy()) if "piece_id" in notes else np.array([0, len(notes)])
    pieces = list(zip(bounds[:-1], bounds[1:]))
    one_pass = not isinstance(model.model, EncoderDecoder)
    passes: dict[tuple[Any, ...], list[np.ndarray]] = {}
    found = {}
    for decoding in decodings:
        how = find_decoding(decoding)
        key = ("average",) if how.average else (how.pick,) if one_pass else (how.pick, how.feed_back)
        if key not in passes:
            passes[key] = predict_pieces(
                model.model, [src_ids[a:b] for a, b in pieces], model.length, model.averaged_hop if how.average else model.step,
                batch_windows, progress, decoding,
                [note_features[a:b] for a, b in pieces], model.averaged_max_windows,
            )
        found[decoding] = calibrated(model, notes, passes[key], pieces) if how.calibrated else _joined(passes[key], (0,))
    return found


def calibrated(model: VelocityModel, notes: pd.DataFrame, predicted: list[np.ndarray], pieces: list[tuple[int, int]]) -> np.ndarray:
    """The `pianist` decoding of each piece's averaged velocities: blended with the model's tree,
    if it carries one, then stretched as calibrated (velocity/model/calibration.py). A score
    without dynamics markings takes the model's calibration for such scores, where it has one."""
    if not predicted:
        return np.zeros(0, dtype=np.int64)
    tree = model.tree
    tree_velocity = tree.predict(notes) if tree is not None else None
    played = []
    for (a, b), velocity in zip(pieces, predicted):
        calibration = piece_calibration(model, notes.iloc[a:b])
        if tree_velocity is not None:
            velocity = blend_with_tree(velocity, tree_velocity[a:b], calibration.network_weight)
        played.append(calibration.apply(velocity))
    return np.concatenate(played)


def piece_calibration(model: VelocityModel, piece: pd.DataFrame) -> Calibration:
    """The calibration that plays `piece`: the model's own, or its `unmarked_calibration` for a score without markings."""
    unmarked_calibration = model.unmarked_calibration
    if unmarked_calibration is not None and "notated_velocity" in piece and unmarked(piece["notated_velocity"].to_numpy()):
        return unmarked_calibration
    return model.calibration


def _tensor(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.asarray(array, dtype=np.int64), device=device)


def _no_features(src: np.ndarray) -> np.ndarray:
    return np.zeros((*src.shape, 0), dtype=np.int64)


def _stack(arrays: list[np.ndarray], empty_shape: tuple[int, ...]) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros(empty_shape, dtype=np.int64)


def _joined(arrays: list[np.ndarray], empty_shape: tuple[int, ...]) -> np.ndarray:
    """`_stack`, but one piece's array as it is (no copy of a long piece's features)."""
    return arrays[0] if len(arrays) == 1 else _stack(arrays, empty_shape)
