"""The one MIDI reader: a Standard MIDI File's bytes -> notes in ticks, the sustain pedal, the tempo
map, the time signatures and what was wrong with the file. The extract and align stages and
`velocity predict` all read through it.

Files from sequencers, notation programs and the web are often damaged, so the reader walks the
bytes itself, event by event (delta times, running status, meta and system-exclusive events), and
keeps everything it read before any damage:

- a file that ends inside a track (truncated): the events before the cut are kept;
- a chunk length that disagrees with where the track's End of Track lies: the events are trusted
  and the next chunk is read where the events ended;
- a malformed event (a data byte without any status, an undefined status byte): the rest of that
  track is ignored, the events before it are kept;
- a note-on never released: the note ends at its track's last event tick.

Each becomes a `MidiWarning`; only a file with nothing to read raises `MidiError`. The reader also
records the byte offset of every note-on's velocity, so `velocity predict` can rewrite exactly those
bytes and leave everything else in the file as it was, damage included.

Notes pair the way symusic (and so the extract stage before this reader) pairs them: within a
track, a note-off (or a velocity-0 note-on) ends the oldest sounding note of its channel and pitch;
a note's program is its channel's last program change in its track before the note-on (0 without
one). On intact files the notes equal symusic's (tests/test_midi.py checks the shared archive).
Which of these notes a piece is made of is the note rules' business (`velocity.model.notes.piece_notes`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

DRUM_CHANNEL = 9  # channel 10 in 1-based numbering
SUSTAIN_CONTROL = 64
DEFAULT_MICROSECONDS_PER_QUARTER = 500_000  # 120 bpm, the MIDI default before any tempo event
DEFAULT_QPM = 60e6 / DEFAULT_MICROSECONDS_PER_QUARTER


def at_default_tempo(quarters_per_minute: np.ndarray) -> bool:
    """True for tempos all at MIDI's default 120 quarter notes a minute (within half a beat a
    minute): in a score, most often its notation program's default rather than the piece's tempo."""
    return bool(np.allclose(quarters_per_minute, DEFAULT_QPM, rtol=0.5 / DEFAULT_QPM))

# Data bytes after a channel status byte, by its high nibble.
_CHANNEL_DATA_BYTES = {0x80: 2, 0x90: 2, 0xA0: 2, 0xB0: 2, 0xC0: 1, 0xD0: 1, 0xE0: 2}
# System common and real-time messages that may (rarely) appear in a file, and their data bytes.
_SYSTEM_DATA_BYTES = {0xF1: 1, 0xF2: 2, 0xF3: 1, 0xF6: 0, 0xF8: 0, 0xFA: 0, 0xFB: 0, 0xFC: 0, 0xFE: 0}

# What can be wrong with a file that is still read, as the extract report counts it: `files_*`
# kinds count files, `notes_*` kinds count notes (the note rules of velocity/model/notes.py add theirs).
FILES_TRUNCATED = "files_truncated"
FILES_BAD_CHUNK_LENGTH = "files_bad_chunk_length"
FILES_BAD_EVENT = "files_bad_event"
FILES_MISSING_TRACKS = "files_missing_tracks"
FILES_TYPE_2 = "files_type_2"
NOTES_CLOSED_AT_TRACK_END = "notes_closed_at_track_end"


class MidiError(Exception):
    """A MIDI file that cannot be used: unreadable, empty, drum-only, not a piano, ...; the message
    is one line naming the file and the problem."""


@dataclass(frozen=True)
class MidiWarning:
    """Something a file did wrong that the reader worked around, and how many files or notes it hit."""

    kind: str  # one of the FILES_* / NOTES_* names: a key of the extract report
    count: int  # 1 for a files_* kind, else notes
    text: str  # one line, without the file's name (callers prefix it)


def warning_counts(warnings: list[MidiWarning]) -> dict[str, int]:
    """Per kind: files (a files_* kind counts its file once) or notes."""
    counts: dict[str, int] = {}
    for warning in warnings:
        counted = 1 if warning.kind.startswith("files_") else warning.count
        if not (warning.kind.startswith("files_") and warning.kind in counts):
            counts[warning.kind] = counts.get(warning.kind, 0) + counted
    return counts


@dataclass(frozen=True)
class TempoMap:
    """A file's resolution and tempo events (sorted by tick, stable), for ticks -> seconds."""

    ticks_per_quarter: int
    ticks: np.ndarray  # int64
    microseconds_per_quarter: np.ndarray  # float64


def ticks_to_seconds(tempo_map: TempoMap, ticks: np.ndarray) -> np.ndarray:
    """Seconds (float64) of each tick time, exact to the tempo map and ticks per quarter.

    Before the first tempo event the MIDI default of 120 bpm holds; of several tempo events on one
    tick the last one wins. float64 because float32 seconds step by 6e-5 s ten minutes in.
    """
    if tempo_map.ticks_per_quarter <= 0:
        raise ValueError(f"ticks per quarter must be positive, got {tempo_map.ticks_per_quarter}")
    tempo_ticks = np.asarray(tempo_map.ticks, dtype=np.int64)
    mspq = np.asarray(tempo_map.microseconds_per_quarter, dtype=np.float64)
    if len(tempo_ticks) == 0 or tempo_ticks[0] > 0:
        tempo_ticks = np.concatenate([[0], tempo_ticks])
        mspq = np.concatenate([[DEFAULT_MICROSECONDS_PER_QUARTER], mspq])
    seconds_per_tick = mspq / (1e6 * tempo_map.ticks_per_quarter)
    # Seconds at each tempo event: the sum of the whole segments before it.
    segment_start = np.concatenate([[0.0], np.cumsum(np.diff(tempo_ticks) * seconds_per_tick[:-1])])
    ticks = np.asarray(ticks, dtype=np.int64)
    segment = np.searchsorted(tempo_ticks, ticks, side="right") - 1
    return segment_start[segment] + (ticks - tempo_ticks[segment]) * seconds_per_tick[segment]


NOTE_FIELDS = ("pitch", "start_tick", "end_tick", "velocity", "channel", "program", "track", "offset")


@dataclass
class MidiFile:
    """Everything the project reads from one MIDI file."""

    path: Path
    data: bytes  # the file as read: `velocity predict` writes these bytes with new velocity bytes
    format: int  # 0, 1 or 2
    tempo_map: TempoMap
    # One row per note of every channel and track, in note-on order within each track, tracks in
    # file order: NOTE_FIELDS, `offset` the byte offset of its note-on's velocity in `data`.
    notes: pd.DataFrame
    # The sustain pedal (CC64) of every channel but the drum channel, merged in tick order.
    pedal_ticks: np.ndarray  # int64
    pedal_values: np.ndarray  # int16
    warnings: list[MidiWarning] = field(default_factory=list)
    # Time signatures (meta 0x58) of every track in tick order: (tick, numerator, denominator) rows.
    time_signatures: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), dtype=np.int64))


def read_midi(path: Path | str) -> MidiFile:
    """Read and parse one MIDI file (see the module doc); raises MidiError naming the file."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise MidiError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise MidiError(f"{path}: a folder, not a MIDI file") from None
    except OSError as err:
        raise MidiError(f"{path}: cannot read file ({err.strerror or err})") from None
    return parse_midi(data, path)


def _varlen(data: bytes, p: int) -> tuple[int, int]:
    """The variable-length quantity at `p` (delta times, meta lengths) and the position after it;
    IndexError when the file ends inside it."""
    byte = data[p]
    p += 1
    value = byte & 0x7F
    while byte & 0x80:
        byte = data[p]
        p += 1
        value = (value << 7) | (byte & 0x7F)
    return value, p


class _Stop(Exception):
    """Internal: the walk of one track stops at a malformed event."""


def parse_midi(data: bytes, path: Path | str = "<bytes>") -> MidiFile:
    """Parse a Standard MIDI File's bytes; `path` only names the file in messages."""
    path = Path(path)

    def unreadable(why: str) -> MidiError:
        return MidiError(f"{path}: not a readable MIDI file ({why})")

    if not data:
        raise unreadable("empty file")
    if data[:4] != b"MThd":
        raise unreadable("no MThd header")
    if len(data) < 14 or int.from_bytes(data[4:8], "big") < 6:
        raise unreadable("header cut off")
    fmt, n_tracks, division = (int.from_bytes(data[i : i + 2], "big") for i in (8, 10, 12))
    if fmt > 2:
        raise unreadable(f"unknown format {fmt}")
    if division & 0x8000:
        raise MidiError(f"{path}: SMPTE time division is not supported")
    if division == 0:
        raise MidiError(f"{path}: ticks per quarter is 0")

    warnings: list[MidiWarning] = []
    columns: dict[str, list[int]] = {name: [] for name in NOTE_FIELDS}
    tempo_ticks: list[int] = []
    tempo_mspq: list[int] = []
    pedal_ticks: list[int] = []
    pedal_values: list[int] = []
    meters: list[tuple[int, int, int]] = []
    n = len(data)
    pos = 8 + int.from_bytes(data[4:8], "big")
    tracks_read = 0
    stopped = False  # damage that ends reading the file
    while pos + 8 <= n and not stopped:
        chunk_id, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "big")
        if chunk_id != b"MTrk":
            if not chunk_id.isalnum():  # not a chunk header: a wrong length before it, or garbage
                if tracks_read < n_tracks:
                    warnings.append(MidiWarning(FILES_BAD_CHUNK_LENGTH, 1, f"no chunk header where track {tracks_read + 1} should start (byte {pos}); the rest of the file ignored"))
                break
            pos += 8 + size  # an unknown chunk: the standard says skip it
            continue
        track = tracks_read
        tracks_read += 1
        pos, stopped, track_warnings = _walk_track(data, pos, size, track, columns, tempo_ticks, tempo_mspq, pedal_ticks, pedal_values, meters)
        warnings.extend(track_warnings)
    if tracks_read < n_tracks and not stopped and not any(w.kind == FILES_BAD_CHUNK_LENGTH for w in warnings):
        warnings.append(MidiWarning(FILES_MISSING_TRACKS, 1, f"the header announces {n_tracks} tracks, the file holds {tracks_read}"))
    if fmt == 2 and tracks_read > 1:
        warnings.append(MidiWarning(FILES_TYPE_2, 1, f"type 2 file: its {tracks_read} independent tracks are read as if played together"))
    if any(us <= 0 for us in tempo_mspq):
        raise MidiError(f"{path}: tempo event with zero microseconds per quarter note")

    order = np.argsort(np.asarray(tempo_ticks, dtype=np.int64), kind="stable")
    tempo_map = TempoMap(division, np.asarray(tempo_ticks, dtype=np.int64)[order], np.asarray(tempo_mspq, dtype=np.float64)[order])
    notes = pd.DataFrame({name: np.asarray(values, dtype=np.int64) for name, values in columns.items()})
    pedal_order = np.argsort(np.asarray(pedal_ticks, dtype=np.int64), kind="stable")
    return MidiFile(
        path, data, fmt, tempo_map, notes,
        np.asarray(pedal_ticks, dtype=np.int64)[pedal_order], np.asarray(pedal_values, dtype=np.int16)[pedal_order], warnings,
        np.asarray(sorted(meters, key=lambda m: m[0]), dtype=np.int64).reshape(-1, 3),
    )  # fmt: skip


def _walk_track(
    data: bytes, chunk: int, size: int, track: int, columns: dict[str, list[int]],
    tempo_ticks: list[int], tempo_mspq: list[int], pedal_ticks: list[int], pedal_values: list[int],
    meters: list[tuple[int, int, int]],
) -> tuple[int, bool, list[MidiWarning]]:  # fmt: skip
    """Read the track chunk at byte `chunk` into the lists; returns where the next chunk starts,
    whether reading the file must stop there, and the warnings."""
    n = len(data)
    body = chunk + 8
    declared_end = body + size
    label = f"track {track + 1}"
    warnings: list[MidiWarning] = []
    starts, ends, pitches, velocities = columns["start_tick"], columns["end_tick"], columns["pitch"], columns["velocity"]
    channels, programs, offsets, tracks = columns["channel"], columns["program"], columns["offset"], columns["track"]
    sounding: dict[int, list[int]] = {}  # channel * 128 + pitch -> its sounding notes, oldest first
    program = [0] * 16
    p, tick, last_tick, running = body, 0, 0, 0
    end_of_track = False
    event = p
    try:
        while True:
            if p >= declared_end and (p == n or data.startswith(b"MTrk", p)):
                break  # the chunk ends here without an End of Track: accepted, as other readers do
            event = p
            delta = data[p]  # IndexError past the end of the file: truncated
            if delta < 0x80:  # most delta times are one byte: no call (a 200,000-note file has 600,000 events)
                p += 1
            else:
                delta, p = _varlen(data, p)
            tick += delta
            status = data[p]
            if status & 0x80:
                p += 1
            elif running:
                status = running
            else:
                raise _Stop(f"a data byte without a status byte at byte {p}")
            if status < 0xF0:
                kind, channel = status & 0xF0, status & 0x0F
                first = data[p]
                if kind in (0xC0, 0xD0):
                    if first & 0x80:
                        raise _Stop(f"a status byte where a data byte belongs at byte {p}")
                    p += 1
                    if kind == 0xC0:
                        program[channel] = first
                else:
                    second = data[p + 1]
                    if (first | second) & 0x80:
                        raise _Stop(f"a status byte where a data byte belongs at byte {p}")
                    p += 2
                    if kind == 0x90 and second:
                        sounding.setdefault(channel * 128 + first, []).append(len(starts))
                        starts.append(tick)
                        ends.append(-1)
                        pitches.append(first)
                        velocities.append(second)
                        channels.append(channel)
                        programs.append(program[channel])
                        offsets.append(p - 1)
                        tracks.append(track)
                    elif kind == 0x80 or kind == 0x90:
                        held = sounding.get(channel * 128 + first)
                        if held:  # the oldest sounding note of this key ends; a stray note-off is ignored
                            ends[held.pop(0)] = tick
                    elif kind == 0xB0 and first == SUSTAIN_CONTROL and channel != DRUM_CHANNEL:
                        pedal_ticks.append(tick)
                        pedal_values.append(second)
                running = status
            elif status == 0xFF or status in (0xF0, 0xF7):  # meta or system exclusive
                meta = -1
                if status == 0xFF:
                    meta = data[p]
                    p += 1
                else:
                    running = 0  # system exclusive cancels running status (meta events, as symusic and mido read them, do not)
                length, p = _varlen(data, p)
                if p + length > n:
                    raise IndexError
                if meta == 0x51 and length == 3:
                    tempo_ticks.append(tick)
                    tempo_mspq.append(int.from_bytes(data[p : p + 3], "big"))
                elif meta == 0x58 and length >= 2 and data[p] > 0 and data[p + 1] < 8:
                    meters.append((tick, data[p], 2 ** data[p + 1]))  # numerator, denominator as a power of 2
                p += length
                if meta == 0x2F:
                    end_of_track = True
            elif status in _SYSTEM_DATA_BYTES:
                p += _SYSTEM_DATA_BYTES[status]
                if p > n:
                    raise IndexError
                running = 0
            else:
                raise _Stop(f"an undefined status byte 0x{status:02X} at byte {p - 1}")
            last_tick = tick
            if end_of_track:
                break
    except IndexError:  # the file ends inside this event: keep what came before it
        warnings.append(MidiWarning(FILES_TRUNCATED, 1, f"the file ends inside {label} (an event cut off at byte {event}); the notes before it are kept"))
        _close_unreleased(sounding, ends, last_tick, label, warnings)
        return n, True, warnings
    except _Stop as stop:
        warnings.append(MidiWarning(FILES_BAD_EVENT, 1, f"{label}: {stop}; the rest of the track is ignored"))
        _close_unreleased(sounding, ends, last_tick, label, warnings)
        return (declared_end, False, warnings) if declared_end <= n else (n, True, warnings)

    _close_unreleased(sounding, ends, last_tick, label, warnings)
    next_chunk = declared_end
    if end_of_track and p != declared_end:
        if p > declared_end or data.startswith(b"MTrk", p) or declared_end > n:
            # The events end elsewhere than the chunk length says: trust the events.
            warnings.append(MidiWarning(FILES_BAD_CHUNK_LENGTH, 1, f"{label}: the chunk length says {size} bytes, its End of Track comes after {p - body}"))
            next_chunk = p
        # else: padding after End of Track inside the chunk, which the standard allows
    return next_chunk, False, warnings


def _close_unreleased(sounding: dict[int, list[int]], ends: list[int], last_tick: int, label: str, warnings: list[MidiWarning]) -> None:
    """End every note still sounding at the track's last event tick, with one warning."""
    unreleased = sorted(note for held in sounding.values() for note in held)
    for note in unreleased:
        ends[note] = last_tick
    if unreleased:
        warnings.append(MidiWarning(NOTES_CLOSED_AT_TRACK_END, len(unreleased), f"{label}: {len(unreleased)} note(s) never released, ended at the track's last event (tick {last_tick})"))
