"""The Performance RNN event codec: vocabulary, round trips on real MAESTRO files, garbage decoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pretty_midi
import pytest

from velocity.model import events as ev
from velocity.model.events import (
    EventCodecError,
    bin_to_velocity,
    decode,
    decode_steps,
    encode,
    event_name,
    quantize_notes,
    velocity_to_bin,
)

STEP = 0.008
EPS = 1e-9


def names(ids) -> list[str]:
    return [event_name(i) for i in ids]


def test_vocabulary_is_the_papers_413_events():
    vocab = ev.vocabulary()
    assert ev.VOCAB_SIZE == len(vocab) == 413 == 128 + 128 + 125 + 32
    assert len(set(vocab)) == 413
    assert vocab[0] == "NOTE_ON_0" and vocab[127] == "NOTE_ON_127"
    assert vocab[128] == "NOTE_OFF_0" and vocab[255] == "NOTE_OFF_127"
    assert vocab[256] == "TIME_SHIFT_1" and vocab[380] == "TIME_SHIFT_125"  # 8 ms .. 1 s
    assert vocab[381] == "VELOCITY_0" and vocab[412] == "VELOCITY_31"
    with pytest.raises(ValueError):
        event_name(413)


def test_velocity_bins_cover_1_to_127_in_32_bins_and_decode_inside_their_bin():
    velocities = np.arange(1, 128)
    bins = velocity_to_bin(velocities)
    assert bins.min() == 0 and bins.max() == 31 and len(np.unique(bins)) == 32
    assert np.all(np.diff(bins) >= 0)
    back = bin_to_velocity(bins)
    assert np.array_equal(velocity_to_bin(back), bins)
    assert back.min() >= 1 and back.max() <= 127


def read_midi_notes(path: Path) -> pd.DataFrame:
    midi = pretty_midi.PrettyMIDI(str(path))
    rows = [(n.pitch, n.start, n.end, n.velocity) for inst in midi.instruments for n in inst.notes]
    return pd.DataFrame(rows, columns=["pitch", "start", "end", "velocity"])


@pytest.fixture(scope="module")
def tiny_midi_files(tiny_raw: Path) -> list[Path]:
    files = sorted(tiny_raw.rglob("*.midi"))
    assert len(files) == 10
    return files


def test_round_trip_on_real_files_keeps_every_note_within_8ms_and_its_velocity_bin(tiny_midi_files):
    for path in tiny_midi_files:
        original = read_midi_notes(path)
        events = encode(original["pitch"], original["start"], original["end"], original["velocity"], source=str(path))
        assert events.dtype == np.int16
        assert events.min() >= 0 and events.max() < ev.VOCAB_SIZE
        decoded = decode(events)
        assert len(decoded) == len(original), path.name
        # Same pitch never reorders under rounding, so sorting by (pitch, time) pairs the notes up.
        a = original.sort_values(["pitch", "start", "end"], ignore_index=True)
        b = decoded.sort_values(["pitch", "start", "end"], ignore_index=True)
        assert np.array_equal(a["pitch"], b["pitch"])
        assert np.abs(a["start"] - b["start"]).max() <= STEP + EPS, path.name
        assert np.abs(a["end"] - b["end"]).max() <= STEP + EPS, path.name
        assert np.array_equal(velocity_to_bin(a["velocity"]), velocity_to_bin(b["velocity"]))
        # Almost every note is plainly rounded: within half a step.
        assert (np.abs(a["start"] - b["start"]) <= STEP / 2 + EPS).mean() > 0.99
        assert (b["end"] > b["start"]).all()


def test_decode_of_encode_is_exactly_the_quantized_notes(tiny_midi_files):
    notes = read_midi_notes(tiny_midi_files[0])
    args = (notes["pitch"], notes["start"], notes["end"], notes["velocity"])
    expected = quantize_notes(*args)
    got = decode_steps(encode(*args))
    pd.testing.assert_frame_equal(got.reset_index(drop=True), expected.reset_index(drop=True), check_dtype=False)


def test_quantization_does_not_drift_over_a_long_piece():
    # 20,000 notes 10.3 ms apart (not a multiple of 8 ms): rounding deltas would drift by
    # seconds over the 206 s; rounding absolute times keeps every onset within half a step.
    n = 20_000
    start = np.arange(n) * 0.0103
    notes = decode(encode(np.full(n, 60) + np.arange(n) % 12, start, start + 0.05, np.full(n, 64)))
    assert len(notes) == n
    assert np.abs(notes.sort_values("start")["start"].to_numpy() - start).max() <= STEP / 2 + EPS


def test_long_gap_is_split_into_shifts_of_at_most_one_second():
    events = encode([60, 62], [0.0, 2.6], [0.104, 2.704], [64, 64])
    assert names(events) == [
        "VELOCITY_15", "NOTE_ON_60",
        "TIME_SHIFT_13", "NOTE_OFF_60",
        "TIME_SHIFT_125", "TIME_SHIFT_125", "TIME_SHIFT_62", "NOTE_ON_62",  # 2.496 s = 312 steps = 2 x 125 + 62
        "TIME_SHIFT_13", "NOTE_OFF_62",
    ]  # fmt: skip
    assert np.allclose(decode(events)["start"], [0.0, 2.6], atol=STEP / 2)


def test_velocity_event_only_when_the_bin_changes():
    # Velocities 61..64 share bin 15; 100 is bin 24.
    events = encode([60, 62, 64, 65, 67], [0, 0.1, 0.2, 0.3, 0.4], [0.05, 0.15, 0.25, 0.35, 0.45], [61, 64, 62, 100, 63])
    velocity_events = [n for n in names(events) if n.startswith("VELOCITY")]
    assert velocity_events == ["VELOCITY_15", "VELOCITY_24", "VELOCITY_15"]


def test_simultaneous_events_have_one_order_whatever_the_input_order():
    pitch = np.array([67, 60, 64, 72, 60])
    start = np.array([0.0, 0.0, 0.0, 0.5, 0.5])
    end = np.array([0.5, 0.5, 0.5, 1.0, 1.0])
    velocity = np.array([90, 50, 70, 50, 50])
    reference = encode(pitch, start, end, velocity)
    rng = np.random.default_rng(0)
    for _ in range(20):
        order = rng.permutation(len(pitch))
        assert np.array_equal(encode(pitch[order], start[order], end[order], velocity[order]), reference)
    # At 0.5 s: note-offs first (by pitch), then note-ons (by pitch), velocity only before its change.
    assert names(reference)[6:] == [
        "TIME_SHIFT_62", "NOTE_OFF_60", "NOTE_OFF_64", "NOTE_OFF_67",
        "VELOCITY_12", "NOTE_ON_60", "NOTE_ON_72",
        "TIME_SHIFT_63", "NOTE_OFF_60", "NOTE_OFF_72",
    ]  # fmt: skip


def test_restruck_key_ends_the_sounding_note():
    notes = decode(encode([60, 60], [0.0, 0.52], [1.0, 1.52], [64, 100]))
    assert notes[["start", "end"]].to_numpy().tolist() == [[0.0, 0.52], [0.52, 1.52]]
    assert velocity_to_bin(notes["velocity"]).tolist() == [15, 24]


def test_zero_length_note_becomes_one_step_within_8ms():
    notes = decode(encode([60], [1.0013], [1.0013], [64]))
    assert len(notes) == 1
    assert abs(notes["start"].iloc[0] - 1.0013) <= STEP and abs(notes["end"].iloc[0] - 1.0013) <= STEP
    assert notes["end"].iloc[0] - notes["start"].iloc[0] == pytest.approx(STEP)


def test_empty_input_gives_empty_output():
    assert len(encode([], [], [], [])) == 0
    notes = decode([])
    assert list(notes.columns) == ["pitch", "start", "end", "velocity"] and len(notes) == 0


@pytest.mark.parametrize(
    ("pitch", "start", "end", "problem"),
    [
        ([128], [0.0], [1.0], "pitch outside 0..127"),
        ([60], [-0.5], [1.0], "before time 0"),
        ([60], [1.0], [0.5], "end before they start"),
        ([60], [float("nan")], [1.0], "not a finite number"),
    ],
)
def test_bad_notes_raise_naming_the_source(pitch, start, end, problem):
    with pytest.raises(EventCodecError, match=f"piece.mid: .*{problem}"):
        encode(pitch, start, end, [64], source="piece.mid")


def assert_valid(notes: pd.DataFrame) -> None:
    assert list(notes.columns) == ["pitch", "start", "end", "velocity"]
    assert (notes["end"] > notes["start"]).all()
    assert (notes["start"] >= 0).all()
    assert notes["pitch"].between(0, 127).all()
    assert notes["velocity"].between(1, 127).all()
    # A key sounds once at a time: notes of one pitch never overlap.
    for _, same in notes.groupby("pitch"):
        same = same.sort_values("start")
        assert (same["start"].to_numpy()[1:] >= same["end"].to_numpy()[:-1]).all()


def test_decoding_garbage_never_crashes_and_gives_valid_notes():
    rng = np.random.default_rng(1234)
    n_notes = 0
    for trial in range(300):
        length = int(rng.integers(0, 400))
        kind = trial % 4
        if kind == 0:  # anything, out-of-range ids included
            seq = rng.integers(-20, ev.VOCAB_SIZE + 20, length)
        elif kind == 1:  # note-ons and note-offs of few keys with rare time shifts: re-strikes, orphans
            seq = rng.choice(np.r_[np.arange(58, 62), np.arange(186, 190), [256, 300]], length)
        elif kind == 2:  # no time at all: every note would be zero-length
            seq = rng.integers(0, 256, length)
        else:  # a plausible stream with its note-offs shuffled away
            seq = encode(rng.integers(21, 109, 50), np.sort(rng.uniform(0, 5, 50)), np.sort(rng.uniform(5, 6, 50)), rng.integers(1, 128, 50))
            seq = np.delete(seq, rng.choice(len(seq), len(seq) // 4, replace=False))
        notes = decode(seq.tolist())
        assert_valid(notes)
        n_notes += len(notes)
    assert n_notes > 1000  # the loops did produce notes to check


def test_decoding_a_sampled_style_sequence_handles_each_imperfection():
    seq = [
        ev.note_off(50),  # note-off of a silent key: ignored
        ev.velocity_event(31), ev.note_on(60), ev.time_shift(10),
        ev.note_on(60),  # re-strike: the first note ends here
        ev.time_shift(5), ev.note_on(61), ev.note_off(61),  # zero length: dropped
        ev.note_on(62),  # hanging: ends with the sequence
        ev.time_shift(20),
    ]  # fmt: skip
    notes = decode(seq)
    assert notes.to_dict("list") == {
        "pitch": [60, 60, 62],
        "start": [0.0, 0.08, 0.12],
        "end": [0.08, 0.28, 0.28],
        "velocity": [126, 126, 126],
    }
