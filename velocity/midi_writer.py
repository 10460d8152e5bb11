"""Notes written as a one-piano MIDI file with pretty_midi: evaluate's test segments, `velocity generate`'s performances.

(`velocity predict` writes no new file: it rewrites the velocity bytes of its input, velocity/pipeline/humanize.py.)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from velocity.io import atomic_path


def write_piano_midi(notes: pd.DataFrame, path: Path | str, name: str, resolution: int) -> None:
    """Notes (columns pitch, start and end in seconds, velocity) as one piano track at 120 bpm and
    `resolution` ticks per beat, written atomically. Velocities are kept in 1..127: a note-on of
    velocity 0 would be a note-off."""
    import pretty_midi

    midi = pretty_midi.PrettyMIDI(resolution=resolution, initial_tempo=120.0)
    piano = pretty_midi.Instrument(program=0, name=name)
    for pitch, start, end, velocity in notes[["pitch", "start", "end", "velocity"]].itertuples(index=False):
        piano.notes.append(pretty_midi.Note(velocity=int(np.clip(velocity, 1, 127)), pitch=int(pitch), start=float(start), end=float(end)))
    midi.instruments.append(piano)
    with atomic_path(path) as tmp:
        midi.write(str(tmp))


def write_segment_midi(segment: pd.DataFrame, velocity: np.ndarray, path: Path | str) -> None:
    """A segment of a notes table with the given velocities, moved to start at 0 s."""
    offset = float(segment["start"].min())
    shifted = pd.DataFrame({"pitch": segment["pitch"].to_numpy(), "start": segment["start"].to_numpy() - offset,
                            "end": segment["end"].to_numpy() - offset, "velocity": np.asarray(velocity)})  # fmt: skip
    write_piano_midi(shifted, path, name="piano", resolution=480)
