"""Which window predicts each note of a whole piece: the windows of a piece, and stitching them back.

A piece longer than one window is cut exactly as the windows stage cuts it with `tail: last`
(`velocity.model.codec.window_rows`): windows of `length` notes every `step` notes, plus one window
ending at the last note when the last regular window stops short of it. A piece shorter than one
window is one window padded with <pad> (as `short: pad`).

Stitching: a note covered by several overlapping windows takes the prediction of the window in
which it sits nearest the window's centre, i.e. with the most context on both sides (the decoder
has seen the most of the window's own predictions, the encoder the most notes either side). A tie
goes to the earlier window. The distance is measured from the centre of the full window, so in a
padded short piece every note simply takes its only window. Each note therefore gets exactly one
prediction; `plan_windows` returns that choice and `stitch` applies it.

The averaged decodings instead average a note's distributions over every window holding it, and an
ensemble's networks each read their own windows (`staggered_windows`), offset from one another so
that a note near the edge of one network's window sits near the middle of another's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from velocity.model.codec import window_rows, windowed


@dataclass(frozen=True)
class WindowPlan:
    """The windows of one piece and which window predicts each note."""

    n_notes: int
    rows: np.ndarray  # (W, length) note index of each window slot, -1 for pad
    owner_window: np.ndarray  # (n_notes,) index of the window that predicts the note
    owner_pos: np.ndarray  # (n_notes,) the note's position inside that window

    @property
    def length(self) -> int:
        return int(self.rows.shape[1])

    @property
    def starts(self) -> np.ndarray:
        """(W,) first note of each window."""
        return self.rows[:, 0]

    def window_rows(self) -> np.ndarray:
        """(W, length) note index of each window slot, -1 for pad."""
        return self.rows


def plan_windows(n_notes: int, length: int, step: int) -> WindowPlan:
    """Windows covering every note of an `n_notes`-note piece and the owning window of each note."""
    if length < 1 or not 1 <= step <= length:
        raise ValueError(f"need 1 <= step <= length, got length={length}, step={step}")
    rows = window_rows(n_notes, length, step, tail="last", short="pad")
    if n_notes == 0:
        empty = np.zeros(0, dtype=np.int64)
        return WindowPlan(0, rows, empty, empty)

    # Every (window, position) slot that holds a real note, scored by twice its distance from the
    # centre (integers, so ties are exact): |2*pos - (length-1)|.
    window, pos = np.nonzero(rows >= 0)  # row-major: by window, then position
    note = rows[window, pos]
    distance = np.abs(2 * pos - (length - 1))
    # Sort by note, then distance, then window: the first slot of each note is its owner.
    order = np.lexsort((window, distance, note))
    first = np.ones(len(order), dtype=bool)
    first[1:] = note[order][1:] != note[order][:-1]
    owners = order[first]
    if len(owners) != n_notes:  # window_rows left a gap: a bug, never a data problem
        raise AssertionError(f"windows cover {len(owners)} of {n_notes} notes")
    return WindowPlan(n_notes, rows, window[owners], pos[owners])


def stitch(window_values: np.ndarray, plan: WindowPlan) -> np.ndarray:
    """One value per note from (W, length) per-window values, by the plan's owners."""
    if window_values.shape != plan.rows.shape:
        raise ValueError(f"expected window values of shape {plan.rows.shape}, got {window_values.shape}")
    return window_values[plan.owner_window, plan.owner_pos]


def owned_steps(plan: WindowPlan) -> np.ndarray:
    """(W,) how many leading notes of each window must be decoded: up to the last one it owns."""
    steps = np.zeros(len(plan.starts), dtype=np.int64)
    np.maximum.at(steps, plan.owner_window, plan.owner_pos + 1)
    return steps


def piece_windows(values: np.ndarray, plan: WindowPlan) -> np.ndarray:
    """(W, length, ...) per-note values (source ids, or (n_notes, F) feature ids) of a piece's
    windows, <pad> (0) after its last note."""
    return windowed(np.asarray(values, dtype=np.int64), plan.rows)


def staggered_windows(n_notes: int, length: int, hop: int, members: int) -> tuple[np.ndarray, np.ndarray]:
    """The windows that `members` networks read of an `n_notes`-note piece: (W, length) note index
    of each slot (-1 for pad) and (W,) the network reading each window, ordered by first note.
    Network k's windows start every `hop` notes from k * hop // members on, beside one window at the
    first note and one ending at the last, so every network holds every note; network 0's are
    `plan_windows`'s. A piece shorter than a window is one padded window for each network."""
    if length < 1 or not 1 <= hop <= length:
        raise ValueError(f"need 1 <= hop <= length, got length={length}, hop={hop}")
    if members < 1:
        raise ValueError(f"need at least one network, got {members}")
    last = max(n_notes - length, 0)
    starts, member = [], []
    for k in range(members if n_notes else 0):
        found = sorted({0, last, *range(k * hop // members, last + 1, hop)})
        starts += found
        member += [k] * len(found)
    order = np.lexsort((member, starts))
    slots = np.asarray(starts, dtype=np.int64)[order, None] + np.arange(length, dtype=np.int64)
    return np.where(slots < n_notes, slots, -1).reshape(-1, length), np.asarray(member, dtype=np.int64)[order]


def disjoint_windows(rows: np.ndarray) -> np.ndarray:
    """Indices of the windows, in order, that hold each note at most once: a window is kept when its
    first note comes after the last note of the window kept before it (windows cut every half
    window: every other one). `rows` (W, length): each slot's note in the split's table, -1 a pad.
    Validation reads these: the overlap would only score the same notes twice."""
    first, last = rows[:, 0], rows.max(axis=1)
    keep, end = [], -1
    for index in range(len(rows)):
        if first[index] > end:
            keep.append(index)
            end = last[index]
    return np.asarray(keep, dtype=np.int64)
