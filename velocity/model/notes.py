"""The note rules: which notes of a MIDI file make up its piano piece, in seconds.

The ground floor that the extract stage, the align stage and `velocity predict` all read MIDI
through (with the reader in velocity/model/midi.py), so they keep, warn about and refuse the same notes.

Note semantics, matching pretty_midi on intact real files except where said:
- A note lasts from key press to key release; a velocity-0 note-on ends a note like a note-off.
- A zero-length note (press and release on one tick) is kept with duration 0; pretty_midi drops it.
- A note never released ends at its track's last event, with a warning; a file cut off mid-track
  keeps the notes before the cut, with a warning (the reader's policy, velocity/model/midi.py).
- With `sustain=True` note ends follow the sustain pedal the way magenta note-seq's
  `apply_sustain_control_changes` does (see `apply_sustain`).
- The piano is every note on GM programs 0-7 off the drum channel, all tracks and channels merged
  into one instrument. Drum-channel notes and notes of other programs are ignored, counted, with a
  warning; a file without a piano note is an error saying what it holds.
- Notes outside the 88 keys 21..108 are dropped and counted.
- `dstart` is the next note's start minus this note's start; the last note of a piece, which has no
  next note, gets its own duration instead (so no piece ends in a made-up gap).
- `pedal` is 1 when the sustain pedal (CC64 >= 64, any channel but the drums') is down at the note's
  onset tick (a pedal event on the onset tick counts), else 0; read whether or not `sustain` is on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from velocity.model.codec import PIANO_PITCHES
from velocity.model.midi import DRUM_CHANNEL, MidiError, MidiFile, MidiWarning, read_midi, ticks_to_seconds

PIANO_PROGRAMS = range(0, 8)  # General MIDI pianos, 0-based: acoustic grand .. clavinet
PIANO_RULE = f"{PIANO_PROGRAMS.start}-{PIANO_PROGRAMS.stop - 1}"
SUSTAIN_DOWN_FROM = 64  # MAESTRO's pedal values are continuous; >= 64 reads as down (note-seq's rule)
NOTES_IGNORED_NON_PIANO_PROGRAM = "notes_ignored_non_piano_program"
NOTE_COLUMNS = ["pitch", "start", "end", "duration", "dstart", "velocity", "pedal"]  # a piece's note table, in order


# Event kinds in the order note-seq processes them when they fall on the same time.
_PEDAL_DOWN, _PEDAL_UP, _NOTE_ON, _NOTE_OFF = 0, 1, 2, 3


def pedal_down_at(ticks: np.ndarray, pedal_ticks: np.ndarray, pedal_values: np.ndarray) -> np.ndarray:
    """1 where the sustain pedal's last event at or before each tick is down (>= 64), else 0."""
    last = np.searchsorted(pedal_ticks, ticks, side="right") - 1
    down = pedal_values[np.maximum(last, 0)] >= SUSTAIN_DOWN_FROM if len(pedal_ticks) else np.zeros(len(ticks), dtype=bool)
    return np.where(last >= 0, down, False).astype(np.int8)


def apply_sustain(
    start_ticks: np.ndarray,
    end_ticks: np.ndarray,
    pitch: np.ndarray,
    pedal_ticks: np.ndarray,
    pedal_values: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Note ends under the sustain pedal, as note-seq's `apply_sustain_control_changes` sets them.

    A pedal value >= 64 is down. A note released while the pedal is down sounds on until the pedal
    comes up, or until the same key is struck again while the pedal is down, whichever is first; a
    note still sounding when the events run out ends at the last event. Returns the new end ticks
    and a keep mask: of two notes of one key struck on the same tick under the pedal, the first is
    cut to zero length and dropped (note-seq does the same).
    """
    n_notes = len(start_ticks)
    times = np.concatenate([start_ticks, end_ticks, pedal_ticks]).astype(np.int64)
    kinds = np.concatenate(
        [
            np.full(n_notes, _NOTE_ON),
            np.full(n_notes, _NOTE_OFF),
            np.where(pedal_values >= SUSTAIN_DOWN_FROM, _PEDAL_DOWN, _PEDAL_UP),
        ]
    )
    ids = np.concatenate([np.arange(n_notes), np.arange(n_notes), np.arange(len(pedal_ticks))])
    order = np.lexsort((np.arange(len(times)), kinds, times))  # time, then kind, then input order

    new_end = np.asarray(end_ticks, dtype=np.int64).copy()
    keep = np.ones(n_notes, dtype=bool)
    pitches = np.asarray(pitch).tolist()
    starts = np.asarray(start_ticks).tolist()
    sounding: dict[int, list[int]] = {}  # pitch -> notes still sounding (held or sustained)
    released: set[int] = set()  # sounding notes whose key is up: only the pedal holds them
    pedal_down = False
    time = 0
    for time, kind, idx in zip(times[order].tolist(), kinds[order].tolist(), ids[order].tolist()):
        if kind == _PEDAL_DOWN:
            pedal_down = True
        elif kind == _PEDAL_UP:
            pedal_down = False
            for note in released:
                new_end[note] = time
                sounding[pitches[note]].remove(note)
            released.clear()
        elif kind == _NOTE_ON:
            notes = sounding.setdefault(pitches[idx], [])
            if pedal_down:  # striking a key again under the pedal ends its earlier notes
                for note in notes:
                    new_end[note] = time
                    released.discard(note)
                    if starts[note] == time:
                        keep[note] = False
                notes.clear()
            notes.append(idx)
        else:  # _NOTE_OFF
            notes = sounding[pitches[idx]]
            if idx in notes:  # not already ended by a strike of the same key
                if pedal_down:
                    released.add(idx)
                else:
                    notes.remove(idx)
    for notes in sounding.values():
        for note in notes:
            new_end[note] = time
    return new_end, keep


@dataclass
class PieceNotes:
    """One file's piece: its notes and what was left out of them."""

    # NOTE_COLUMNS, then `note`: each note's row in `midi.notes` (predict writes its velocity there).
    notes: pd.DataFrame
    midi: MidiFile
    dropped_out_of_range: int = 0
    dropped_sustain_duplicates: int = 0
    drum_notes_ignored: int = 0
    non_piano_notes_ignored: int = 0
    warnings: list[MidiWarning] = field(default_factory=list)  # the reader's, then the note rules'


def _timing(pitch: np.ndarray, start: np.ndarray, end: np.ndarray) -> dict[str, np.ndarray]:
    """pitch, start, end, duration, dstart of notes already sorted by start then pitch."""
    start = np.asarray(start, dtype=np.float64)
    end = np.asarray(end, dtype=np.float64)
    duration = end - start
    dstart = np.empty_like(start)
    dstart[:-1] = np.diff(start)
    dstart[-1:] = duration[-1:]  # the last note has no next start: use its own length
    pitch = np.asarray(pitch).astype(np.int16)
    return {"pitch": pitch, "start": start, "end": end, "duration": duration, "dstart": dstart}


def add_timing(notes: pd.DataFrame) -> pd.DataFrame:
    """Sort `notes` (pitch, start, end in seconds, velocity optional) by start then pitch and add
    `duration` and `dstart`; the last note's dstart is its own duration.

    Returns a new frame with a fresh index: pitch, start, end, duration, dstart[, velocity], then any
    other columns as they were (e.g. an original note number to map results back).
    """
    missing = [c for c in ("pitch", "start", "end") if c not in notes]
    if missing:
        raise ValueError(f"add_timing: notes lack column(s) {missing}")
    order = np.lexsort((notes["pitch"].to_numpy(), notes["start"].to_numpy()))  # stable on ties
    out = notes.iloc[order].reset_index(drop=True)
    columns = _timing(out["pitch"].to_numpy(), out["start"].to_numpy(), out["end"].to_numpy())
    if "velocity" in out:
        columns["velocity"] = out["velocity"].to_numpy().astype(np.int16)
    for name in out.columns:
        if name not in columns:
            columns[name] = out[name]
    return pd.DataFrame(columns)


def _unusable(midi: MidiFile, problem: str) -> MidiError:
    """One line naming the file, the problem and any damage the reader met (it may be the cause)."""
    damage = "; ".join(w.text for w in midi.warnings if w.kind.startswith("files_"))
    return MidiError(f"{midi.path}: {problem}" + (f" ({damage})" if damage else ""))


def piece_notes(midi: MidiFile, sustain: bool = False) -> PieceNotes:
    """The piece in `midi`: its notes by the rules of the module doc, with the counts and warnings of
    what was left out. Raises MidiError naming the file when no note is usable."""
    notes = midi.notes
    warnings = list(midi.warnings)
    drum = notes["channel"].to_numpy() == DRUM_CHANNEL
    program = notes["program"].to_numpy()
    foreign = ~drum & ~np.isin(program, PIANO_PROGRAMS)
    n_drum, n_foreign = int(drum.sum()), int(foreign.sum())
    if n_drum:
        warnings.append(MidiWarning("drum_notes_ignored", n_drum, f"{n_drum} drum-channel note(s) ignored"))
    programs = ", ".join(f"{count} of program {p}" for p, count in zip(*np.unique(program[foreign], return_counts=True)))
    if n_foreign:
        warnings.append(MidiWarning(
            NOTES_IGNORED_NON_PIANO_PROGRAM, n_foreign,
            f"{n_foreign} note(s) of GM programs other than the pianos ({PIANO_RULE}) ignored: {programs}",
        ))  # fmt: skip
    rows = np.flatnonzero(~drum & ~foreign)
    if len(rows) == 0:
        if not len(notes):
            raise _unusable(midi, "no notes")
        held = [f"{n_drum} on the drum channel"] * bool(n_drum) + [f"{n_foreign} of non-piano programs ({programs})"] * bool(n_foreign)
        raise _unusable(midi, f"no piano notes (GM programs {PIANO_RULE}, off the drum channel), only {' and '.join(held)}")

    start = notes["start_tick"].to_numpy()[rows]
    end = notes["end_tick"].to_numpy()[rows]
    pitch = notes["pitch"].to_numpy()[rows].astype(np.int16)
    velocity = notes["velocity"].to_numpy()[rows].astype(np.int16)
    pedal = pedal_down_at(start, midi.pedal_ticks, midi.pedal_values)

    dropped_duplicates = 0
    if sustain:
        end, keep = apply_sustain(start, end, pitch, midi.pedal_ticks, midi.pedal_values)
        dropped_duplicates = int((~keep).sum())
        start, end, pitch, velocity, pedal, rows = start[keep], end[keep], pitch[keep], velocity[keep], pedal[keep], rows[keep]

    in_range = (pitch >= PIANO_PITCHES.start) & (pitch < PIANO_PITCHES.stop)
    dropped_out_of_range = int((~in_range).sum())
    if not in_range.any():
        raise _unusable(midi, f"no notes in the piano range {PIANO_PITCHES.start}..{PIANO_PITCHES.stop - 1} ({dropped_out_of_range} outside it)")
    if dropped_out_of_range:
        warnings.append(MidiWarning("notes_dropped_out_of_range", dropped_out_of_range,
                                    f"{dropped_out_of_range} note(s) outside the piano's {PIANO_PITCHES.start}..{PIANO_PITCHES.stop - 1} left out"))  # fmt: skip
    start, end, pitch, velocity, pedal, rows = start[in_range], end[in_range], pitch[in_range], velocity[in_range], pedal[in_range], rows[in_range]

    # Sort in ticks (exact) with every column as a key, so the order never depends on track order.
    # Tick order is second order: ticks_to_seconds is increasing. Then what add_timing would add.
    order = np.lexsort((velocity, end, pitch, start))
    seconds = ticks_to_seconds(midi.tempo_map, np.concatenate([start[order], end[order]]))
    n_kept = len(order)
    columns = _timing(pitch[order], seconds[:n_kept], seconds[n_kept:])
    columns["velocity"] = velocity[order]
    columns["pedal"] = pedal[order]
    columns["note"] = rows[order]
    return PieceNotes(pd.DataFrame(columns), midi, dropped_out_of_range, dropped_duplicates, n_drum, n_foreign, warnings)


def read_piece(path: Path, sustain: bool = False) -> PieceNotes:
    """The piece in one MIDI file (see `piece_notes`); raises MidiError naming the file."""
    return piece_notes(read_midi(path), sustain)


def read_notes(path: Path, sustain: bool = False) -> pd.DataFrame:
    """Notes of one MIDI file: pitch, start, end, duration, dstart, velocity, pedal (see the module doc).

    Raises MidiError naming the file and the problem.
    """
    return read_piece(path, sustain).notes[NOTE_COLUMNS]
