"""Play a score like a pianist: the timing `velocity predict --perform` and the studio's perform
switch give a score, beside the velocities.

The timing network (velocity/model/timing_net.py) reads the score and predicts each note's tempo,
onset deviation, articulation and pedal; velocity/model/timing.py renders them into note times
and sustain pedal events, scaled by `timing` (0: as written, 1: the model's, 2: twice as far from
the notation) and, when the player sets one, played at their `tempo` on average (the model's curve
kept around it); velocity/model/retime.py writes the file: the piano notes moved, everything else as
it was. With `tempo_map` the tempo goes into the file's tempo events instead, so that in a DAW the
notes stay on their bars and beats and only the chords' spread and the articulation leave the grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from velocity.model.notes import PieceNotes
    from velocity.model.timing import Clock, Rendering
    from velocity.model.timing_net import TimingModel

from velocity.pipeline.humanize import check_control


# What the command logs and the page shows of a performance given --perform.
KEPT_TIMING = "read as a performance: its pianist's timing is kept, only the velocities change"


@dataclass(frozen=True)
class PerformControls:
    timing: float = 1.0  # scales every timing deviation from the notation: 0 as written .. 2
    pedal: bool = True  # render the sustain pedal
    tempo_map: bool = False  # the tempo as the file's tempo map, the notes on their score ticks
    tempo: float | None = None  # quarter notes a minute on average, first onset to last; None: the model's

    def __post_init__(self) -> None:
        check_control("timing", self.timing)
        if self.tempo is not None:
            check_control("tempo", self.tempo)


def performed_line(controls: PerformControls) -> str:
    """What happened to a score's timing, in words."""
    return (f"played at timing {controls.timing:g}" + (f", {controls.tempo:g} quarter notes a minute" if controls.tempo is not None else "")
            + (", the tempo as the file's tempo map" if controls.tempo_map else "") + ("" if controls.pedal else ", no pedal"))  # fmt: skip


def score_warnings(piece: "PieceNotes", controls: PerformControls | None = None) -> list[str]:
    """What a score lacks that the rendering assumes (the MIDI file's defaults), one line each; a
    tempo that is most likely a default says so unless the player set `controls.tempo`: a file at
    MIDI's default 120 quarter notes a minute throughout most often carries its notation program's,
    not the piece's tempo (pianists played such scores of the shared archives at 0.4 to 1.4 times
    that speed, scores with a tempo of their own at 0.75 to 1.2: docs/timing.md)."""
    from velocity.model.midi import at_default_tempo

    midi, lines = piece.midi, []
    tempo_set = controls is not None and controls.tempo is not None
    guess = "" if tempo_set else ": the overall tempo is the model's guess; set it with the tempo control (--tempo)"
    if len(midi.tempo_map.ticks) == 0:
        lines.append(f"{midi.path}: no tempo: read at MIDI's default 120 quarter notes per minute{guess}")
    elif guess and at_default_tempo(60e6 / np.asarray(midi.tempo_map.microseconds_per_quarter, dtype=np.float64)):
        lines.append(f"{midi.path}: 120 quarter notes a minute throughout, most often a notation program's default{guess}")
    if len(midi.time_signatures) == 0:
        lines.append(f"{midi.path}: no time signature: read as 4/4, so the pedal changes on those bars")
    return lines


def render_score(piece: "PieceNotes", model: "TimingModel", controls: PerformControls) -> "Rendering":
    """The performance of `piece` (a score) that `model` predicts, under `controls`."""
    from velocity.model.score import score_table
    from velocity.model.timing import clock_from_pace, render_performance
    from velocity.model.timing_net import predict_timing

    table = score_table(piece)
    predicted = predict_timing(model, table)
    downbeat = np.isclose(table["bar_position"].to_numpy(dtype=np.float64), 0.0)
    start = table["start"].to_numpy()
    stretch = 1.0
    if controls.tempo is not None:
        clock = clock_from_pace(start, controls.timing * predicted["log_pace"].to_numpy())
        stretch = tempo_stretch(table["beat"].to_numpy(), start, clock, controls.tempo)
    return render_performance(start, table["end"].to_numpy(), table["pitch"].to_numpy(), predicted,
                              timing=controls.timing, pedal=controls.pedal, change=downbeat, stretch=stretch)  # fmt: skip


def tempo_stretch(beat: np.ndarray, score_start: np.ndarray, clock: "Clock", tempo: float) -> float:
    """How much longer than `clock` a performance must take to play the notes at `tempo` quarter
    notes a minute on average, from the first onset to the last (1 when they all start together)."""
    first, last = int(np.argmin(score_start)), int(np.argmax(score_start))
    quarters, seconds = float(beat[last] - beat[first]), float(clock(score_start[last]) - clock(score_start[first]))
    return 60.0 * quarters / tempo / seconds if quarters > 0 and seconds > 0 else 1.0


def performed_bytes(piece: "PieceNotes", velocity: np.ndarray, rendering: "Rendering", controls: PerformControls) -> bytes:
    """The file of `piece` played as `rendering` says, every note of `piece.midi` at `velocity`
    (the piece's own notes among them, as `velocity predict` sets them)."""
    from velocity.model.retime import retimed_bytes, tempo_curve_through
    from velocity.model.timing import onset_groups

    rows = piece.notes["note"].to_numpy()
    start = piece.notes["start"].to_numpy()
    tempo = None
    if controls.tempo_map:
        group = onset_groups(start)
        first = np.unique(group, return_index=True)[1]  # each group's first note: its onset
        tempo = tempo_curve_through(piece.midi.tempo_map, start[first], rendering.clock(start[first]))
    return retimed_bytes(piece.midi, rows, rendering.onset, rendering.end, np.asarray(velocity)[rows],
                         rendering.pedal if controls.pedal else None, tempo)  # fmt: skip
