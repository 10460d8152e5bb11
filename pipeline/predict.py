"""`velocity predict IN.mid -o OUT.mid`: give every piano note of a MIDI file the model's velocity.

All notes of all non-drum tracks form one piece, quantized exactly as the training data was (the
extract stage's note reading and `add_timing`, the bins, note features and vocabulary saved in the
model file), cut into the model's windows and decoded in batches (`--decoding`, default pianist:
distributions averaged over windows, then the dynamics stretched as calibrated; model/pieces.py). Only the velocity byte of those notes' note-on messages changes: the output is
the input's bytes with those bytes replaced, so note timing in ticks, the tempo map, pedals, other
tracks and controllers, meta and system-exclusive events and the drum channel stay exactly as they
were. Notes outside the piano's 21..108 keep their velocity. `--strength s` blends: new = round(s *
predicted + (1 - s) * original), half up, kept in 1..127.

Sustain: note ends are pedal-extended only when the model file records `{"extract": {"sustain":
true}}` (the training data was extracted that way); a model file without that key means off.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import symusic

    from model.pieces import VelocityModel

log = logging.getLogger(__name__)

# model.pieces.DEFAULT_DECODING (a test keeps them equal), named here so `--help` needs no torch: the
# distributions averaged over windows, stretched to a pianist's range (README, Results).
DEFAULT_DECODING = "pianist"
DEFAULT_MODEL = Path("models/velocity.pt")
DRUM_CHANNEL = 9  # channel 10 in 1-based numbering


class PredictError(Exception):
    """An input file that cannot be given new velocities; the message names the file."""


def _strength(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"strength must be between 0 and 1, got {text}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("input", type=Path, metavar="IN.mid", help="MIDI file to read")
    parser.add_argument("-o", "--output", type=Path, required=True, metavar="OUT.mid", help="MIDI file to write")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"trained model (default: {DEFAULT_MODEL})")
    parser.add_argument(
        "--strength", type=_strength, default=1.0, metavar="0..1",
        help="1: the model's velocities (default); 0: the original ones; in between: a blend",
    )  # fmt: skip
    parser.add_argument(
        "--decoding", choices=("pianist", "averaged", "notes-only", "median", "greedy"), default=DEFAULT_DECODING,
        help="pianist (default): the median of each note's velocity distribution averaged over every window "
        "holding it, stretched to a pianist's range of dynamics as calibrated on validation; averaged: the same "
        "unstretched (least absolute error, flatter); notes-only: the median from the window centred nearest "
        "the note; median: medians fed back note by note; greedy: the likeliest velocity fed back (the seed's)",
    )  # fmt: skip
    parser.add_argument("--batch-windows", type=int, default=256, help="windows decoded at once (default: 256)")


# ---------------------------------------------------------------------------------------------
# Reading: the notes as the extract stage sees them, each tied to its note-on message


@dataclass
class MidiPiece:
    """A MIDI file's bytes, its symusic parse (the extract stage's reading) and its notes."""

    path: Path
    data: bytes  # the file as read; the output is these bytes with new velocity bytes
    score: "symusic.Score"  # tick time
    notes: "pd.DataFrame"  # one row per non-drum note: pitch, start_tick, end_tick, velocity, offset


def read_midi(path: Path) -> MidiPiece:
    """Parse `path` and tie every non-drum note to its note-on's velocity byte; raises PredictError."""
    import symusic

    try:
        data = Path(path).read_bytes()
    except OSError as err:
        raise PredictError(f"{path}: cannot read file ({err.strerror or err})") from None
    try:
        score = symusic.Score.from_midi(data, ttype="tick")
    except Exception as err:  # symusic raises several types for truncated or foreign files
        raise PredictError(f"{path}: not a readable MIDI file ({err.__class__.__name__}: {err})") from None
    if score.ticks_per_quarter <= 0:
        raise PredictError(f"{path}: SMPTE time division is not supported")
    note_ons = scan_note_ons(data, path)
    return MidiPiece(Path(path), data, score, _tie_notes(path, score, note_ons))


# Data bytes after a channel status byte, by its high nibble (program change, channel pressure: 1).
_CHANNEL_DATA_BYTES = {0x80: 2, 0x90: 2, 0xA0: 2, 0xB0: 2, 0xC0: 1, 0xD0: 1, 0xE0: 2}
# System common messages that may (rarely) appear in a file, and their data bytes.
_SYSTEM_DATA_BYTES = {0xF1: 1, 0xF2: 2, 0xF3: 1, 0xF6: 0, 0xF8: 0, 0xFA: 0, 0xFB: 0, 0xFC: 0, 0xFE: 0}


def scan_note_ons(data: bytes, path: Path | str = "<bytes>") -> dict[tuple[int, int, int], list[int]]:
    """Byte offset of the velocity of every sounding note-on (velocity > 0, not on the drum
    channel), keyed by (absolute tick, pitch, velocity), in file order within a key.

    Walks the Standard MIDI File's track chunks event by event (delta times, running status, meta
    and system-exclusive events) without decoding anything else, so rewriting those bytes changes
    nothing but the velocities. Raises PredictError on a malformed file.
    """

    def bad(why: str) -> PredictError:
        return PredictError(f"{path}: not a readable MIDI file ({why})")

    def read_varlen(pos: int, end: int) -> tuple[int, int]:
        """A MIDI variable-length number at `pos`: its value and the position after it."""
        value = 0
        while True:
            if pos >= end:
                raise bad("event cut off at the end of a track")
            byte = data[pos]
            pos += 1
            value = (value << 7) | (byte & 0x7F)
            if byte < 0x80:
                return value, pos

    if data[:4] != b"MThd" or len(data) < 14:
        raise bad("no MThd header")
    n_tracks = int.from_bytes(data[10:12], "big")
    pos = 8 + int.from_bytes(data[4:8], "big")
    found: dict[tuple[int, int, int], list[int]] = {}
    tracks_seen = 0
    while tracks_seen < n_tracks and pos + 8 <= len(data):
        chunk, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "big")
        pos, end = pos + 8, min(pos + 8 + size, len(data))
        if chunk != b"MTrk":  # an unknown chunk: the standard says skip it
            pos = end
            continue
        tracks_seen += 1
        tick, running = 0, 0  # running: the last channel status, reused by events that omit theirs
        while pos < end:
            delta, pos = read_varlen(pos, end)
            tick += delta
            if pos >= end:
                raise bad("event cut off at the end of a track")
            if data[pos] & 0x80:
                status = data[pos]
                pos += 1
            elif running:
                status = running
            else:
                raise bad(f"data byte without a status byte at offset {pos}")
            if status == 0xFF or status in (0xF0, 0xF7):  # meta or system exclusive: skip its bytes
                if status == 0xFF:
                    pos += 1  # meta type
                else:
                    running = 0  # system exclusive cancels running status (meta events, as read by symusic and mido, do not)
                length, pos = read_varlen(pos, end)
                pos += length
                if pos > end:
                    raise bad("event cut off at the end of a track")
                continue
            if status >= 0xF0:
                if status not in _SYSTEM_DATA_BYTES:
                    raise bad(f"undefined status byte 0x{status:02X} at offset {pos - 1}")
                pos += _SYSTEM_DATA_BYTES[status]
                running = 0
                continue
            running = status
            n_data = _CHANNEL_DATA_BYTES[status & 0xF0]
            if pos + n_data > end:
                raise bad("event cut off at the end of a track")
            if status & 0xF0 == 0x90 and data[pos + 1] > 0 and status & 0x0F != DRUM_CHANNEL:
                found.setdefault((tick, data[pos], data[pos + 1]), []).append(pos + 1)
            pos += n_data
        pos = end
    if tracks_seen < n_tracks:
        raise bad(f"the header announces {n_tracks} tracks, the file holds {tracks_seen}")
    return found


def _tie_notes(path: Path, score: "symusic.Score", note_ons: dict[tuple[int, int, int], list[int]]) -> "pd.DataFrame":
    """symusic's non-drum notes, each with the byte offset of its note-on's velocity.

    A note and its note-on share start tick, pitch and velocity; identical triples (a note doubled
    on another channel or track) are tied in file order: they are the same input to the model.
    """
    import numpy as np
    import pandas as pd

    columns = ("pitch", "start_tick", "end_tick", "velocity", "offset")
    parts = [track.notes.numpy() for track in score.tracks if not track.is_drum]
    if sum(len(p["time"]) for p in parts) == 0:
        return pd.DataFrame({c: np.zeros(0, dtype=np.int64) for c in columns})
    start = np.concatenate([p["time"] for p in parts]).astype(np.int64)
    end = start + np.concatenate([p["duration"] for p in parts]).astype(np.int64)
    pitch = np.concatenate([p["pitch"] for p in parts]).astype(np.int64)  # symusic gives int8
    velocity = np.concatenate([p["velocity"] for p in parts]).astype(np.int64)
    offset = np.empty(len(start), dtype=np.int64)
    taken: dict[tuple[int, int, int], int] = {}
    for i, key in enumerate(zip(start.tolist(), pitch.tolist(), velocity.tolist())):
        candidates = note_ons.get(key, [])
        k = taken.get(key, 0)
        if k >= len(candidates):
            raise PredictError(f"{path}: note {key[1]} at tick {key[0]} has no note-on of velocity {key[2]} in the file's bytes")
        offset[i] = candidates[k]
        taken[key] = k + 1
    return pd.DataFrame(dict(zip(columns, (pitch, start, end, velocity, offset))))


def piece_notes(piece: MidiPiece, sustain: bool = False) -> "pd.DataFrame":
    """The piano-range notes as the extract stage writes them (pitch, start, end, duration, dstart,
    velocity, in its order), plus `note`: the row of each in `piece.notes`."""
    import numpy as np
    import pandas as pd

    from stages.extract import add_timing, apply_sustain, pedal_down_at, sustain_pedal, ticks_to_seconds
    from model.codec import PIANO_PITCHES

    notes = piece.notes
    start, end = notes["start_tick"].to_numpy(), notes["end_tick"].to_numpy()
    pitch, velocity = notes["pitch"].to_numpy(), notes["velocity"].to_numpy()
    keep = np.ones(len(notes), dtype=bool)
    pedal_ticks, pedal_values = sustain_pedal([t for t in piece.score.tracks if not t.is_drum])
    pedal = pedal_down_at(start, pedal_ticks, pedal_values)
    if sustain:  # pedal-extended note ends, as `extract.sustain: true` made them for training
        end, keep = apply_sustain(start, end, pitch, pedal_ticks, pedal_values)
    keep &= (pitch >= PIANO_PITCHES.start) & (pitch < PIANO_PITCHES.stop)
    rows = np.flatnonzero(keep)
    # The extract stage's order: by ticks with every column as a key, then add_timing's stable sort.
    rows = rows[np.lexsort((velocity[rows], end[rows], pitch[rows], start[rows]))]
    seconds = ticks_to_seconds(piece.score, np.concatenate([start[rows], end[rows]]))
    return add_timing(pd.DataFrame({
        "pitch": pitch[rows], "start": seconds[: len(rows)], "end": seconds[len(rows):],
        "velocity": velocity[rows], "pedal": pedal[rows], "note": rows,
    }))  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Predicting and writing


@dataclass
class PredictReport:
    notes: int  # non-drum notes in the file
    predicted: int  # notes that got the model's velocity
    kept: int  # notes that kept theirs (outside 21..108, or dropped by the sustain rule)
    mean_abs_change: float  # mean |new - original| over the predicted notes
    seconds: float  # reading, predicting and writing


def blend(predicted: "np.ndarray", original: "np.ndarray", strength: float) -> "np.ndarray":
    """round(s * predicted + (1 - s) * original), kept in 1..127 (a note-on of 0 is a note-off)."""
    import numpy as np

    mixed = strength * np.asarray(predicted, dtype=np.float64) + (1.0 - strength) * np.asarray(original, dtype=np.float64)
    return np.clip(np.floor(mixed + 0.5), 1, 127).astype(np.int64)  # round half up


def new_velocities(
    piece: MidiPiece, model: "VelocityModel", strength: float, batch_windows: int = 256, decoding: str = DEFAULT_DECODING
) -> tuple["np.ndarray", int]:
    """The new velocity of every row of `piece.notes`, and how many got a prediction."""
    from model.pieces import predict_notes

    sustain = bool(model.checkpoint.get("extract", {}).get("sustain", False))
    notes = piece_notes(piece, sustain=sustain)
    velocity = piece.notes["velocity"].to_numpy().copy()
    if len(notes) == 0:
        return velocity, 0
    predicted = predict_notes(model, notes, batch_windows=batch_windows, decoding=decoding)
    rows = notes["note"].to_numpy()
    velocity[rows] = blend(predicted, velocity[rows], strength)
    return velocity, len(rows)


def write_midi(piece: MidiPiece, velocity: "np.ndarray", out_path: Path) -> None:
    """`piece`'s bytes with the notes' velocity bytes replaced, written atomically."""
    from stages.io import atomic_path

    data = bytearray(piece.data)
    for offset, v in zip(piece.notes["offset"].tolist(), velocity.tolist()):
        data[offset] = v
    with atomic_path(out_path) as tmp:
        tmp.write_bytes(bytes(data))


def predict_file(
    in_path: Path, out_path: Path, model: "VelocityModel", strength: float = 1.0, batch_windows: int = 256, decoding: str = DEFAULT_DECODING
) -> PredictReport:
    """Read `in_path`, predict, write `out_path`; raises PredictError (nothing written) on bad input."""
    import numpy as np

    began = time.perf_counter()
    piece = read_midi(in_path)
    if len(piece.notes) == 0:
        raise PredictError(f"{in_path}: no notes to give velocities to (only drums, or none at all)")
    velocity, n_predicted = new_velocities(piece, model, strength, batch_windows, decoding)
    n_kept = len(piece.notes) - n_predicted
    if n_predicted == 0:
        raise PredictError(f"{in_path}: none of its {len(piece.notes)} notes lies in the piano range 21..108")
    if n_kept:
        log.info("%s: %d of %d notes lie outside the piano range 21..108 (or were merged by the sustain rule) and keep their velocity",
                 in_path, n_kept, len(piece.notes))
    original = piece.notes["velocity"].to_numpy()
    write_midi(piece, velocity, out_path)
    changed = np.abs(velocity - original)
    return PredictReport(
        notes=len(piece.notes), predicted=n_predicted, kept=n_kept,
        mean_abs_change=float(changed.sum() / n_predicted), seconds=time.perf_counter() - began,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from model.checkpoint import CheckpointError
    from model.pieces import load_velocity_model

    if args.batch_windows < 1:
        log.error("--batch-windows must be positive, got %d", args.batch_windows)
        return 2
    try:
        model = load_velocity_model(args.model)
    except CheckpointError as err:
        log.error("%s", err)
        return 1
    try:
        report = predict_file(args.input, args.output, model, args.strength, args.batch_windows, args.decoding)
    except (PredictError, CheckpointError) as err:
        log.error("%s", err)
        return 1
    except OSError as err:  # the output cannot be written (no such folder, read-only, ...)
        log.error("%s: cannot write output (%s)", args.output, err.strerror or err)
        return 1
    log.info(
        "wrote %s: %d notes given the model's velocities at strength %g (mean change %.1f), %d kept theirs, in %.2f s",
        args.output, report.predicted, args.strength, report.mean_abs_change, report.kept, report.seconds,
    )
    return 0
