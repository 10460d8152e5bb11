"""The Performance RNN event codec (Oore et al. 2018): notes <-> a sequence of 413 event ids.

Vocabulary, index = event id:

| ids | event | meaning |
| --- | --- | --- |
| 0..127 | NOTE_ON p | pitch p starts, at the current velocity |
| 128..255 | NOTE_OFF p | pitch p stops |
| 256..380 | TIME_SHIFT k | time moves forward by k * 8 ms, k = 1..125 (up to 1 s) |
| 381..412 | VELOCITY b | later NOTE_ONs get the velocity of bin b (32 bins of 4 velocities over 1..127) |

The paper feeds the network a one-hot 413-vector per step; `velocity.model.performance_rnn` does exactly
that. (A learned embedding lookup would be the same computation: one_hot(e) @ W^T is column e of W.)

Encoding is deterministic. Times are rounded to the 8 ms grid as absolute times, never as deltas,
so the error stays under 4 ms however long the piece (no drift). Within one grid step, NOTE_OFFs
come first (by pitch), then NOTE_ONs (by pitch), each NOTE_ON preceded by a VELOCITY event only
when its velocity bin differs from the previous NOTE_ON's. Gaps longer than 1 s become several
TIME_SHIFTs. Time 0 is the start of the piece, so leading silence is encoded too.

Sustain pedal: the codec sees notes only. The notes parquet already holds the pedal-extended note
ends when `extract.sustain` is on (the `extract` stage applies the pedal), so the events follow
whatever that param chose.

Decoding accepts any sequence, sampled ones included, and always returns valid notes (pitch
0..127, velocity 1..127, end > start): a NOTE_OFF of a silent pitch is ignored; a NOTE_ON of a
sounding pitch ends the sounding note there (a re-strike); notes still sounding at the end of the
sequence end there; a note that would last zero time is dropped.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

N_PITCHES = 128
N_TIME_SHIFTS = 125
N_VELOCITY_BINS = 32
STEPS_PER_SECOND = 125  # one grid step = 8 ms
STEP_SECONDS = 1.0 / STEPS_PER_SECOND

NOTE_ON_OFFSET = 0
NOTE_OFF_OFFSET = NOTE_ON_OFFSET + N_PITCHES  # 128
TIME_SHIFT_OFFSET = NOTE_OFF_OFFSET + N_PITCHES  # 256
VELOCITY_OFFSET = TIME_SHIFT_OFFSET + N_TIME_SHIFTS  # 381
VOCAB_SIZE = VELOCITY_OFFSET + N_VELOCITY_BINS  # 413

VELOCITY_BIN_WIDTH = 4  # ceil(127 / 32): bin b holds velocities 4b+1 .. 4b+4 (the last bin 125..127)
DEFAULT_VELOCITY = 64  # what NOTE_ONs get before any VELOCITY event
WINDOW_PAD = -1  # not an event: fills a training window past the end of a piece (never a target)

ENCODED_COLUMNS = ["pitch", "start", "end", "velocity"]  # the note columns the codec reads


class EventCodecError(ValueError):
    """Notes that cannot be encoded (pitch out of range, negative or missing times, end < start)."""


def note_on(pitch: int) -> int:
    return NOTE_ON_OFFSET + int(pitch)


def note_off(pitch: int) -> int:
    return NOTE_OFF_OFFSET + int(pitch)


def time_shift(steps: int) -> int:
    """Event id of a shift by `steps` grid steps (1..125)."""
    if not 1 <= steps <= N_TIME_SHIFTS:
        raise ValueError(f"a time shift is 1..{N_TIME_SHIFTS} steps, got {steps}")
    return TIME_SHIFT_OFFSET + int(steps) - 1


def velocity_event(velocity_bin: int) -> int:
    return VELOCITY_OFFSET + int(velocity_bin)


def velocity_to_bin(velocity: np.ndarray | int) -> np.ndarray:
    """Bin 0..31 of each MIDI velocity; velocities outside 1..127 go to the nearest end bin."""
    clipped = np.clip(np.asarray(velocity, dtype=np.int64), 1, 127)
    return (clipped - 1) // VELOCITY_BIN_WIDTH


def bin_to_velocity(velocity_bin: np.ndarray | int) -> np.ndarray:
    """The middle velocity of each bin (rounded down), so decoding lands inside the original bin."""
    low = np.asarray(velocity_bin, dtype=np.int64) * VELOCITY_BIN_WIDTH + 1
    high = np.minimum(low + VELOCITY_BIN_WIDTH - 1, 127)
    return (low + high) // 2


def event_name(event: int) -> str:
    """Readable name of one event id, e.g. NOTE_ON_60, TIME_SHIFT_125, VELOCITY_15."""
    event = int(event)
    if NOTE_ON_OFFSET <= event < NOTE_OFF_OFFSET:
        return f"NOTE_ON_{event - NOTE_ON_OFFSET}"
    if NOTE_OFF_OFFSET <= event < TIME_SHIFT_OFFSET:
        return f"NOTE_OFF_{event - NOTE_OFF_OFFSET}"
    if TIME_SHIFT_OFFSET <= event < VELOCITY_OFFSET:
        return f"TIME_SHIFT_{event - TIME_SHIFT_OFFSET + 1}"
    if VELOCITY_OFFSET <= event < VOCAB_SIZE:
        return f"VELOCITY_{event - VELOCITY_OFFSET}"
    raise ValueError(f"event id {event} is outside 0..{VOCAB_SIZE - 1}")


def vocabulary() -> list[str]:
    """All 413 event names; index = event id."""
    return [event_name(i) for i in range(VOCAB_SIZE)]


def shift_steps(events: np.ndarray) -> np.ndarray:
    """Grid steps each event moves time forward by (0 for everything but TIME_SHIFT)."""
    events = np.asarray(events, dtype=np.int64)
    is_shift = (events >= TIME_SHIFT_OFFSET) & (events < VELOCITY_OFFSET)
    return np.where(is_shift, events - TIME_SHIFT_OFFSET + 1, 0)


def _check_notes(pitch: np.ndarray, start: np.ndarray, end: np.ndarray, source: str) -> None:
    if not (len(pitch) == len(start) == len(end)):
        raise EventCodecError(f"{source}: pitch, start and end have different lengths")
    if len(pitch) == 0:
        return
    if pitch.min() < 0 or pitch.max() >= N_PITCHES:
        raise EventCodecError(f"{source}: pitch outside 0..127 ({pitch.min()}..{pitch.max()})")
    if not (np.isfinite(start).all() and np.isfinite(end).all()):
        raise EventCodecError(f"{source}: a note start or end is not a finite number")
    if start.min() < 0:
        raise EventCodecError(f"{source}: a note starts before time 0 ({start.min():.6f} s)")
    if (end < start).any():
        raise EventCodecError(f"{source}: {(end < start).sum()} notes end before they start")


def quantize_notes(
    pitch: Sequence[int] | np.ndarray,
    start: Sequence[float] | np.ndarray,
    end: Sequence[float] | np.ndarray,
    velocity: Sequence[int] | np.ndarray,
    *,
    source: str = "notes",
) -> pd.DataFrame:
    """Notes on the 8 ms grid, as the codec represents them: what `decode(encode(...))` returns.

    Columns pitch, on_step, off_step, velocity_bin, sorted by (on_step, pitch). Starts and ends are
    rounded as absolute times. A note shorter than one step after rounding becomes one step long,
    starting at its start rounded down (so both ends stay within 8 ms). A note that is re-struck
    while still sounding ends where the re-strike starts; of several notes of one pitch starting at
    the same step only the longest is kept (a piano key sounds once at a time).
    """
    pitch = np.asarray(pitch, dtype=np.int64)
    start = np.asarray(start, dtype=np.float64)
    end = np.asarray(end, dtype=np.float64)
    velocity = np.asarray(velocity, dtype=np.int64)
    _check_notes(pitch, start, end, source)
    on = np.rint(start * STEPS_PER_SECOND).astype(np.int64)
    off = np.rint(end * STEPS_PER_SECOND).astype(np.int64)
    too_short = off <= on
    on = np.where(too_short, np.floor(start * STEPS_PER_SECOND).astype(np.int64), on)
    off = np.where(too_short, on + 1, off)

    # Per pitch, in time order: cut each note at the next onset of the same pitch.
    order = np.lexsort((off, on, pitch))
    pitch, on, off, velocity = pitch[order], on[order], off[order], velocity[order]
    same_pitch_next = pitch[1:] == pitch[:-1]
    off[:-1] = np.where(same_pitch_next, np.minimum(off[:-1], on[1:]), off[:-1])
    keep = off > on  # zero after the cut: another note of this pitch starts at the same step
    notes = pd.DataFrame(
        {
            "pitch": pitch[keep],
            "on_step": on[keep],
            "off_step": off[keep],
            "velocity_bin": velocity_to_bin(velocity[keep]),
        }
    )
    return notes.sort_values(["on_step", "pitch"], kind="stable", ignore_index=True)


def encode(
    pitch: Sequence[int] | np.ndarray,
    start: Sequence[float] | np.ndarray,
    end: Sequence[float] | np.ndarray,
    velocity: Sequence[int] | np.ndarray,
    *,
    source: str = "notes",
) -> np.ndarray:
    """Event ids (int16) of one performance; times in seconds from the start of the piece."""
    notes = quantize_notes(pitch, start, end, velocity, source=source)
    n = len(notes)
    if n == 0:
        return np.zeros(0, dtype=np.int16)
    note_pitch = notes["pitch"].to_numpy()
    # One row per NOTE_ON / NOTE_OFF, ordered by (time, offs before ons, pitch).
    time = np.concatenate([notes["off_step"].to_numpy(), notes["on_step"].to_numpy()])
    is_on = np.concatenate([np.zeros(n, dtype=np.int64), np.ones(n, dtype=np.int64)])
    ev_pitch = np.concatenate([note_pitch, note_pitch])
    ev_bin = np.concatenate([np.full(n, -1), notes["velocity_bin"].to_numpy()])
    order = np.lexsort((ev_pitch, is_on, time))
    time, is_on, ev_pitch, ev_bin = time[order], is_on[order], ev_pitch[order], ev_bin[order]

    # TIME_SHIFTs before each row: the gap since the previous row, in chunks of at most 125 steps.
    gap = np.diff(time, prepend=0)
    n_shifts = -(-gap // N_TIME_SHIFTS)  # ceil
    # A VELOCITY event before a NOTE_ON whose bin differs from the previous NOTE_ON's.
    on_bins = ev_bin[is_on == 1]
    bin_changes = np.ones(len(on_bins), dtype=bool)
    bin_changes[1:] = on_bins[1:] != on_bins[:-1]
    needs_velocity = np.zeros(len(time), dtype=bool)
    needs_velocity[is_on == 1] = bin_changes

    per_row = n_shifts + needs_velocity + 1
    row_end = np.cumsum(per_row)
    events = np.empty(row_end[-1], dtype=np.int64)
    row_first = row_end - per_row
    # Shifts: each row's gap is `full` shifts of 125 then one remainder shift (if any).
    shift_row = np.repeat(np.arange(len(time)), n_shifts)
    shift_rank = np.arange(len(shift_row)) - np.repeat(np.cumsum(n_shifts) - n_shifts, n_shifts)
    last_of_row = shift_rank == n_shifts[shift_row] - 1
    remainder = gap[shift_row] - (n_shifts[shift_row] - 1) * N_TIME_SHIFTS
    shift_size = np.where(last_of_row, remainder, N_TIME_SHIFTS)
    events[row_first[shift_row] + shift_rank] = TIME_SHIFT_OFFSET + shift_size - 1
    velocity_rows = np.flatnonzero(needs_velocity)
    events[row_first[velocity_rows] + n_shifts[velocity_rows]] = VELOCITY_OFFSET + ev_bin[velocity_rows]
    events[row_end - 1] = np.where(is_on == 1, NOTE_ON_OFFSET, NOTE_OFF_OFFSET) + ev_pitch
    return events.astype(np.int16)


def encode_frame(notes: pd.DataFrame, *, source: str = "notes") -> np.ndarray:
    """`encode` for a frame with columns pitch, start, end, velocity (the notes parquet schema)."""
    missing = [c for c in ENCODED_COLUMNS if c not in notes.columns]
    if missing:
        raise EventCodecError(f"{source}: missing column(s) {', '.join(missing)}")
    return encode(
        notes["pitch"].to_numpy(),
        notes["start"].to_numpy(),
        notes["end"].to_numpy(),
        notes["velocity"].to_numpy(),
        source=source,
    )


def decode_steps(events: Iterable[int]) -> pd.DataFrame:
    """Notes on the grid (pitch, on_step, off_step, velocity_bin) from any sequence of event ids.

    Ids outside 0..412 are skipped. See the module docstring for how imperfect sequences are read.
    """
    now = 0
    velocity_bin = int(velocity_to_bin(DEFAULT_VELOCITY))
    sounding: dict[int, tuple[int, int]] = {}  # pitch -> (on_step, velocity_bin)
    rows: list[tuple[int, int, int, int]] = []

    def stop(pitch: int) -> None:
        on_step, bin_ = sounding.pop(pitch)
        if now > on_step:  # a zero-length note is dropped
            rows.append((pitch, on_step, now, bin_))

    for event in events:
        event = int(event)
        if NOTE_ON_OFFSET <= event < NOTE_OFF_OFFSET:
            pitch = event - NOTE_ON_OFFSET
            if pitch in sounding:  # re-strike of a sounding key
                stop(pitch)
            sounding[pitch] = (now, velocity_bin)
        elif NOTE_OFF_OFFSET <= event < TIME_SHIFT_OFFSET:
            pitch = event - NOTE_OFF_OFFSET
            if pitch in sounding:  # NOTE_OFF of a silent key: nothing to stop
                stop(pitch)
        elif TIME_SHIFT_OFFSET <= event < VELOCITY_OFFSET:
            now += event - TIME_SHIFT_OFFSET + 1
        elif VELOCITY_OFFSET <= event < VOCAB_SIZE:
            velocity_bin = event - VELOCITY_OFFSET
    for pitch in sorted(sounding):  # hanging notes end with the sequence
        stop(pitch)
    frame = pd.DataFrame(rows, columns=["pitch", "on_step", "off_step", "velocity_bin"], dtype=np.int64)
    return frame.sort_values(["on_step", "pitch"], kind="stable", ignore_index=True)


def decode(events: Iterable[int]) -> pd.DataFrame:
    """Valid notes from any sequence of event ids: pitch, start, end (seconds), velocity (1..127).

    Sorted by start, then pitch; velocity is the middle of the bin the last VELOCITY event chose.
    """
    steps = decode_steps(events)
    return pd.DataFrame(
        {
            "pitch": steps["pitch"].to_numpy(np.int16),
            "start": steps["on_step"].to_numpy(np.float64) / STEPS_PER_SECOND,
            "end": steps["off_step"].to_numpy(np.float64) / STEPS_PER_SECOND,
            "velocity": bin_to_velocity(steps["velocity_bin"].to_numpy()).astype(np.int16),
        }
    )


def duration_seconds(events: Sequence[int] | np.ndarray) -> float:
    """Length of a sequence in seconds: the sum of its TIME_SHIFTs."""
    return float(shift_steps(np.asarray(events)).sum()) / STEPS_PER_SECOND
