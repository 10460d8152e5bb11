"""Scores: what a notation export (or a quantized DAW part) says that a performance does not.

A score's notes sit on the beat grid at a notated tempo, under time signatures, with velocities that
are the notation program's rendering of the dynamics markings (or one flat value). The align stage
reads the score side of each score/performance pair through `score_table`, and `velocity predict`
reads a score the same way, so the score model sees new files as it saw its training data.

Beats are quarter notes (the MIDI file's ticks per quarter), whatever the meter: bar length and bar
position come from the file's time signatures, so 6/8 is a bar of 3 quarters with its own phase.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from velocity.model.features import CHORD_GAP
from velocity.model.midi import DEFAULT_MICROSECONDS_PER_QUARTER
from velocity.model.notes import PieceNotes

# Columns a score adds to the notes table (NOTE_COLUMNS), one value per note.
SCORE_COLUMNS = ["beat", "beat_duration", "bar_position", "bar_length", "tempo", "notated_velocity"]

# Score detection: onsets on a grid of 1/96 quarter (32nds, sextuplets and finer all sit on it), and
# notes that start together do so on the same tick. A performance's onsets land on such a grid point
# by chance (1 in 4 at 384 ticks per quarter, 1 in 5 at 480) and its chords are rarely exact: over
# the 460 shared performances at most 29% on the grid and 35% exact; over their 160 scores (grace
# notes and ornaments are played off the grid) at least 54% and 56%. Half of each is the line.
GRID_PER_QUARTER = 96
MIN_ON_GRID = 0.5
MIN_EXACT_CHORDS = 0.5


def score_table(piece: PieceNotes) -> pd.DataFrame:
    """piece.notes with the SCORE_COLUMNS added, in the same row order.

    `beat` and `beat_duration` are the notated onset and length in quarter notes (note-off tick,
    so a pedalled note keeps its written length); `bar_position` is the onset's distance from the
    start of its bar and `bar_length` that bar's length, both in quarters, from the time
    signatures (4/4 before the first, as MIDI says); `tempo` is the notated quarter notes per minute
    at the onset; `notated_velocity` the velocity as written.
    """
    midi = piece.midi
    rows = piece.notes["note"].to_numpy()
    tpq = midi.tempo_map.ticks_per_quarter
    start_tick = midi.notes["start_tick"].to_numpy()[rows]
    end_tick = midi.notes["end_tick"].to_numpy()[rows]
    bar_position, bar_length = _bars(start_tick, midi.time_signatures, tpq)
    table = piece.notes.copy()
    table["beat"] = start_tick / tpq
    table["beat_duration"] = np.maximum(end_tick - start_tick, 0) / tpq
    table["bar_position"] = bar_position
    table["bar_length"] = bar_length
    table["tempo"] = 60e6 / _tempo_at(start_tick, midi.tempo_map.ticks, midi.tempo_map.microseconds_per_quarter)
    table["notated_velocity"] = piece.notes["velocity"].to_numpy().astype(np.int16)
    return table


def _tempo_at(ticks: np.ndarray, tempo_ticks: np.ndarray, mspq: np.ndarray) -> np.ndarray:
    """Microseconds per quarter in force at each tick (the last of several events on one tick)."""
    if len(tempo_ticks) == 0:
        return np.full(len(ticks), float(DEFAULT_MICROSECONDS_PER_QUARTER))
    index = np.searchsorted(tempo_ticks, ticks, side="right") - 1
    return np.where(index >= 0, mspq[np.maximum(index, 0)], DEFAULT_MICROSECONDS_PER_QUARTER)


def _bars(ticks: np.ndarray, time_signatures: np.ndarray, tpq: int) -> tuple[np.ndarray, np.ndarray]:
    """Each tick's position in its bar and that bar's length, in quarters. A time signature starts
    a new bar where it stands (a change in mid-bar restarts the count, as notation programs write)."""
    meters = np.asarray(time_signatures, dtype=np.int64).reshape(-1, 3)
    if len(meters) == 0 or meters[0, 0] > 0:  # 4/4 until the first signature, as MIDI says
        meters = np.vstack([[[0, 4, 4]], meters])
    meters = meters[np.append(meters[1:, 0] != meters[:-1, 0], True)]  # of several on one tick, the last
    segment = np.searchsorted(meters[:, 0], ticks, side="right") - 1
    since = ticks - meters[segment, 0]
    bar_ticks = meters[segment, 1] * 4 * tpq / meters[segment, 2]
    return np.mod(since, bar_ticks) / tpq, bar_ticks / tpq


@dataclass(frozen=True)
class InputKind:
    """Whether a file reads as a score or a performance, and why, in words for the user."""

    kind: str  # "score" or "performance"
    reason: str


def detect_input_kind(piece: PieceNotes) -> InputKind:
    """A score: at least half the onsets on a 1/96-quarter grid of the file's beats, and at least
    half the notes that start within 30 ms of another note on exactly its tick."""
    midi = piece.midi
    tpq = midi.tempo_map.ticks_per_quarter
    ticks = np.sort(midi.notes["start_tick"].to_numpy()[piece.notes["note"].to_numpy()])
    on_grid = float(np.mean((ticks * GRID_PER_QUARTER) % tpq == 0)) if len(ticks) else 0.0
    seconds = np.sort(piece.notes["start"].to_numpy())
    close = np.diff(seconds) <= CHORD_GAP  # onsets this close are meant together
    exact = float(np.mean(np.diff(ticks)[close] == 0)) if close.any() else 1.0
    facts = f"{on_grid:.0%} of onsets on a 1/{GRID_PER_QUARTER}-beat grid, {exact:.0%} of chord notes struck on the same tick"
    if on_grid >= MIN_ON_GRID and exact >= MIN_EXACT_CHORDS:
        return InputKind("score", facts)
    return InputKind("performance", facts)
