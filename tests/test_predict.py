"""`velocity predict`: new velocities for real and hand-built MIDI files, everything else untouched."""

from __future__ import annotations

import json
import logging
import zipfile
from pathlib import Path

import mido
import numpy as np
import pandas as pd
import pytest

from velocity.pipeline.cli import main as velocity
from velocity.model.midi import read_midi
from velocity.model.notes import NOTE_COLUMNS, read_notes
from trained_models import DEMO_PIECE, TEST_SCORE

# A real MAESTRO performance in the shared tiny archive (../shared; its test skips without it).
MAESTRO_PIECE = "maestro-v3.0.0/2008/MIDI-Unprocessed_13_R1_2008_01-04_ORIG_MID--AUDIO_13_R1_2008_wav--1__Prelude_bwv_862.midi"


pytestmark = pytest.mark.usefixtures("single_threaded")


def predict(*args: str | Path) -> int:
    return velocity(["predict", *map(str, args)])


def assert_only_note_on_velocities_differ(original: Path, predicted: Path) -> int:
    """Every message equal except the velocity of non-drum note-ons; returns how many changed."""
    assert len(original.read_bytes()) == len(predicted.read_bytes())
    a, b = mido.MidiFile(original), mido.MidiFile(predicted)
    assert (a.type, a.ticks_per_beat, len(a.tracks)) == (b.type, b.ticks_per_beat, len(b.tracks))
    changed = 0
    for track_a, track_b in zip(a.tracks, b.tracks):
        assert len(track_a) == len(track_b)
        for ma, mb in zip(track_a, track_b):
            if ma.type == "note_on" and ma.velocity > 0 and ma.channel != 9:
                assert ma.copy(velocity=1) == mb.copy(velocity=1)  # same note, channel and delta time
                assert 1 <= mb.velocity <= 127  # still a note-on, never a note-off
                changed += ma.velocity != mb.velocity
            else:
                assert ma == mb
    return changed


# ---------------------------------------------------------------------------------------------
# A performance: the demo corpus's (generated, in MAESTRO's layout), and a real MAESTRO one


def assert_performance_gets_the_models_velocities(model: Path, source: Path, out: Path, decoding: str | None) -> None:
    from velocity.model.decode import load_velocity_model
    from velocity.model.decodings import DEFAULT_DECODING
    from velocity.model.pieces import predict_notes

    assert predict(source, "-o", out, "--model", model, *(["--decoding", decoding] if decoding else [])) == 0
    changed = assert_only_note_on_velocities_differ(source, out)
    before, after = read_notes(source), read_notes(out)
    assert changed > len(before) // 2
    pd.testing.assert_frame_equal(before.drop(columns="velocity"), after.drop(columns="velocity"))
    # The new velocities are the model's stitched prediction on the notes exactly as extract reads them.
    expected = predict_notes(load_velocity_model(model), before, decoding=decoding or DEFAULT_DECODING)
    np.testing.assert_array_equal(after["velocity"].to_numpy(), np.clip(expected, 1, 127))


@pytest.mark.parametrize("decoding", [None, "median", "greedy"])
def test_a_performance_gets_the_models_velocities_and_nothing_else_changes(trained_model, demo_raw, tmp_path, decoding):
    assert_performance_gets_the_models_velocities(trained_model, demo_raw.parent / DEMO_PIECE, tmp_path / "out.mid", decoding)


def test_a_real_maestro_performance_too(trained_model, tiny_raw, tmp_path):
    """A real recording's file (its pedal, its tracks as MAESTRO writes them): skips without ../shared."""
    assert_performance_gets_the_models_velocities(trained_model, tiny_raw.parent / MAESTRO_PIECE, tmp_path / "out.mid", None)


def test_strength_zero_keeps_and_half_blends_the_original_velocities(trained_model, demo_raw, tmp_path):
    source = demo_raw.parent / DEMO_PIECE
    full, half, none = tmp_path / "full.mid", tmp_path / "half.mid", tmp_path / "none.mid"
    assert predict(source, "-o", full, "--model", trained_model) == 0
    assert predict(source, "-o", half, "--model", trained_model, "--strength", "0.5") == 0
    assert predict(source, "-o", none, "--model", trained_model, "--strength", "0") == 0

    assert none.read_bytes() == source.read_bytes()  # strength 0: the very same file
    original = read_notes(source)["velocity"].to_numpy()
    predicted = read_notes(full)["velocity"].to_numpy()
    blended = read_notes(half)["velocity"].to_numpy()
    np.testing.assert_array_equal(blended, np.floor((original + predicted) / 2 + 0.5))


def test_strength_outside_zero_to_one_is_refused(trained_model, demo_raw, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        predict(demo_raw.parent / DEMO_PIECE, "-o", tmp_path / "out.mid", "--model", trained_model, "--strength", "1.5")
    assert exit_info.value.code == 2
    assert not (tmp_path / "out.mid").exists()


# ---------------------------------------------------------------------------------------------
# Hand-built files: several tracks, drums, pedals, tempo changes, odd events


def build_midi(path: Path, tracks: list[list[mido.Message | mido.MetaMessage]], ticks_per_beat: int = 480) -> Path:
    midi = mido.MidiFile(type=1, ticks_per_beat=ticks_per_beat)
    for messages in tracks:
        midi.tracks.append(mido.MidiTrack(messages))
    midi.save(str(path))
    return path


def notes_track(channel: int, pitches: list[int], velocity: int, step: int = 120) -> list[mido.Message]:
    """One note per pitch, each `step` ticks long, back to back; note ends as velocity-0 note-ons."""
    messages: list[mido.Message] = []
    for pitch in pitches:
        messages.append(mido.Message("note_on", channel=channel, note=pitch, velocity=velocity, time=0))
        messages.append(mido.Message("note_on", channel=channel, note=pitch, velocity=0, time=step))
    return messages


def test_multi_track_file_with_drums_pedals_and_out_of_range_notes(trained_model, tmp_path, caplog):
    conductor = [
        mido.MetaMessage("set_tempo", tempo=500000, time=0),
        mido.MetaMessage("time_signature", numerator=3, denominator=4, time=0),
        mido.MetaMessage("set_tempo", tempo=400000, time=960),  # a tempo change mid-piece
        mido.MetaMessage("text", text="conductor", time=10),
    ]
    right = [mido.MetaMessage("track_name", name="right hand", time=0), mido.Message("program_change", program=0, time=0),
             mido.Message("sysex", data=[0x7E, 0x7F, 0x09, 0x01], time=0),
             mido.Message("control_change", control=64, value=100, time=0)]  # fmt: skip
    right += notes_track(0, [60, 64, 67, 72, 76, 79, 84, 88] * 5, velocity=50)
    right += [mido.Message("control_change", control=64, value=0, time=5), mido.Message("note_off", note=15, time=0)]
    left = notes_track(1, [36, 43, 48, 15] * 6, velocity=97, step=200)  # pitch 15 lies below the piano's A0
    left += [mido.Message("polytouch", channel=1, note=36, value=20, time=3)]
    drums = notes_track(9, [36, 38, 42] * 4, velocity=100, step=100)
    source = build_midi(tmp_path / "in.mid", [conductor, right, left, drums])
    out = tmp_path / "out.mid"

    with caplog.at_level(logging.INFO):
        assert predict(source, "-o", out, "--model", trained_model) == 0
    assert f"{source}: 6 note(s) outside the piano's 21..108 left out" in caplog.text
    assert f"{source}: 12 drum-channel note(s) ignored" in caplog.text
    assert "58 notes given the model's velocities" in caplog.text and "18 kept theirs" in caplog.text

    changed = assert_only_note_on_velocities_differ(source, out)
    assert changed > 30
    a, b = mido.MidiFile(source), mido.MidiFile(out)
    for ma, mb in zip(a.tracks[2], b.tracks[2]):
        if ma.type == "note_on" and ma.note == 15:
            assert mb.velocity == ma.velocity  # out of range: kept
    assert list(a.tracks[3]) == list(b.tracks[3])  # drums untouched
    # Both piano tracks form one piece: both get new velocities.
    assert any(mb.velocity != 50 for mb in b.tracks[1] if mb.type == "note_on" and mb.velocity)
    assert any(mb.velocity != 97 for mb in b.tracks[2] if mb.type == "note_on" and mb.velocity and mb.note != 15)


# ---------------------------------------------------------------------------------------------
# Bad input: a clear message naming the file, exit code 1, nothing written


def test_bad_inputs_fail_clearly_without_output(trained_model, tmp_path, caplog):
    tempo_only = build_midi(tmp_path / "tempo_only.mid", [[mido.MetaMessage("set_tempo", tempo=500000, time=0)]])
    drums_only = build_midi(tmp_path / "drums_only.mid", [notes_track(9, [36, 38], velocity=90)])
    below_piano = build_midi(tmp_path / "below_piano.mid", [notes_track(0, [10, 12], velocity=90)])
    garbage = tmp_path / "garbage.mid"
    garbage.write_bytes(b"this is not a MIDI file at all")
    cases = {
        tempo_only: "no notes",
        drums_only: "no piano notes",
        below_piano: "no notes in the piano range 21..108 (2 outside it)",
        garbage: "not a readable MIDI file",
        tmp_path / "missing.mid": "no such file",
    }
    for source, reason in cases.items():
        out = tmp_path / f"{source.stem}.out.mid"
        caplog.clear()
        assert predict(source, "-o", out, "--model", trained_model) == 1, source
        assert f"{source}: {reason}" in caplog.text
        assert not out.exists()
    assert not list(tmp_path.glob(".*.tmp"))  # no half-written temporary files either


def test_missing_or_foreign_model_fails_clearly(demo_raw, tmp_path, caplog):
    source = demo_raw.parent / DEMO_PIECE
    foreign = tmp_path / "foreign.pt"
    foreign.write_text(json.dumps({"not": "a checkpoint"}))
    for model in (tmp_path / "missing.pt", foreign):
        caplog.clear()
        assert predict(source, "-o", tmp_path / "out.mid", "--model", model) == 1
        assert str(model) in caplog.text
    assert not (tmp_path / "out.mid").exists()


def test_a_model_file_from_before_features_loads_and_says_what_it_lacks(trained_model, demo_raw, tmp_path, caplog):
    """Format version 1 (no note features, no kind, no calibration) still predicts; the default
    decoding, which needs a calibration, fails with one line naming the version. A newer version
    than the code knows is refused by name."""
    import torch

    from velocity.model.checkpoint import load_checkpoint, save_checkpoint
    from velocity.model.transformer import ModelConfig, build_model

    ckpt = load_checkpoint(trained_model)
    config = {k: v for k, v in ckpt["model_config"].items() if k not in ("kind", "features")}
    torch.manual_seed(0)
    old = {
        "kind": "velocity-transformer", "model": build_model(ModelConfig(**config, kind="encoder-decoder", features=())).state_dict(), "model_config": config,
        "vocab": ckpt["vocab"], "bins": {k: v for k, v in ckpt["bins"].items() if k != "features"}, "windows": ckpt["windows"],
        "train": {"seed": 0},
    }  # fmt: skip
    save_checkpoint(tmp_path / "v1.pt", old)
    source = demo_raw.parent / DEMO_PIECE
    assert predict(source, "-o", tmp_path / "out.mid", "--model", tmp_path / "v1.pt", "--decoding", "notes-only") == 0
    assert assert_only_note_on_velocities_differ(source, tmp_path / "out.mid") > 0
    with caplog.at_level(logging.ERROR):
        assert predict(source, "-o", tmp_path / "out2.mid", "--model", tmp_path / "v1.pt") == 1
    assert "format version 1" in caplog.text and "'pianist'" in caplog.text
    assert not (tmp_path / "out2.mid").exists()

    save_checkpoint(tmp_path / "v99.pt", {**ckpt, "format_version": 99})
    caplog.clear()
    with caplog.at_level(logging.ERROR):
        assert predict(source, "-o", tmp_path / "out3.mid", "--model", tmp_path / "v99.pt") == 1
    assert "format version 99 is newer" in caplog.text


# ---------------------------------------------------------------------------------------------
# Damaged files: predict keeps, warns about and refuses exactly what extract does


def test_damaged_files_give_the_same_notes_in_extract_and_predict(trained_model, tmp_path, caplog):
    import csv

    from velocity.model.decode import load_velocity_model
    from velocity.model.pieces import predict_notes
    from velocity.stages.extract import extract_notes
    from test_midi import DAMAGED, write_case

    raw = tmp_path / "raw"
    raw.mkdir()
    with open(raw / "maestro-v3.0.0.csv", "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["canonical_composer", "canonical_title", "split", "year", "midi_filename", "audio_filename", "duration"])
        for name in DAMAGED:
            write_case(raw, name)
            rows.writerow(["Anon", name, "test", "2024", f"{name}.mid", "", "1"])
    report = extract_notes(raw, tmp_path / "notes", sustain=False, workers=1)
    extracted = pd.read_parquet(tmp_path / "notes/test.parquet")
    model = load_velocity_model(trained_model)

    for name, (data, expected, _) in DAMAGED.items():
        source, out = raw / f"{name}.mid", tmp_path / "out" / f"{name}.mid"
        caplog.clear()
        with caplog.at_level(logging.INFO):
            code = predict(source, "-o", out, "--model", trained_model, "--decoding", "notes-only")
        if isinstance(expected, str):  # unusable: the same one line in both, nothing written
            assert code == 1 and not out.exists(), name
            assert report["skipped"][f"{name}.mid"] == f"{source}: {expected}"
            assert report["skipped"][f"{name}.mid"] in caplog.text
            continue
        assert code == 0, name
        for warning in report["warnings"].get(f"{name}.mid", []):
            assert f"{source}: {warning}" in caplog.text  # the same warnings, printed
        new = out.read_bytes()
        assert len(new) == len(data)  # the file as it was, damage included: only velocity bytes differ
        offsets = read_midi(source).notes["offset"].to_numpy()
        differ = np.flatnonzero(np.frombuffer(new, np.uint8) != np.frombuffer(data, np.uint8))
        assert set(differ) <= set(offsets)
        piece = extracted[extracted["piece_id"] == f"{name}.mid"][NOTE_COLUMNS].reset_index(drop=True)
        after = read_notes(out)
        pd.testing.assert_frame_equal(after.drop(columns="velocity"), piece.drop(columns="velocity"))
        expected_velocity = np.clip(predict_notes(model, piece, decoding="notes-only"), 1, 127)
        np.testing.assert_array_equal(after["velocity"].to_numpy(), expected_velocity)


# ---------------------------------------------------------------------------------------------
# Several files, folders, and a musician's controls


def test_folder_with_one_bad_file_among_good_ones(trained_model, demo_raw, tmp_path, caplog):
    from test_midi import DAMAGED

    songs = tmp_path / "songs"
    (songs / "sub").mkdir(parents=True)
    (songs / "a.mid").write_bytes((demo_raw.parent / DEMO_PIECE).read_bytes())
    (songs / "sub" / "b.MIDI").write_bytes(DAMAGED["truncated_mid_track"][0])
    (songs / "sub" / "broken.mid").write_bytes(DAMAGED["text"][0])
    (songs / "notes.txt").write_text("not a MIDI file, and not named like one: not read")
    out = tmp_path / "human"
    with caplog.at_level(logging.INFO):
        assert predict(songs, "-o", out, "--model", trained_model, "--decoding", "notes-only") == 1
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["a.mid", "sub", "sub/b.MIDI"]
    assert f"{songs / 'sub' / 'broken.mid'}: not a readable MIDI file (no MThd header)" in caplog.text
    assert "2 files written, 1 failed" in caplog.text
    assert assert_only_note_on_velocities_differ(songs / "a.mid", out / "a.mid") > 0
    assert not list(out.rglob(".*.tmp"))

    # Files named one by one into a folder; a rerun over a folder holding its own output skips it.
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert predict(songs / "a.mid", songs / "sub" / "b.MIDI", "-o", songs / "out", "--model", trained_model, "--decoding", "notes-only") == 0
        assert "2 files written, 0 failed" in caplog.text
        caplog.clear()
        assert predict(songs, "-o", songs / "out", "--model", trained_model, "--decoding", "notes-only") == 1
    assert "2 files written, 1 failed" in caplog.text  # a.mid, sub/b.MIDI; not out/a.mid or out/b.MIDI
    assert sorted(p.name for p in (songs / "out").rglob("*.*")) == ["a.mid", "b.MIDI", "b.MIDI"]


def test_two_inputs_with_one_name_are_refused_before_any_work(trained_model, demo_raw, tmp_path, caplog):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    for folder in ("x", "y"):
        (tmp_path / folder / "same.mid").write_bytes((demo_raw.parent / DEMO_PIECE).read_bytes())
    assert predict(tmp_path / "x/same.mid", tmp_path / "y/same.mid", "-o", tmp_path / "out", "--model", trained_model) == 2
    assert "would both be written to" in caplog.text and not (tmp_path / "out").exists()


def test_loudness_and_dynamics_shape_the_prediction():
    from velocity.pipeline.humanize import Controls, shape_dynamics

    predicted, original = np.array([50.0, 60.0, 70.0]), np.array([64, 64, 64])
    np.testing.assert_array_equal(shape_dynamics(predicted, original, Controls()), [50, 60, 70])
    np.testing.assert_array_equal(shape_dynamics(predicted, original, Controls(loudness=90)), [80, 90, 100])
    np.testing.assert_array_equal(shape_dynamics(predicted, original, Controls(dynamics=2.0)), [40, 60, 80])
    np.testing.assert_array_equal(shape_dynamics(predicted, original, Controls(loudness=120, dynamics=2.0)), [100, 120, 127])  # clipped
    np.testing.assert_array_equal(shape_dynamics(predicted, original, Controls(loudness=80, dynamics=0.5, strength=0.5)), [70, 72, 75])  # (75, 80, 85) and 64, halves up


def test_loudness_dynamics_and_plot_on_a_real_file(trained_model, demo_raw, tmp_path):
    source = demo_raw.parent / DEMO_PIECE
    flat, plot = tmp_path / "flat.mid", tmp_path / "roll.png"
    assert predict(source, "-o", flat, "--model", trained_model, "--loudness", "80", "--dynamics", "0", "--plot", plot) == 0
    assert set(read_notes(flat)["velocity"]) == {80}
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(SystemExit):
        predict(source, "-o", flat, "--model", trained_model, "--loudness", "0")
    with pytest.raises(SystemExit):
        predict(source, "-o", flat, "--model", trained_model, "--dynamics", "-1")


# ---------------------------------------------------------------------------------------------
# Scores: --input auto|score|performance and the score model

def test_a_score_is_read_as_a_score_and_given_the_score_models_velocities(trained_model, trained_score_model, demo_raw, tmp_path, caplog):
    from velocity.model.decode import load_velocity_model
    from velocity.model.decodings import DEFAULT_DECODING
    from velocity.model.notes import piece_notes
    from velocity.model.pieces import predict_notes
    from velocity.model.score import score_table

    score_model, scores = trained_score_model
    source = scores / TEST_SCORE
    out = tmp_path / "score_out.mid"
    with caplog.at_level(logging.INFO):
        assert predict(source, "-o", out, "--model", trained_model, "--score-model", score_model) == 0
    assert f"{source}: read as a score (" in caplog.text and "on a 1/96-beat grid" in caplog.text
    assert assert_only_note_on_velocities_differ(source, out) > 0
    # Exactly the score model's prediction from the score's own columns (beats, meter, notated velocities).
    model = load_velocity_model(score_model)
    table = score_table(piece_notes(read_midi(source)))
    expected = predict_notes(model, table, decoding=DEFAULT_DECODING)
    written = read_midi(out).notes["velocity"].to_numpy()[table["note"].to_numpy()]
    np.testing.assert_array_equal(written, np.clip(expected, 1, 127))

    caplog.clear()
    performance = demo_raw.parent / DEMO_PIECE
    with caplog.at_level(logging.INFO):
        assert predict(performance, "-o", tmp_path / "perf_out.mid", "--model", trained_model, "--score-model", score_model) == 0
    assert f"{performance}: read as a performance (" in caplog.text

    caplog.clear()  # --input decides instead of the guess
    with caplog.at_level(logging.INFO):
        assert predict(source, "-o", tmp_path / "forced.mid", "--model", trained_model, "--score-model", score_model, "--input", "performance") == 0
    assert f"{source}: read as a performance (--input performance)" in caplog.text


def test_a_score_without_a_score_model(trained_model, trained_score_model, tmp_path, caplog):
    """--input score needs the score model (one line says how to train it); auto falls back to the
    performance model and says so; the performance model file is refused as a score model."""
    _, scores = trained_score_model
    source = scores / TEST_SCORE
    missing = tmp_path / "no_such_score_model.pt"
    with caplog.at_level(logging.INFO):
        assert predict(source, "-o", tmp_path / "a.mid", "--model", trained_model, "--score-model", missing, "--input", "score") == 1
    assert f"{missing}: no score model file; train one with `dvc repro score_train`" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert predict(source, "-o", tmp_path / "b.mid", "--model", trained_model, "--score-model", missing) == 0
    assert "looks like a score" in caplog.text and "so the performance model reads it" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert predict(source, "-o", tmp_path / "c.mid", "--model", trained_model, "--score-model", trained_model) == 1
    assert "trained on performances, not scores" in caplog.text


# ---------------------------------------------------------------------------------------------
# --perform: a score played like a pianist (the rendering's own rules: tests/test_perform.py,
# tests/test_rendering.py); here the command, on a demo score with the tiny timing model


def perform(source: Path, out: Path, trained_model: Path, score_model: Path, timing_model: Path, *args: str | Path) -> int:
    return predict(source, "-o", out, "--model", trained_model, "--score-model", score_model, "--timing-model", timing_model, *args)


def piano_keys(path: Path) -> dict[int, pd.DataFrame]:
    """The piano piece's notes of a file (the reader's rule), per key in the key's order:
    start_tick, end_tick, velocity."""
    from velocity.model.notes import piece_notes

    midi = read_midi(path)
    notes = midi.notes.iloc[piece_notes(midi).notes["note"].to_numpy()]
    return {int(pitch): key.sort_values("start_tick", kind="stable")[["start_tick", "end_tick", "velocity"]].reset_index(drop=True)
            for pitch, key in notes.groupby("pitch")}  # fmt: skip


def cc64(path: Path) -> list[mido.Message]:
    return [m for track in mido.MidiFile(path).tracks for m in track if m.type == "control_change" and m.control == 64]


def with_other_tracks(score: Path, path: Path) -> Path:
    """`score` with a string part (GM program 48) and a drum track beside its piano."""
    song = mido.MidiFile(score)
    strings = [mido.Message("program_change", channel=1, program=48, time=0), *notes_track(1, [48, 55, 60, 55] * 4, velocity=70, step=480)]
    song.tracks.append(mido.MidiTrack(strings))
    song.tracks.append(mido.MidiTrack(notes_track(9, [36, 38, 42, 38] * 4, velocity=100, step=240)))
    song.save(str(path))
    return path


@pytest.fixture
def score_parts(trained_score_model, tmp_path) -> Path:
    """The demo score (TEST_SCORE) with two more tracks that --perform must leave alone."""
    _, scores = trained_score_model
    return with_other_tracks(scores / TEST_SCORE, tmp_path / "score_parts.mid")


def test_perform_plays_the_scores_notes_one_for_one_and_nothing_else_changes(trained_model, trained_score_model, trained_timing_model,
                                                                            score_parts, tmp_path, caplog):  # fmt: skip
    score_model, _ = trained_score_model
    plain, performed = tmp_path / "plain.mid", tmp_path / "performed.mid"
    assert perform(score_parts, plain, trained_model, score_model, trained_timing_model) == 0  # without --perform: velocities only
    with caplog.at_level(logging.INFO):
        assert perform(score_parts, performed, trained_model, score_model, trained_timing_model, "--perform") == 0
    assert f"{score_parts}: read as a score (" in caplog.text and f"{score_parts}: played at timing 1" in caplog.text

    a, b = mido.MidiFile(score_parts), mido.MidiFile(performed)
    assert (a.type, a.ticks_per_beat, len(a.tracks)) == (b.type, b.ticks_per_beat, len(b.tracks)) == (1, 480, 4)
    for t in (0, 2, 3):  # the conductor track, the strings and the drums: message for message
        assert list(a.tracks[t]) == list(b.tracks[t]), t
    score, played, velocities = piano_keys(score_parts), piano_keys(performed), piano_keys(plain)
    assert sorted(played) == sorted(score)  # the same keys ...
    moved = 0
    for pitch, notes in score.items():
        mine = played[pitch]
        assert len(mine) == len(notes), pitch  # ... each struck as often: the score's notes, one for one
        # The velocities of `velocity predict` without --perform, note for note (a key's notes keep their order).
        np.testing.assert_array_equal(mine["velocity"], velocities[pitch]["velocity"])
        assert (mine["end_tick"].to_numpy()[:-1] <= mine["start_tick"].to_numpy()[1:]).all(), pitch  # released before struck again
        moved += int((mine["start_tick"] != notes["start_tick"]).sum())
    n_notes = sum(len(notes) for notes in score.values())
    assert moved > n_notes // 2  # the onsets left the grid
    assert cc64(performed) and not cc64(score_parts)  # the rendered sustain pedal


def test_perform_on_real_scores_writes_playable_files(trained_model, trained_score_model, trained_timing_model, tmp_path):
    """Every score file of the shared tiny ASAP archive through one `--perform` run (a folder in, a
    folder out), at the timing control's far end: each file holds its score's notes one for one,
    each key's notes in order and released by its next press, and the pedal alternates down and up
    in time order, none after the last note's release. (Run over all 212 ASAP scores, these
    rules found a pedal pressed after its own release and a note of no length written released
    before it was pressed: docs/experiments.md.)"""
    from conftest import SHARED_DATA

    archive = SHARED_DATA / "asap-all-tiny-scores.zip"
    if not archive.exists():
        pytest.skip(f"{archive} not found: the shared archives sit in ../shared/data beside the repo (CI has them)")
    scores = tmp_path / "scores"
    with zipfile.ZipFile(archive) as zipped:
        for name in zipped.namelist():
            if name.endswith("/midi_score.mid"):
                (scores / name).parent.mkdir(parents=True, exist_ok=True)
                (scores / name).write_bytes(zipped.read(name))
    score_model, _ = trained_score_model
    out = tmp_path / "performed"
    assert perform(scores, out, trained_model, score_model, trained_timing_model, "--perform", "--input", "score", "--timing", "2") == 0
    written = sorted(scores.rglob("midi_score.mid"))
    assert len(written) >= 10
    for source in written:
        target = out / source.relative_to(scores)
        score, played = piano_keys(source), piano_keys(target)
        assert {k: len(v) for k, v in played.items()} == {k: len(v) for k, v in score.items()}, target
        for pitch, notes in played.items():
            start, end = notes["start_tick"].to_numpy(), notes["end_tick"].to_numpy()
            assert (end >= start).all() and (end[:-1] <= start[1:]).all(), f"{target}: key {pitch}"
        pedal, tick = [], 0
        for message in mido.merge_tracks(mido.MidiFile(target).tracks):
            tick += message.time
            if message.type == "control_change" and message.control == 64:
                pedal.append((tick, message.value >= 64))
        assert pedal, target
        assert [down for _, down in pedal] == [True, False] * (len(pedal) // 2), target
        assert pedal[-1][0] <= max(notes["end_tick"].max() for notes in played.values()), target


def test_perform_at_timing_zero_gives_the_scores_own_ticks_and_lengths(trained_model, trained_score_model, trained_timing_model, score_parts, tmp_path):
    score_model, _ = trained_score_model
    out = tmp_path / "as_written.mid"
    assert perform(score_parts, out, trained_model, score_model, trained_timing_model, "--perform", "--timing", "0") == 0
    score, played = piano_keys(score_parts), piano_keys(out)
    assert sorted(played) == sorted(score)
    for pitch, notes in score.items():
        pd.testing.assert_frame_equal(played[pitch][["start_tick", "end_tick"]], notes[["start_tick", "end_tick"]], obj=f"key {pitch}")
    assert list(mido.MidiFile(out).tracks[0]) == list(mido.MidiFile(score_parts).tracks[0])  # the score's own tempo map


def test_perform_at_a_tempo_plays_the_score_at_it(trained_model, trained_score_model, trained_timing_model, score_parts, tmp_path, caplog):
    """--timing 0 --tempo 60: the score as written, every onset and length slowed to 60 quarter notes a
    minute (within a tick of rounding)."""
    from velocity.model.midi import ticks_to_seconds

    score_model, _ = trained_score_model
    out = tmp_path / "at_60.mid"
    with caplog.at_level(logging.INFO):
        assert perform(score_parts, out, trained_model, score_model, trained_timing_model, "--perform", "--timing", "0", "--tempo", "60") == 0
    assert "played at timing 0, 60 quarter notes a minute" in caplog.text
    written, played = read_midi(score_parts), read_midi(out)
    [score_qpm] = set(60e6 / written.tempo_map.microseconds_per_quarter)
    one_tick = 1 / played.tempo_map.ticks_per_quarter  # seconds, at 60 quarter notes a minute
    score, performed = piano_keys(score_parts), piano_keys(out)
    for pitch, notes in score.items():
        for column in ("start_tick", "end_tick"):
            np.testing.assert_allclose(ticks_to_seconds(played.tempo_map, performed[pitch][column].to_numpy()),
                                       ticks_to_seconds(written.tempo_map, notes[column].to_numpy()) * score_qpm / 60,
                                       atol=one_tick, err_msg=f"key {pitch} {column}")  # fmt: skip


def without_chord_spread(timing_model: Path, path: Path) -> Path:
    """A copy of the timing model that predicts no onset deviation at all (the deviation head's
    output unscaled by standard deviation 0 and mean 0): its rendering puts every onset on the clock."""
    from velocity.model.checkpoint import load_checkpoint, save_checkpoint
    from velocity.model.timing import TIMING_TARGETS

    ckpt = load_checkpoint(timing_model)
    j = TIMING_TARGETS.index("onset_deviation")
    for name in ("mean", "std"):
        ckpt["standardizer"][name] = [0.0 if i == j else v for i, v in enumerate(ckpt["standardizer"][name])]
    save_checkpoint(path, ckpt)
    return path


def test_perform_with_a_tempo_map_keeps_every_onset_on_its_score_tick_but_the_chord_spread(
    trained_model, trained_score_model, trained_timing_model, score_parts, tmp_path, caplog
):
    """--tempo-map: the same ticks per beat, the tempo in the file's tempo events, and every note on its
    score tick apart from its onset deviation. A timing model with the deviation set to 0 shows the last
    exactly: every onset on its score tick. With the model's own deviation, the file is the same
    performance as the plain --perform file, only written through the tempo map (each onset at the same
    time within the two files' tick rounding)."""
    from velocity.model.midi import ticks_to_seconds

    score_model, _ = trained_score_model
    flat = without_chord_spread(trained_timing_model, tmp_path / "no_spread.pt")
    on_grid, mapped, plain = tmp_path / "on_grid.mid", tmp_path / "mapped.mid", tmp_path / "plain.mid"
    with caplog.at_level(logging.INFO):
        assert perform(score_parts, on_grid, trained_model, score_model, flat, "--perform", "--tempo-map") == 0
    assert "played at timing 1, the tempo as the file's tempo map" in caplog.text
    assert perform(score_parts, mapped, trained_model, score_model, trained_timing_model, "--perform", "--tempo-map") == 0
    assert perform(score_parts, plain, trained_model, score_model, trained_timing_model, "--perform") == 0

    assert mido.MidiFile(on_grid).ticks_per_beat == mido.MidiFile(mapped).ticks_per_beat == mido.MidiFile(score_parts).ticks_per_beat
    tempos = [m for m in mido.MidiFile(mapped).tracks[0] if m.type == "set_tempo"]
    assert len(tempos) > 100 and len({m.tempo for m in tempos}) > 10  # the rendered tempo curve, not the score's one tempo
    score = piano_keys(score_parts)
    for pitch, notes in piano_keys(on_grid).items():
        np.testing.assert_array_equal(notes["start_tick"], score[pitch]["start_tick"], err_msg=f"key {pitch}")

    mapped_midi, plain_midi = read_midi(mapped), read_midi(plain)
    one_tick = {name: float(np.diff(ticks_to_seconds(midi.tempo_map, np.arange(0, midi.notes["end_tick"].max(), 1))).max())
                for name, midi in (("mapped", mapped_midi), ("plain", plain_midi))}  # fmt: skip
    spread = 0
    for pitch, notes in piano_keys(mapped).items():
        seconds = ticks_to_seconds(mapped_midi.tempo_map, notes["start_tick"].to_numpy())
        np.testing.assert_allclose(seconds, ticks_to_seconds(plain_midi.tempo_map, piano_keys(plain)[pitch]["start_tick"].to_numpy()),
                                   atol=one_tick["mapped"] + one_tick["plain"], err_msg=f"key {pitch}")  # fmt: skip
        spread += int((notes["start_tick"] != score[pitch]["start_tick"]).sum())
    assert spread > 0  # the model's own deviation does leave the grid


def test_perform_without_pedal_writes_no_sustain_pedal(trained_model, trained_score_model, trained_timing_model, score_parts, tmp_path, caplog):
    score_model, _ = trained_score_model
    pedalled, bare = tmp_path / "pedal.mid", tmp_path / "bare.mid"
    assert perform(score_parts, pedalled, trained_model, score_model, trained_timing_model, "--perform") == 0
    with caplog.at_level(logging.INFO):
        assert perform(score_parts, bare, trained_model, score_model, trained_timing_model, "--perform", "--no-pedal") == 0
    assert "played at timing 1, no pedal" in caplog.text
    assert cc64(pedalled) and cc64(bare) == []
    for pitch, notes in piano_keys(bare).items():  # the same performance otherwise
        pd.testing.assert_frame_equal(notes, piano_keys(pedalled)[pitch], obj=f"key {pitch}")


def test_perform_on_a_performance_keeps_the_pianists_timing_and_says_so(trained_model, trained_score_model, trained_timing_model, demo_raw,
                                                                       tmp_path, caplog):  # fmt: skip
    score_model, _ = trained_score_model
    source = demo_raw.parent / DEMO_PIECE
    plain, performed = tmp_path / "plain.mid", tmp_path / "performed.mid"
    assert perform(source, plain, trained_model, score_model, trained_timing_model) == 0
    with caplog.at_level(logging.INFO):
        assert perform(source, performed, trained_model, score_model, trained_timing_model, "--perform", "--timing", "2") == 0
    assert performed.read_bytes() == plain.read_bytes()  # the velocities only, as without --perform
    said = [r.getMessage() for r in caplog.records if "timing" in r.getMessage()]
    assert said == [f"{source}: read as a performance: its pianist's timing is kept, only the velocities change"]


def test_perform_controls_out_of_range_or_without_perform_are_refused(trained_model, trained_score_model, trained_timing_model, score_parts,
                                                                      tmp_path, capsys, caplog):  # fmt: skip
    score_model, _ = trained_score_model
    out = tmp_path / "out.mid"
    for bad in ("3", "-0.5", "nan"):
        with pytest.raises(SystemExit) as exit_info:
            perform(score_parts, out, trained_model, score_model, trained_timing_model, "--perform", "--timing", bad)
        assert exit_info.value.code == 2
        assert "argument --timing: timing must be between 0 and 2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        perform(score_parts, out, trained_model, score_model, trained_timing_model, "--perform", "--tempo", "10")
    assert "argument --tempo: tempo must be between 20 and 400, got 10" in capsys.readouterr().err
    assert perform(score_parts, out, trained_model, score_model, trained_timing_model, "--tempo-map") == 2
    assert perform(score_parts, out, trained_model, score_model, trained_timing_model, "--tempo", "90") == 2
    assert caplog.text.count("--timing, --tempo, --no-pedal and --tempo-map shape --perform: add --perform") == 2
    assert not out.exists()


def test_perform_on_a_score_without_tempo_or_meter_warns_and_renders(trained_score_model, trained_model, trained_timing_model, tmp_path):
    """Through the real command in its own process: two warning lines, no traceback, the file written."""
    from conftest import velocity, velocity_env

    score_model, scores = trained_score_model
    song = mido.MidiFile(scores / TEST_SCORE)
    for track in song.tracks:
        kept = [m for m in track if m.type not in ("set_tempo", "time_signature")]
        track[:] = kept
    bare = tmp_path / "bare_score.mid"
    song.save(str(bare))
    out = tmp_path / "out.mid"
    proc = velocity(["predict", str(bare), "-o", str(out), "--model", str(trained_model), "--score-model", str(score_model),
                     "--timing-model", str(trained_timing_model), "--perform"], velocity_env(tmp_path), tmp_path)  # fmt: skip
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    warnings = [line for line in proc.stderr.splitlines() if line.startswith("WARNING")]
    assert warnings == [f"WARNING velocity.pipeline.predict: {bare}: no tempo: read at MIDI's default 120 quarter notes per minute: "
                        "the overall tempo is the model's guess; set it with the tempo control (--tempo)",
                        f"WARNING velocity.pipeline.predict: {bare}: no time signature: read as 4/4, so the pedal changes on those bars"]  # fmt: skip
    assert f"{bare}: played at timing 1" in proc.stderr
    assert {pitch: len(notes) for pitch, notes in piano_keys(out).items()} == {pitch: len(notes) for pitch, notes in piano_keys(bare).items()}


def test_perform_without_a_timing_model_is_one_clear_line(trained_model, trained_score_model, tmp_path):
    """Through the real command: exit code 1, one error line naming the missing file and how to get one."""
    from conftest import velocity, velocity_env

    score_model, scores = trained_score_model
    missing, out = tmp_path / "no_timing.pt", tmp_path / "out.mid"
    proc = velocity(["predict", str(scores / TEST_SCORE), "-o", str(out), "--model", str(trained_model), "--score-model", str(score_model),
                     "--timing-model", str(missing), "--perform"], velocity_env(tmp_path), tmp_path)  # fmt: skip
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("ERROR")]
    assert errors == [f"ERROR velocity.pipeline.predict: {missing}: no timing model file; train one with `dvc repro timing_train`, or leave out --perform"]
    assert not out.exists()
