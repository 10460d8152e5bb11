"""A score rendered into a MIDI file (velocity/pipeline/perform.py, velocity/model/retime.py):
exactly the score's notes, one for one, everything else in the file as it was; `timing 0` keeps
every tick; a tempo map keeps the notes on their score ticks; the pedal is well formed."""

from __future__ import annotations

from pathlib import Path

import mido
import numpy as np
import pandas as pd
import pytest

from velocity.model.midi import read_midi, ticks_to_seconds
from velocity.model.notes import piece_notes
from velocity.model.timing import render_performance
from velocity.pipeline.perform import PerformControls, performed_bytes, score_warnings

TPQ = 480


def write_score(path: Path, tempo: bool = True, meter: bool = True, qpm: int = 100) -> Path:
    """A small score: a conductor track (at `qpm` quarter notes a minute), a piano (chords and a
    melody with a repeated key), a drum track and a string part with its own program."""
    song = mido.MidiFile(type=1, ticks_per_beat=TPQ)
    conductor = mido.MidiTrack([mido.MetaMessage("track_name", name="conductor", time=0)])
    if tempo:
        conductor.append(mido.MetaMessage("set_tempo", tempo=60_000_000 // qpm, time=0))
    if meter:
        conductor.append(mido.MetaMessage("time_signature", numerator=3, denominator=4, time=0))
    song.tracks.append(conductor)

    def part(channel: int, program: int, notes: list[tuple[int, int, int, int]]) -> mido.MidiTrack:
        events = [(0, 1, mido.Message("program_change", channel=channel, program=program))]
        for start, length, pitch, velocity in notes:
            events.append((start, 2, mido.Message("note_on", channel=channel, note=pitch, velocity=velocity)))
            events.append((start + length, 0, mido.Message("note_off", channel=channel, note=pitch)))
        events.sort(key=lambda e: (e[0], e[1]))
        track, last = mido.MidiTrack(), 0
        for tick, _, message in events:
            track.append(message.copy(time=tick - last))
            last = tick
        return track

    piano = []
    for bar in range(8):
        at = bar * 3 * TPQ
        piano += [(at, 3 * TPQ, p, 70) for p in (48, 55, 64)]  # a chord per bar
        piano += [(at + k * TPQ, TPQ, 72 + (k + bar) % 3, 80) for k in range(3)]  # the melody, keys repeat
    song.tracks.append(part(0, 0, piano))
    song.tracks.append(part(9, 0, [(k * TPQ, TPQ // 4, 36, 100) for k in range(24)]))  # drums
    song.tracks.append(part(1, 48, [(k * 3 * TPQ, 3 * TPQ, 60, 60) for k in range(8)]))  # strings
    song.save(path)
    return path


def targets(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame({"log_pace": np.linspace(-0.2, 0.3, n), "onset_deviation": rng.normal(0, 0.02, n),
                         "articulation": rng.normal(-0.3, 0.3, n), "pedal_down": np.r_[np.ones(n // 2), np.zeros(n - n // 2)]})  # fmt: skip


def notes_of(data: bytes, path: Path) -> pd.DataFrame:
    path.write_bytes(data)
    return read_midi(path).notes


@pytest.fixture
def score(tmp_path: Path):
    midi = read_midi(write_score(tmp_path / "score.mid"))
    return piece_notes(midi)


def render(piece, timing: float = 1.0, pedal: bool = True):
    notes = piece.notes
    return render_performance(notes["start"].to_numpy(), notes["end"].to_numpy(), notes["pitch"].to_numpy(),
                              targets(len(notes)), timing=timing, pedal=pedal)  # fmt: skip


def test_the_rendered_file_holds_the_score_notes_one_for_one_and_the_rest_unchanged(score, tmp_path):
    before = score.midi.notes
    velocity = before["velocity"].to_numpy().copy()
    velocity[score.notes["note"].to_numpy()] = 99
    after = notes_of(performed_bytes(score, velocity, render(score), PerformControls()), tmp_path / "out.mid")
    assert len(after) == len(before)
    piano = before["channel"] == 0
    # Drums and strings: every note at its tick, velocity and program.
    pd.testing.assert_frame_equal(after[~piano].drop(columns="offset").reset_index(drop=True),
                                  before[~piano].drop(columns="offset").reset_index(drop=True))  # fmt: skip
    moved = after[after["channel"] == 0]
    assert sorted(moved["pitch"]) == sorted(before[piano]["pitch"]) and (moved["velocity"] == 99).all()
    assert (moved["start_tick"].to_numpy() != before[piano]["start_tick"].to_numpy()).any()
    # Each key: its notes in their order, each released by the time the key is struck again.
    for _, key in moved.sort_values(["pitch", "start_tick"]).groupby("pitch"):
        assert np.all(key["end_tick"].to_numpy()[:-1] <= key["start_tick"].to_numpy()[1:])
    song = mido.MidiFile(tmp_path / "out.mid")
    assert song.ticks_per_beat == TPQ and [m.program for t in song.tracks for m in t if m.type == "program_change"] == [0, 0, 48]
    pedal = [m.value for m in song.tracks[1] if m.type == "control_change" and m.control == 64]
    assert pedal and pedal == [127, 0] * (len(pedal) // 2)
    last_note_off = max(moved["end_tick"])
    tick, pedal_ticks = 0, []
    for message in song.tracks[1]:
        tick += message.time
        if message.type == "control_change":
            pedal_ticks.append(tick)
    assert max(pedal_ticks) <= last_note_off


def test_timing_zero_keeps_every_tick_and_no_pedal_adds_none(score, tmp_path):
    velocity = score.midi.notes["velocity"].to_numpy()
    after = notes_of(performed_bytes(score, velocity, render(score, timing=0.0, pedal=False), PerformControls(timing=0.0, pedal=False)),
                     tmp_path / "out.mid")  # fmt: skip
    pd.testing.assert_frame_equal(after.drop(columns="offset"), score.midi.notes.drop(columns="offset"))
    song = mido.MidiFile(tmp_path / "out.mid")
    assert not any(m.type == "control_change" and m.control == 64 for t in song.tracks for m in t)


def test_a_tempo_map_keeps_the_notes_on_their_score_ticks(score, tmp_path):
    velocity = score.midi.notes["velocity"].to_numpy()
    rendering = render(score)
    no_spread = render_performance(score.notes["start"].to_numpy(), score.notes["end"].to_numpy(), score.notes["pitch"].to_numpy(),
                                   targets(len(score.notes)).assign(onset_deviation=0.0))  # fmt: skip
    out = performed_bytes(score, velocity, no_spread, PerformControls(tempo_map=True))
    after = notes_of(out, tmp_path / "out.mid")
    piano = score.midi.notes["channel"] == 0
    # Without deviations every onset is on its score tick (within a tick of rounding); the tempo moved.
    assert np.abs(after[piano]["start_tick"].to_numpy() - score.midi.notes[piano]["start_tick"].to_numpy()).max() <= 1
    written = read_midi(tmp_path / "out.mid")
    assert written.tempo_map.ticks_per_quarter == TPQ and len(written.tempo_map.ticks) > 1
    # The performed times, read through the new tempo map, are the rendering's.
    np.testing.assert_allclose(ticks_to_seconds(written.tempo_map, after[piano]["start_tick"].to_numpy()),
                               np.sort(no_spread.onset)[np.argsort(np.argsort(score.notes["note"].to_numpy()))], atol=0.01)  # fmt: skip
    # With the chords spread, only the deviation leaves the grid.
    spread = notes_of(performed_bytes(score, velocity, rendering, PerformControls(tempo_map=True)), tmp_path / "spread.mid")
    assert np.abs(spread[piano]["start_tick"].to_numpy() - score.midi.notes[piano]["start_tick"].to_numpy()).max() < TPQ / 2


def test_a_note_rounded_to_no_length_keeps_its_keys_order(tmp_path):
    """A score note of no length struck with another of its key (as in ASAP's Beethoven op. 106, third
    movement), both played within one tick: the file writes press, release, press, so every reader
    pairs them as played: the score's notes one for one, no key sounding twice at once."""
    song = mido.MidiFile(type=0, ticks_per_beat=TPQ)
    song.tracks.append(mido.MidiTrack([
        mido.MetaMessage("set_tempo", tempo=600_000, time=0), mido.Message("note_on", note=48, velocity=60, time=0),
        mido.Message("note_on", note=60, velocity=60, time=TPQ), mido.Message("note_off", note=60, time=0),  # no length
        mido.Message("note_on", note=60, velocity=60, time=0), mido.Message("note_off", note=60, time=TPQ),
        mido.Message("note_on", note=60, velocity=60, time=0), mido.Message("note_off", note=60, time=TPQ),
        mido.Message("note_off", note=48, time=0),
    ]))  # fmt: skip
    song.save(tmp_path / "zero.mid")
    piece = piece_notes(read_midi(tmp_path / "zero.mid"))
    start, end = piece.notes["start"].to_numpy(), piece.notes["end"].to_numpy()
    key = np.flatnonzero(piece.notes["pitch"].to_numpy() == 60)
    onset, stop = start + 0.3, end + 0.3
    stop[key[0]] = onset[key[0]] + 0.0002  # gaps well inside one tick (1.25 ms): all three events on one tick
    onset[key[1]] = onset[key[0]] + 0.0005
    rendering = render_performance(start, end, piece.notes["pitch"].to_numpy(), targets(len(start)), timing=0.0, pedal=False)
    rendering = type(rendering)(onset, stop, [], rendering.clock)
    after = notes_of(performed_bytes(piece, piece.midi.notes["velocity"].to_numpy(), rendering, PerformControls(pedal=False)),
                     tmp_path / "out.mid")  # fmt: skip
    played = after[after["pitch"] == 60].sort_values("start_tick", kind="stable")
    assert len(after) == len(piece.midi.notes) and len(played) == 3
    assert (played["end_tick"].to_numpy()[:-1] <= played["start_tick"].to_numpy()[1:]).all()  # one press at a time
    assert played["end_tick"].iloc[0] == played["start_tick"].iloc[0] == played["start_tick"].iloc[1]


def test_a_score_without_tempo_or_meter_renders_with_a_warning(tmp_path):
    piece = piece_notes(read_midi(write_score(tmp_path / "bare.mid", tempo=False, meter=False)))
    lines = score_warnings(piece)
    assert any("no tempo" in line for line in lines) and any("no time signature" in line for line in lines)
    out = performed_bytes(piece, piece.midi.notes["velocity"].to_numpy(), render(piece), PerformControls(tempo_map=True))
    assert len(notes_of(out, tmp_path / "out.mid")) == len(piece.midi.notes)


def test_a_score_at_the_default_120_warns_unless_the_tempo_is_set(tmp_path):
    default = piece_notes(read_midi(write_score(tmp_path / "default.mid", qpm=120)))
    [line] = score_warnings(default)
    assert "120 quarter notes a minute throughout, most often a notation program's default" in line and "--tempo" in line
    assert score_warnings(default, PerformControls(tempo=90.0)) == []
    assert score_warnings(piece_notes(read_midi(write_score(tmp_path / "marked.mid", qpm=100)))) == []


def test_a_tempo_set_by_the_player_is_the_renderings_mean_tempo(score):
    """`tempo_stretch` scales the model's clock so that the first onset to the last takes the asked
    quarter notes a minute; the curve's shape, chord spread and articulation stay the model's."""
    from velocity.model.score import score_table
    from velocity.model.timing import clock_from_pace
    from velocity.pipeline.perform import tempo_stretch

    table = score_table(score)
    start, beat = table["start"].to_numpy(), table["beat"].to_numpy()
    predicted = targets(len(table))
    own = render(score)
    stretch = tempo_stretch(beat, start, clock_from_pace(start, predicted["log_pace"].to_numpy()), 90.0)
    slow = render_performance(start, table["end"].to_numpy(), table["pitch"].to_numpy(), predicted, stretch=stretch)
    first, last = start.min(), start.max()
    quarters = beat.max() - beat.min()
    assert 60 * quarters / float(slow.clock(last) - slow.clock(first)) == pytest.approx(90.0)
    assert float(own.clock(last) - own.clock(first)) * stretch == pytest.approx(float(slow.clock(last) - slow.clock(first)))
    np.testing.assert_allclose(np.diff(slow.clock.performance), stretch * np.diff(own.clock.performance))  # the same curve, slower
    # The same notes as written at timing 0 (every onset on the score's grid, 100 quarter notes a minute) at 90.
    written = render_performance(start, table["end"].to_numpy(), table["pitch"].to_numpy(), predicted, timing=0.0, stretch=100 / 90)
    np.testing.assert_allclose(written.onset, start * 100 / 90)
    np.testing.assert_allclose(written.end - written.onset, (table["end"] - table["start"]).to_numpy() * 100 / 90)
    assert tempo_stretch(np.zeros(3), np.zeros(3), own.clock, 90.0) == 1.0  # one chord: no tempo to set


def test_timing_and_tempo_out_of_range_are_refused():
    with pytest.raises(ValueError, match="timing must be between 0 and 2, got 2.5"):
        PerformControls(timing=2.5)
    with pytest.raises(ValueError, match="tempo must be between 20 and 400, got 0"):
        PerformControls(tempo=0.0)
