"""The note codec: notes -> source and target token ids, and how pieces are cut into windows.

The ground floor that stages/, model/ and pipeline/ all build on, so training data and new files
are quantized and windowed identically. Token ids 0, 1, 2 are the specials in both vocabularies;
target id = velocity + 3.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

PAD, START, END = 0, 1, 2
SPECIALS = ["<pad>", "<s>", "</s>"]
N_SPECIALS = len(SPECIALS)  # ids 0..2 in both vocabularies
PIANO_PITCHES = range(21, 109)  # the 88 keys, A0..C8
VELOCITIES = range(128)


def bin_index(values: np.ndarray | Sequence[float], edges: Sequence[float]) -> np.ndarray:
    """Bin of each value, as `KBinsDiscretizer.transform` gives it: values outside the edges
    fall into the first or last bin."""
    edges = np.asarray(edges, dtype=np.float64)
    inner = edges[1:-1]
    return np.searchsorted(inner, np.asarray(values, dtype=np.float64), side="right").astype(np.int64)


def n_bins(edges: Sequence[float]) -> int:
    return len(edges) - 1


def src_token_name(pitch: int, dstart_bin: int, duration_bin: int, velocity_bin: int | None = None) -> str:
    name = f"p{pitch}_d{dstart_bin}_l{duration_bin}"
    return name if velocity_bin is None else f"{name}_v{velocity_bin}"


def tgt_token_name(velocity: int) -> str:
    return f"v{velocity}"


def velocity_to_id(velocity: np.ndarray) -> np.ndarray:
    return np.asarray(velocity, dtype=np.int64) + N_SPECIALS


def id_to_velocity(token_id: np.ndarray) -> np.ndarray:
    """Velocity of each target id; specials (which a decoder should never emit for a note) map to 0."""
    return np.clip(np.asarray(token_id, dtype=np.int64) - N_SPECIALS, 0, 127)


@dataclass(frozen=True)
class Vocab:
    """Source and target token lists; index = token id."""

    src: list[str]
    tgt: list[str]
    src_index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "src_index", {tok: i for i, tok in enumerate(self.src)})

    @cached_property
    def _src_table(self) -> np.ndarray:
        """Dense (pitch, dstart bin, duration bin[, velocity bin]) -> source id table, -1 where the
        vocabulary has no token: `src_ids` looks up a whole piece at once."""
        keys, ids = [], []
        for i, name in enumerate(self.src[N_SPECIALS:], start=N_SPECIALS):
            numbers = tuple(int(x) for x in re.findall(r"\d+", name))
            if len(numbers) in (3, 4) and src_token_name(*numbers) == name:  # anything else is no note token
                keys.append(numbers)
                ids.append(i)
        if not keys or len({len(k) for k in keys}) > 1:
            return np.full((0,) * 3, -1, dtype=np.int64)
        keys_array = np.asarray(keys, dtype=np.int64)
        table = np.full(tuple(keys_array.max(axis=0) + 1), -1, dtype=np.int64)
        table[tuple(keys_array.T)] = ids
        return table

    def src_ids(self, pitch: np.ndarray, dstart_bin: np.ndarray, duration_bin: np.ndarray,
                velocity_bin: np.ndarray | None = None) -> np.ndarray:  # fmt: skip
        """The id of each note's source token (`src_token_name`), as int64; KeyError naming the first
        token the vocabulary lacks. (A table lookup: building 200,000 token names took half a second.)"""
        keys = [np.asarray(k, dtype=np.int64) for k in (pitch, dstart_bin, duration_bin, velocity_bin) if k is not None]
        table = self._src_table
        ids = np.full(len(keys[0]), -1, dtype=np.int64)
        if table.ndim == len(keys):
            inside = np.logical_and.reduce([(k >= 0) & (k < size) for k, size in zip(keys, table.shape)])
            ids[inside] = table[tuple(k[inside] for k in keys)]
        missing = np.flatnonzero(ids < 0)
        if len(missing):
            raise KeyError(src_token_name(*(int(k[missing[0]]) for k in keys)))
        return ids

    @property
    def velocity_hint(self) -> bool:
        return self.src[N_SPECIALS].count("_") == 3

    def to_dict(self) -> dict[str, list[str]]:
        return {"src": list(self.src), "tgt": list(self.tgt)}

    @classmethod
    def from_dict(cls, d: dict[str, list[str]]) -> "Vocab":
        return cls(src=list(d["src"]), tgt=list(d["tgt"]))

    @classmethod
    def load(cls, path: Path | str) -> "Vocab":
        return cls.from_dict(json.loads(Path(path).read_text()))


def tokenize(notes: pd.DataFrame, bins: dict, vocab: Vocab) -> tuple[np.ndarray, np.ndarray | None]:
    """Source ids (and target ids when `notes` has velocities) of one piece's notes, in row order.

    `notes` needs columns pitch, dstart, duration (and velocity for targets or a velocity hint;
    a velocity below 0 marks a note without a target, whose target id is <pad>).
    """
    dstart_bin = bin_index(notes["dstart"].to_numpy(), bins["dstart"])
    duration_bin = bin_index(notes["duration"].to_numpy(), bins["duration"])
    pitch = notes["pitch"].to_numpy()
    if not np.all((pitch >= PIANO_PITCHES.start) & (pitch < PIANO_PITCHES.stop)):
        raise ValueError("tokenize: pitches outside the piano range 21..108")
    has_velocity = "velocity" in notes
    if vocab.velocity_hint:
        if not has_velocity:
            raise ValueError("tokenize: this vocabulary's source tokens carry the velocity bin, but the notes have no velocity")
        src = vocab.src_ids(pitch, dstart_bin, duration_bin, bin_index(notes["velocity"].to_numpy(), bins["velocity"]))
    else:
        src = vocab.src_ids(pitch, dstart_bin, duration_bin)
    tgt = None
    if has_velocity:  # a negative velocity is a note without a target (a score note no pianist played): <pad>
        velocity = notes["velocity"].to_numpy()
        tgt = np.where(velocity >= 0, velocity_to_id(np.maximum(velocity, 0)), PAD)
    return src, tgt


# ---------------------------------------------------------------------------------------------
# Window geometry: the windows stage cuts training data, velocity/model/stitching.py new pieces
# and the perf_events stage event sequences, all the same way


def window_starts(n_notes: int, length: int, step: int, tail: str = "last", short: str = "pad") -> list[int]:
    """First note of each window of `length` notes every `step` over a piece of `n_notes` notes.

    `tail: last` adds one window ending at the last note when the regular ones stop short of it
    (`drop` leaves those notes out); a piece shorter than a window is one padded window
    (`short: pad`) or none (`drop`).
    """
    if n_notes == 0:
        return []
    if n_notes < length:
        return [0] if short == "pad" else []
    starts = list(range(0, n_notes - length + 1, step))
    if tail == "last" and starts[-1] + length < n_notes:
        starts.append(n_notes - length)
    return starts


def window_rows(n_items: int, length: int, step: int, tail: str = "last", short: str = "pad", first: int = 0) -> np.ndarray:
    """(W, length) int64 index of the item in each slot of the windows of `window_starts` over
    `n_items` items, counted from `first` (a piece's first row in its table); -1 past the end."""
    starts = np.asarray(window_starts(n_items, length, step, tail, short), dtype=np.int64)
    slots = starts[:, None] + np.arange(length, dtype=np.int64)[None, :]
    return np.where(slots < n_items, slots + first, -1)


def windowed(values: np.ndarray, rows: np.ndarray, pad: int = PAD) -> np.ndarray:
    """(W, length, ...) the value of each slot's item, per-item `values` indexed by `rows`
    (`window_rows`), `pad` where the row is -1."""
    values = np.asarray(values)
    taken = values[np.maximum(rows, 0)]
    missing = (rows < 0).reshape(rows.shape + (1,) * (values.ndim - 1))
    return np.where(missing, np.asarray(pad, dtype=values.dtype), taken)


def piece_bounds(piece_id: np.ndarray) -> np.ndarray:
    """Row where each piece begins, then the row count; a piece's rows must be contiguous."""
    changes = np.flatnonzero(piece_id[1:] != piece_id[:-1]) + 1
    bounds = np.concatenate([[0], changes, [len(piece_id)]]) if len(piece_id) else np.zeros(1, dtype=np.int64)
    if len(bounds) - 1 != len(set(piece_id)):
        raise ValueError("notes of a piece are not contiguous: the notes table must list pieces one after another")
    return bounds
