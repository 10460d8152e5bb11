"""The extract stage on tiny MIDI files built here with mido, and on the tiny shared MAESTRO archive."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mido
import numpy as np
import pandas as pd
import pretty_midi
import pyarrow.parquet as pq
import pytest
import symusic

from velocity.model.midi import MidiError, read_midi, ticks_to_seconds
from velocity.model.notes import add_timing, read_notes, read_piece
from velocity.stages.extract import NOTE_SCHEMA, CsvError, extract_notes, main, read_csv

TPQ = 480
NOTE_COLUMNS = ["pitch", "start", "end", "duration", "dstart", "velocity", "pedal"]
CSV_HEADER = ["canonical_composer", "canonical_title", "split", "year", "midi_filename", "audio_filename", "duration"]


def note(pitch: int, on: int, off: int, velocity: int = 64, channel: int = 0) -> list[tuple[int, mido.Message]]:
    """A key press and release in ticks; the release is a velocity-0 note-on, as MAESTRO writes it."""
    return [
        (on, mido.Message("note_on", note=pitch, velocity=velocity, channel=channel)),
        (off, mido.Message("note_on", note=pitch, velocity=0, channel=channel)),
    ]


def pedal(tick: int, value: int) -> list[tuple[int, mido.Message]]:
    return [(tick, mido.Message("control_change", control=64, value=value))]


def write_midi(
    path: Path,
    *tracks: list[tuple[int, mido.Message]],
    tempos: tuple[tuple[int, int], ...] = ((0, 500_000),),
    tpq: int = TPQ,
) -> Path:
    """A type-1 file: track 0 holds the tempo map (tick, microseconds per quarter), then `tracks`."""
    mid = mido.MidiFile(type=1, ticks_per_beat=tpq)
    for events in [[(t, mido.MetaMessage("set_tempo", tempo=us)) for t, us in tempos], *tracks]:
        track = mido.MidiTrack()
        last = 0
        # Stable sort: events on one tick keep their listed order (a zero-length note: press, release).
        for tick, msg in sorted(events, key=lambda e: e[0]):
            track.append(msg.copy(time=tick - last))
            last = tick
        mid.tracks.append(track)
    mid.save(path)
    return path


def sec(seconds: float) -> int:
    """Ticks of `seconds` at 120 bpm and TPQ ticks per quarter (960 ticks a second)."""
    return round(seconds * 2 * TPQ)


def pretty_midi_notes(path: Path) -> pd.DataFrame:
    """Every non-drum note pretty_midi reads, sorted like extract sorts."""
    pm = pretty_midi.PrettyMIDI(str(path))
    rows = [(n.start, n.pitch, n.end, n.velocity) for inst in pm.instruments if not inst.is_drum for n in inst.notes]
    notes = pd.DataFrame(rows, columns=["start", "pitch", "end", "velocity"])
    return notes.sort_values(["start", "pitch", "end", "velocity"], kind="stable").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# Times


def test_tempo_changes_mid_file_give_exact_seconds(tmp_path):
    # 120 bpm until tick 960 (1.0 s), then 240 bpm until tick 1920 (1.5 s), then 60 bpm.
    path = write_midi(
        tmp_path / "tempo.mid",
        note(60, 0, 480) + note(62, 960, 1440) + note(64, 1440, 2400) + note(65, 2000, 2400),
        tempos=((0, 500_000), (960, 250_000), (1920, 1_000_000)),
    )
    notes = read_notes(path)
    np.testing.assert_array_equal(notes["pitch"], [60, 62, 64, 65])
    np.testing.assert_allclose(notes["start"], [0.0, 1.0, 1.25, 1.5 + 80 / 480], rtol=0, atol=1e-12)
    np.testing.assert_allclose(notes["end"], [0.5, 1.25, 2.5, 2.5], rtol=0, atol=1e-12)
    reference = pretty_midi_notes(path)
    np.testing.assert_allclose(notes["start"], reference["start"], rtol=0, atol=1e-9)
    np.testing.assert_allclose(notes["end"], reference["end"], rtol=0, atol=1e-9)


def test_ticks_before_the_first_tempo_event_run_at_120_bpm(tmp_path):
    path = write_midi(tmp_path / "late_tempo.mid", note(60, 0, 960), tempos=((480, 1_000_000),))
    seconds = ticks_to_seconds(read_midi(path).tempo_map, np.array([0, 240, 480, 960]))
    assert seconds.dtype == np.float64
    np.testing.assert_allclose(seconds, [0.0, 0.25, 0.5, 1.5], rtol=0, atol=1e-12)


def test_ticks_to_seconds_keeps_float64_precision_late_in_a_long_file(tmp_path):
    # An hour in, float32 seconds would be off by ~1e-4 s; float64 must not be.
    ticks = np.array([3600 * 960 + 1])
    path = write_midi(tmp_path / "long.mid", note(60, 0, 10))
    assert abs(ticks_to_seconds(read_midi(path).tempo_map, ticks)[0] - (3600 + 1 / 960)) < 1e-9


# ----------------------------------------------------------------------------------------------
# Note table


def test_dstart_is_gap_to_next_start_and_last_note_gets_its_own_duration(tmp_path):
    # A chord (played top note first in the file), a note, and a last note 0.25 s long.
    path = write_midi(
        tmp_path / "dstart.mid",
        note(64, 0, sec(0.4)) + note(60, 0, sec(0.3)) + note(67, sec(0.5), sec(0.9)) + note(72, sec(1.0), sec(1.25)),
    )
    notes = read_notes(path)
    assert list(notes.columns) == NOTE_COLUMNS
    np.testing.assert_array_equal(notes["pitch"], [60, 64, 67, 72])  # by start, then pitch
    np.testing.assert_allclose(notes["duration"], [0.3, 0.4, 0.4, 0.25], atol=1e-12)
    np.testing.assert_allclose(notes["dstart"], [0.0, 0.5, 0.5, 0.25], atol=1e-12)


def test_add_timing_sorts_any_notes_and_keeps_extra_columns():
    notes = pd.DataFrame(
        {"pitch": [67, 60, 64], "start": [1.0, 0.0, 0.0], "end": [1.5, 2.0, 0.5], "velocity": [90, 70, 80],
         "note_number": [0, 1, 2]}  # fmt: skip
    )
    timed = add_timing(notes)
    assert list(timed.columns) == NOTE_COLUMNS[:-1] + ["note_number"]  # no pedal given, none made up
    np.testing.assert_array_equal(timed["pitch"], [60, 64, 67])
    np.testing.assert_array_equal(timed["note_number"], [1, 2, 0])
    np.testing.assert_allclose(timed["dstart"], [0.0, 1.0, 0.5])
    np.testing.assert_allclose(timed["duration"], [2.0, 0.5, 0.5])
    assert timed["pitch"].dtype == np.int16 and timed["velocity"].dtype == np.int16
    assert notes["pitch"].tolist() == [67, 60, 64]  # the input is left alone


def test_zero_length_note_is_kept_with_zero_duration(tmp_path):
    path = write_midi(tmp_path / "zero.mid", note(60, 0, sec(0.5)) + note(62, sec(0.25), sec(0.25)))
    notes = read_notes(path)
    np.testing.assert_array_equal(notes["pitch"], [60, 62])
    np.testing.assert_allclose(notes["start"], [0.0, 0.25])
    np.testing.assert_allclose(notes["duration"], [0.5, 0.0])
    np.testing.assert_allclose(notes["dstart"], [0.25, 0.0])  # last note: its own (zero) duration


def test_notes_outside_the_88_keys_are_dropped_and_counted(tmp_path):
    path = write_midi(
        tmp_path / "range.mid",
        note(20, 0, 100) + note(21, 10, 100) + note(60, 20, 100) + note(108, 30, 100) + note(109, 40, 100),
    )
    piece = read_piece(path)
    np.testing.assert_array_equal(piece.notes["pitch"], [21, 60, 108])
    assert piece.dropped_out_of_range == 2


def test_drum_channel_notes_are_ignored(tmp_path):
    path = write_midi(
        tmp_path / "drums.mid",
        note(60, 0, 100, velocity=50) + note(36, 0, 100, velocity=120, channel=9) + note(38, 50, 150, channel=9),
    )
    piece = read_piece(path)
    np.testing.assert_array_equal(piece.notes["pitch"], [60])
    np.testing.assert_array_equal(piece.notes["velocity"], [50])
    assert piece.drum_notes_ignored == 2


def test_several_piano_tracks_are_merged(tmp_path):
    upright = [(0, mido.Message("program_change", program=1, channel=1))] + note(48, sec(0.1), sec(0.2), channel=1)
    path = write_midi(tmp_path / "two_pianos.mid", note(60, 0, sec(0.3)), upright)
    np.testing.assert_array_equal(read_notes(path)["pitch"], [60, 48])


SUSTAIN_NOTES = (
    note(60, 0, sec(0.5))  # released under the pedal: sounds until the pedal comes up at 1.5
    + note(62, sec(0.6), sec(0.7))  # released under the pedal, then struck again at 1.0: ends at 1.0
    + note(62, sec(1.0), sec(1.1))  # released under the pedal: ends at 1.5
    + note(67, sec(0.1), sec(2.0))  # held past the pedal's release: never shortened
    + note(64, sec(1.6), sec(1.8))  # pedal up: key press to key release
    + note(72, sec(2.3), sec(2.4))  # pedal down to the end: ends at the last event, 2.6
)
SUSTAIN_PEDAL = (
    pedal(sec(0.2), 100) + pedal(sec(0.4), 80)  # continuous values, both down
    + pedal(sec(1.5), 63)  # just below the threshold: up
    + pedal(sec(2.2), 64) + pedal(sec(2.6), 90)  # 64 is down
)  # fmt: skip


def test_sustain_off_gives_key_press_to_key_release(tmp_path):
    path = write_midi(tmp_path / "sustain.mid", SUSTAIN_NOTES + SUSTAIN_PEDAL)
    notes = read_notes(path, sustain=False)
    np.testing.assert_array_equal(notes["pitch"], [60, 67, 62, 62, 64, 72])
    np.testing.assert_allclose(notes["end"], [0.5, 2.0, 0.7, 1.1, 1.8, 2.4], atol=1e-12)


def test_sustain_on_extends_notes_while_the_pedal_is_down(tmp_path):
    path = write_midi(tmp_path / "sustain.mid", SUSTAIN_NOTES + SUSTAIN_PEDAL)
    notes = read_notes(path, sustain=True)
    np.testing.assert_array_equal(notes["pitch"], [60, 67, 62, 62, 64, 72])
    np.testing.assert_allclose(notes["start"], [0.0, 0.1, 0.6, 1.0, 1.6, 2.3], atol=1e-12)
    np.testing.assert_allclose(notes["end"], [1.5, 2.0, 1.0, 1.5, 1.8, 2.6], atol=1e-12)
    np.testing.assert_allclose(notes["duration"], notes["end"] - notes["start"])


def test_sustain_drops_the_first_of_two_same_key_notes_struck_on_one_tick(tmp_path):
    path = write_midi(
        tmp_path / "double.mid",
        pedal(0, 127) + note(60, sec(0.1), sec(0.2), velocity=40) + note(60, sec(0.1), sec(0.3), velocity=90),
    )
    assert len(read_notes(path, sustain=False)) == 2
    piece = read_piece(path, sustain=True)
    assert len(piece.notes) == 1 and piece.dropped_sustain_duplicates == 1


# ----------------------------------------------------------------------------------------------
# Bad files


def test_bad_files_raise_midi_error_naming_the_file(tmp_path):
    good = write_midi(tmp_path / "good.mid", note(60, 0, 100)).read_bytes()
    (tmp_path / "truncated.mid").write_bytes(good[:30])  # inside the tempo track: no note read
    (tmp_path / "empty.mid").write_bytes(b"")
    (tmp_path / "text.mid").write_text("this is not a MIDI file\n" * 5)
    cases = {"truncated.mid": "no notes .the file ends inside track 1", "empty.mid": "not a readable MIDI",
             "text.mid": "not a readable MIDI", "missing.mid": "no such file"}  # fmt: skip
    for name, problem in cases.items():
        with pytest.raises(MidiError, match=problem) as err:
            read_notes(tmp_path / name)
        assert str(tmp_path / name) in str(err.value)


def write_dataset(raw: Path, rows: list[tuple[str, str, str | None]]) -> None:
    """A MAESTRO-layout folder: the csv (rows of split, midi_filename, composer) and the files."""
    raw.mkdir(parents=True, exist_ok=True)
    with open(raw / "maestro-v3.0.0.csv", "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(CSV_HEADER)
        for split, name, composer in rows:
            out.writerow([composer or "Anon", f"Title of {name}", split, "2024", name, name + ".wav", "1.0"])


def test_bad_files_are_skipped_with_reasons_and_good_files_written(tmp_path):
    raw, out = tmp_path / "raw", tmp_path / "notes"
    (raw / "2024").mkdir(parents=True)
    good_a = note(60, 0, sec(0.5), velocity=30) + note(20, 0, 10) + note(64, sec(1), sec(2))  # 20: below A0
    write_midi(raw / "2024/good_a.midi", good_a)
    write_midi(raw / "2024/good_b.midi", note(70, 0, sec(0.25), velocity=100))
    good = (raw / "2024/good_b.midi").read_bytes()
    (raw / "2024/truncated.midi").write_bytes(good[:30])
    (raw / "2024/empty.midi").write_bytes(b"")
    (raw / "2024/no_notes.midi").write_bytes(write_midi(tmp_path / "x.mid", pedal(0, 127)).read_bytes())
    (raw / "2024/text.midi").write_text("Certainly a MIDI file\n")
    write_midi(raw / "2024/drums.midi", note(36, 0, 100, channel=9))
    violin = [(0, mido.Message("program_change", program=40, channel=1))] + note(76, 0, 100, channel=1)
    write_midi(raw / "2024/violin.midi", violin)
    write_midi(raw / "2024/piano_and_violin.midi", note(60, 0, sec(0.5), velocity=90), violin)  # the violin is ignored
    cut = write_midi(tmp_path / "cut.mid", note(62, 0, sec(0.5), velocity=70) + note(64, sec(1), sec(2), velocity=75)).read_bytes()
    (raw / "2024/cut.midi").write_bytes(cut[: len(cut) - 8])  # 64 loses its release and End of Track: closed at its onset
    write_dataset(
        raw,
        [("train", "2024/good_a.midi", "A"), ("train", "2024/truncated.midi", None),
         ("validation", "2024/empty.midi", None), ("validation", "2024/missing.midi", None),
         ("validation", "2024/text.midi", None), ("validation", "2024/no_notes.midi", None),
         ("test", "2024/drums.midi", None), ("test", "2024/violin.midi", None),
         ("test", "2024/good_b.midi", "B"), ("test", "2024/piano_and_violin.midi", None), ("train", "2024/cut.midi", None)],
    )  # fmt: skip

    report = extract_notes(raw, out, sustain=False, workers=2)

    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == report
    assert (report["files_listed"], report["files_read"], report["files_skipped"]) == (11, 4, 7)
    reasons = report["skipped"]
    assert set(reasons) == {"2024/truncated.midi", "2024/empty.midi", "2024/missing.midi", "2024/text.midi",
                            "2024/no_notes.midi", "2024/drums.midi", "2024/violin.midi"}  # fmt: skip
    assert "no notes (the file ends inside track 1" in reasons["2024/truncated.midi"]
    assert "not a readable MIDI" in reasons["2024/empty.midi"]
    assert "no such file" in reasons["2024/missing.midi"]
    assert "not a readable MIDI" in reasons["2024/text.midi"]
    assert "no notes" in reasons["2024/no_notes.midi"]
    assert "drum" in reasons["2024/drums.midi"]
    assert "no piano notes" in reasons["2024/violin.midi"] and "1 of program 40" in reasons["2024/violin.midi"]
    assert all("2024/" in r for r in reasons.values())  # each reason names its file
    assert report["notes_read"] == 7 and report["notes_written"] == 6 and report["notes_dropped_out_of_range"] == 1
    assert report["splits"]["validation"] == {"files_listed": 4, "files_read": 0, "files_skipped": 4, "notes": 0}
    assert report["splits"]["train"]["notes"] == 4 and report["splits"]["test"]["notes"] == 2
    # Damage worked around and notes left out: counted, and each file's warnings listed.
    assert report["files_truncated"] == 1 and report["notes_closed_at_track_end"] == 1
    assert report["notes_ignored_non_piano_program"] == 1 and report["drum_notes_ignored"] == 0
    assert sorted(report["warnings"]) == ["2024/cut.midi", "2024/good_a.midi", "2024/piano_and_violin.midi"]
    assert any("never released" in w for w in report["warnings"]["2024/cut.midi"])
    assert any("program 40" in w for w in report["warnings"]["2024/piano_and_violin.midi"])

    train = pd.read_parquet(out / "train.parquet")
    assert train["piece_id"].tolist() == ["2024/good_a.midi"] * 2 + ["2024/cut.midi"] * 2
    assert train["composer"].tolist() == ["A", "A", "Anon", "Anon"] and train["split"].tolist() == ["train"] * 4
    np.testing.assert_array_equal(train["velocity"], [30, 64, 70, 75])
    test = pd.read_parquet(out / "test.parquet")
    assert test["piece_id"].tolist() == ["2024/good_b.midi", "2024/piano_and_violin.midi"]
    assert test["title"].tolist() == ["Title of 2024/good_b.midi", "Title of 2024/piano_and_violin.midi"]
    np.testing.assert_array_equal(test["pitch"], [70, 60])
    # A split without a single note still gets its table, with the full schema.
    validation = pq.read_table(out / "validation.parquet")
    assert validation.num_rows == 0 and validation.schema.equals(NOTE_SCHEMA)
    assert pd.read_parquet(out / "validation.parquet").dtypes.equals(train.dtypes)
    written = sorted(p.name for p in out.iterdir())  # no temporary files left behind
    assert written == ["report.json", "test.parquet", "train.parquet", "validation.parquet"]


def test_csv_with_unknown_split_or_missing_column_is_an_error(tmp_path):
    write_dataset(tmp_path / "a", [("training", "x.midi", None)])
    with pytest.raises(CsvError, match="unknown split"):
        read_csv(tmp_path / "a" / "maestro-v3.0.0.csv")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "maestro-v3.0.0.csv").write_text("split,midi_filename\ntrain,x.midi\n")
    with pytest.raises(CsvError, match="canonical_composer"):
        read_csv(tmp_path / "b" / "maestro-v3.0.0.csv")
    with pytest.raises(CsvError, match="no such file"):
        extract_notes(tmp_path / "nowhere", tmp_path / "out", sustain=False, workers=1)


# ----------------------------------------------------------------------------------------------
# Real MAESTRO files


def test_every_note_matches_pretty_midi_on_the_tiny_archive(tiny_raw):
    table = read_csv(tiny_raw / "maestro-v3.0.0.csv")
    resolutions = set()
    for name in table["midi_filename"]:
        path = tiny_raw / name
        resolutions.add(symusic.Score(str(path), ttype="tick").ticks_per_quarter)
        ours, reference = read_notes(path), pretty_midi_notes(path)
        assert len(ours) == len(reference), name
        np.testing.assert_array_equal(ours["pitch"], reference["pitch"], err_msg=name)
        np.testing.assert_array_equal(ours["velocity"], reference["velocity"], err_msg=name)
        np.testing.assert_allclose(ours["start"], reference["start"], rtol=0, atol=1e-9, err_msg=name)
        np.testing.assert_allclose(ours["end"], reference["end"], rtol=0, atol=1e-9, err_msg=name)
    assert resolutions == {384, 480}


def test_stage_on_the_tiny_archive_writes_every_piece_in_csv_order(tiny_raw, tmp_path):
    report = extract_notes(tiny_raw, tmp_path / "two", sustain=False, workers=2)
    assert report["files_read"] == 10 and report["files_skipped"] == 0
    assert {s: c["notes"] for s, c in report["splits"].items()} == {"train": 7806, "validation": 2711, "test": 3772}
    table = read_csv(tiny_raw / "maestro-v3.0.0.csv")
    extract_notes(tiny_raw, tmp_path / "one", sustain=False, workers=1)
    for split in ("train", "validation", "test"):
        notes = pd.read_parquet(tmp_path / "two" / f"{split}.parquet")
        assert list(notes.columns) == [f.name for f in NOTE_SCHEMA]
        assert notes["pitch"].dtype == np.int16 and notes["velocity"].dtype == np.int16
        assert all(notes[c].dtype == np.float64 for c in ("start", "end", "duration", "dstart"))
        assert notes["pitch"].between(21, 108).all() and notes["velocity"].between(1, 127).all()
        listed = table.loc[table["split"] == split, "midi_filename"].tolist()
        assert notes["piece_id"].unique().tolist() == listed  # csv order
        for piece_id, piece in notes.groupby("piece_id", sort=False):
            expected = read_notes(tiny_raw / piece_id)
            pd.testing.assert_frame_equal(piece[NOTE_COLUMNS].reset_index(drop=True), expected)
            start, pitch = piece["start"].to_numpy(), piece["pitch"].to_numpy()
            assert np.all((np.diff(start) > 0) | ((np.diff(start) == 0) & (np.diff(pitch) >= 0)))
        # One process or two: the same table.
        pd.testing.assert_frame_equal(notes, pd.read_parquet(tmp_path / "one" / f"{split}.parquet"))


def test_main_reads_params_and_writes_outputs(tiny_raw, tmp_path, monkeypatch):
    (tmp_path / "params.yaml").write_text("extract:\n  sustain: true\n  workers: 1\n")
    monkeypatch.chdir(tmp_path)
    assert main([str(tiny_raw), "notes"]) == 0
    report = json.loads((tmp_path / "notes" / "report.json").read_text())
    assert report["sustain"] is True and report["files_read"] == 10
    sustained = pd.read_parquet(tmp_path / "notes" / "test.parquet")
    plain = pd.concat([read_notes(tiny_raw / p) for p in sustained["piece_id"].unique()], ignore_index=True)
    # The pedal only lengthens notes here (no same-tick re-strikes in these files).
    assert len(sustained) == len(plain)
    assert (sustained["end"].to_numpy() >= plain["end"].to_numpy() - 1e-12).all()
    assert (sustained["end"].to_numpy() > plain["end"].to_numpy()).mean() > 0.3


def test_pedal_is_the_sustain_state_at_each_onset(tmp_path):
    """CC64 >= 64 is down, an event on the onset tick counts, and the state is read with sustain off."""
    path = write_midi(
        tmp_path / "pedal.mid",
        note(60, 0, sec(0.1))  # before any pedal event: up
        + pedal(sec(0.5), 100) + note(62, sec(0.5), sec(0.6))  # pressed on the onset tick: down
        + pedal(sec(0.75), 70) + note(64, sec(1.0), sec(1.1))  # a continuous value >= 64: still down
        + pedal(sec(1.25), 20) + note(65, sec(1.5), sec(1.6)),  # released: up
    )
    notes = read_notes(path)
    assert notes["pitch"].tolist() == [60, 62, 64, 65]
    assert notes["pedal"].tolist() == [0, 1, 1, 0]
