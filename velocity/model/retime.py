"""Rewrite a MIDI file with its piano notes at new times: a rendered performance of a score.

The file stays what it was in everything else: its other tracks and channels, programs, the drum
channel, meta events and resolution. Only the piano piece's notes move (each note-on and its
note-off, the velocity set too), the sustain pedal of the piano's channel is replaced by the
rendered one (when given), and with a tempo map (`TempoCurve`) the file's tempo events are replaced
so that the notes stay on their bars and beats.

Notes are found the way velocity/model/midi.py reads them: in note-on order within each track,
each note-off (or velocity-0 note-on) ending the oldest sounding note of its key and channel. The
rewrite reads the bytes with mido; a file where mido and the project's reader disagree on the notes
is refused with a MidiError naming it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np

from velocity.model.midi import DEFAULT_MICROSECONDS_PER_QUARTER, MidiError, MidiFile, TempoMap, ticks_to_seconds

SUSTAIN = 64


@dataclass(frozen=True)
class TempoCurve:
    """A tempo map for the rewritten file: at each tick of `ticks`, `microseconds_per_quarter`."""

    ticks: np.ndarray  # int64, increasing, the first 0
    microseconds_per_quarter: np.ndarray  # float64


def seconds_to_ticks(tempo_map: TempoMap, seconds: np.ndarray) -> np.ndarray:
    """The (fractional) tick of each time in seconds under `tempo_map`: `ticks_to_seconds` inverted."""
    ticks = np.asarray(tempo_map.ticks, dtype=np.int64)
    if len(ticks) == 0 or ticks[0] > 0:
        ticks = np.concatenate([[0], ticks])
    at = ticks_to_seconds(tempo_map, ticks)
    # Seconds per tick of each segment, the last extended beyond the file.
    per_tick = ticks_to_seconds(tempo_map, ticks + 1) - at
    seconds = np.asarray(seconds, dtype=np.float64)
    segment = np.maximum(np.searchsorted(at, seconds, side="right") - 1, 0)
    return ticks[segment] + (seconds - at[segment]) / per_tick[segment]


def tempo_curve_through(tempo_map: TempoMap, score_seconds: np.ndarray, performed_seconds: np.ndarray) -> TempoCurve:
    """The tempo map under which each score moment (seconds of the file's own tempo map) falls at
    its performed time: one tempo event at each of those moments' ticks (the onset groups), the
    pace before the first kept to its first stretch, after the last to the last stretch."""
    tick = np.round(seconds_to_ticks(tempo_map, score_seconds)).astype(np.int64)
    keep = np.concatenate([[True], np.diff(tick) > 0])
    tick, performed = tick[keep], np.asarray(performed_seconds, dtype=np.float64)[keep]
    if tick[0] > 0:  # a file's time starts at tick 0: the silence before the first group too
        tick, performed = np.concatenate([[0], tick]), np.concatenate([[0.0], performed])
    if len(tick) == 1:
        return TempoCurve(tick, np.array([DEFAULT_MICROSECONDS_PER_QUARTER], dtype=np.float64))
    mspq = np.maximum(np.diff(performed) / np.diff(tick) * tempo_map.ticks_per_quarter * 1e6, 1.0)
    return TempoCurve(tick, np.append(mspq, mspq[-1]))


def retimed_bytes(midi: MidiFile, rows: np.ndarray, onset: np.ndarray, end: np.ndarray, velocity: np.ndarray,
                  pedal: list[tuple[float, int]] | None = None, tempo: TempoCurve | None = None) -> bytes:  # fmt: skip
    """`midi` with its notes `rows` (rows of `midi.notes`) played at `onset`..`end` (seconds) with
    `velocity`; the piano channel's sustain pedal replaced by `pedal` ((seconds, value) events) when
    given; with `tempo`, the file's tempo events replaced by it (seconds are then read through it)."""
    import mido

    try:
        song = mido.MidiFile(file=io.BytesIO(midi.data))
    except (OSError, ValueError, EOFError, KeyError, IndexError) as err:
        raise MidiError(f"{midi.path}: cannot rewrite it ({err})") from None
    new_map = midi.tempo_map if tempo is None else TempoMap(midi.tempo_map.ticks_per_quarter, tempo.ticks, tempo.microseconds_per_quarter)
    rows = np.asarray(rows, dtype=np.int64)
    on_tick = np.round(seconds_to_ticks(new_map, onset)).astype(np.int64)
    off_tick = np.maximum(np.round(seconds_to_ticks(new_map, end)).astype(np.int64), on_tick)
    moved = {int(r): (int(a), int(b), int(v)) for r, a, b, v in zip(rows, on_tick, off_tick, np.clip(np.asarray(velocity), 1, 127))}
    notes = midi.notes
    piano_channels = set(notes["channel"].to_numpy()[rows].tolist()) if len(rows) else set()
    pedal_track = int(notes["track"].to_numpy()[rows[0]]) if len(rows) else 0
    pedal_channel = int(notes["channel"].to_numpy()[rows[0]]) if len(rows) else 0

    for t, track in enumerate(song.tracks):
        track_rows = np.flatnonzero(notes["track"].to_numpy() == t)  # this track's notes in note-on order
        events, next_note, sounding = [], 0, {}
        tick = 0
        for order, message in enumerate(track):
            tick += message.time
            if message.type == "set_tempo" and tempo is not None:
                continue
            if message.type == "control_change" and message.control == SUSTAIN and pedal is not None and message.channel in piano_channels:
                continue
            if message.type == "note_on" and message.velocity > 0:
                if next_note >= len(track_rows):
                    raise MidiError(f"{midi.path}: track {t + 1} holds more notes than the reader found: cannot rewrite it")
                row = int(track_rows[next_note])
                next_note += 1
                sounding.setdefault((message.channel, message.note), []).append(row)
                if row in moved:
                    new_on, _, new_velocity = moved[row]
                    message.velocity = new_velocity  # `song` is this function's own parse: change its messages in place
                    events.append((new_on, 2, order, message))
                    continue
            elif message.type in ("note_off", "note_on"):
                waiting = sounding.get((message.channel, message.note))
                row = waiting.pop(0) if waiting else None
                if row is not None and row in moved:
                    new_on, new_off, _ = moved[row]
                    # A release sorts first at its tick, unless it is its own note's tick too (a note
                    # rounded to no length): then after its note-on, in the file's order.
                    events.append((new_off, 2 if new_off == new_on else 0, order, message))
                    continue
            events.append((tick, 3 if message.type == "end_of_track" else 1, order, message))
        if next_note != len(track_rows):
            raise MidiError(f"{midi.path}: track {t + 1}: mido reads {next_note} notes, the reader {len(track_rows)}: cannot rewrite it")
        if t == pedal_track and pedal:
            pedal_ticks = np.round(seconds_to_ticks(new_map, np.array([s for s, _ in pedal]))).astype(np.int64)
            events += [(int(k), 1, -1, mido.Message("control_change", channel=pedal_channel, control=SUSTAIN, value=int(v)))
                       for k, (_, v) in zip(pedal_ticks, pedal)]  # fmt: skip
        if t == 0 and tempo is not None:
            events += [(int(k), 1, -2, mido.MetaMessage("set_tempo", tempo=int(round(min(max(us, 1), 16_777_215)))))
                       for k, us in zip(tempo.ticks, tempo.microseconds_per_quarter)]  # fmt: skip
        # Note-offs first at a tick, then everything else in its order, then note-ons; the track's end last.
        events.sort(key=lambda e: (e[0], e[1], e[2]))
        last = max((e[0] for e in events), default=0)
        rebuilt, previous = mido.MidiTrack(), 0
        for tick_at, kind, _, message in events:
            at = last if kind == 3 else tick_at
            message.time = at - previous  # each message is in `events` once (a copy per message costs seconds on a long score)
            rebuilt.append(message)
            previous = at
        song.tracks[t] = rebuilt
    out = io.BytesIO()
    song.save(file=out)
    return out.getvalue()
