"""The align stage (velocity/stages/align.py): score time -> performance time through paired beats, and each
score note paired with the pianist's note. Hand-built pairs with a known time map first, then a tiny
hand-made ASAP folder through `align()`, then the tiny shared archives through the real pipeline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import mido
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from conftest import ROOT, SHARED_DATA, stage_error
from velocity.stages.align import ALIGNED_COLUMNS, AlignParams, align, align_pair, beat_map, match_notes, read_beats
from velocity.stages.extract import NOTE_SCHEMA

# The tiny MAESTRO archive's 10 rows plus 4 ASAP-only performances (../shared/data/README.md).
TINY_SCORES_ZIP = SHARED_DATA / "asap-all-tiny-scores.zip"
SPLITS = ("train", "validation", "test")


def notes(pitch, start, velocity=64, duration: float = 0.2) -> pd.DataFrame:
    """A notes table with what align_pair reads (pitch, start) and a little more."""
    start = np.asarray(start, dtype=np.float64)
    return pd.DataFrame({
        "pitch": np.asarray(pitch, dtype=np.int16), "start": start, "end": start + duration,
        "velocity": np.broadcast_to(np.asarray(velocity, dtype=np.int16), start.shape).copy(),
    })  # fmt: skip


# ---------------------------------------------------------------------------------------------
# A tempo change: the map is np.interp between the beats, linear beyond them


# Score beats every 0.5 s from 0.5 s; the performance's 0.5 s apart from 2.0 s for 8 beats, then 0.8 s.
TEMPO_SCORE_BEATS = 0.5 + 0.5 * np.arange(16)
TEMPO_PERF_BEATS = np.concatenate([2.0 + 0.5 * np.arange(8), 5.5 + 0.8 * np.arange(1, 9)])
# (score time, performance time), computed by hand.
TEMPO_MAP = [
    (0.1, 1.6),  # a pickup before the first beat: the first beats' tempo (1 s per s) backwards from 2.0
    (0.5, 2.0),  # the first beat
    (1.75, 3.25),  # halfway between beats 2 and 3
    (4.0, 5.5),  # beat 7, the last at the first tempo
    (4.25, 5.9),  # halfway into the first slow beat: 5.5 + 0.4
    (4.5, 6.3),  # beat 8
    (5.6, 8.06),  # beat 10 (7.9) + 0.1 s of score at 1.6 s per s
    (8.0, 11.9),  # the last beat
    (8.5, 12.7),  # after the last beat: the last beats' tempo, 1.6 s per score second
    (9.0, 13.5),
]


def test_beat_map_through_a_tempo_change_is_piecewise_linear_and_linear_beyond_the_ends():
    assert np.diff(TEMPO_PERF_BEATS)[:7].tolist() == [0.5] * 7
    np.testing.assert_allclose(np.diff(TEMPO_PERF_BEATS)[7:], 0.8)
    beats = beat_map(TEMPO_SCORE_BEATS, TEMPO_PERF_BEATS, skipped_beat=0.05)
    score_time, expected = np.array(TEMPO_MAP).T
    np.testing.assert_allclose(beats(score_time), expected, rtol=0, atol=1e-12)
    inside = (score_time >= TEMPO_SCORE_BEATS[0]) & (score_time <= TEMPO_SCORE_BEATS[-1])
    np.testing.assert_allclose(beats(score_time[inside]), np.interp(score_time[inside], TEMPO_SCORE_BEATS, TEMPO_PERF_BEATS), rtol=0, atol=1e-12)
    assert not beats.skipped.any() and not beats.in_skipped(score_time).any()


def test_every_note_pairs_through_a_tempo_change_despite_timing_noise_and_decoys():
    score_time, mapped = np.array(TEMPO_MAP).T
    pitch = np.array([60, 64, 67, 72, 62, 65, 69, 71, 60, 64])
    noise = np.array([0.03, -0.03, 0.02, -0.025, 0.03, -0.01, 0.0, -0.03, 0.015, 0.03])
    # The pianist's notes (with noise) and, at each exact mapped onset, a wrong-pitch decoy a semitone up.
    perf = pd.concat([notes(pitch, mapped + noise, velocity=np.arange(10) + 30), notes(pitch + 1, mapped, velocity=1)], ignore_index=True)
    shuffle = np.random.default_rng(0).permutation(len(perf))
    perf = perf.iloc[shuffle].reset_index(drop=True)
    score = notes(pitch, score_time)
    match, counts = align_pair(score, perf, beat_map(TEMPO_SCORE_BEATS, TEMPO_PERF_BEATS, 0.05), tolerance=0.1)
    assert (match >= 0).all()
    assert perf["velocity"].to_numpy()[match].tolist() == list(range(30, 40))  # each note its own performance note
    assert (perf["pitch"].to_numpy()[match] == pitch).all()
    np.testing.assert_allclose(perf["start"].to_numpy()[match], mapped + noise)
    assert counts == {"score_notes": 10, "skipped_by_pianist": 0, "matched": 10, "performance_notes": 20}
    # Through a wrong map (the first tempo throughout) the notes after the change land 0.25 s and more off: unpaired.
    wrong = beat_map(TEMPO_SCORE_BEATS, 2.0 + 0.5 * np.arange(16), 0.05)
    wrong_match, _ = align_pair(score, perf, wrong, tolerance=0.1)
    assert (wrong_match[:4] >= 0).all() and (wrong_match[4:] == -1).all()


# ---------------------------------------------------------------------------------------------
# A skipped repeat: ASAP squeezes the skipped beats into a few milliseconds


def test_notes_in_a_skipped_repeat_stay_unpaired_and_the_notes_after_it_pair():
    score_beats = 0.5 * np.arange(16)  # beats 0..15 at 0, 0.5, .., 7.5 s
    perf_beats = np.concatenate([1.0 + 0.5 * np.arange(9),  # beats 0..8 at 1.0 .. 5.0
                                 5.0 + 0.003 * np.arange(1, 5),  # beats 9..12: 4 beats in 12 ms (skipped)
                                 5.012 + 0.5 * np.arange(1, 4)])  # beats 13..15 at 5.512 .. 6.512  # fmt: skip
    beats = beat_map(score_beats, perf_beats, skipped_beat=0.05)
    assert beats.skipped.tolist() == [False] * 8 + [True] * 4 + [False] * 3
    score_time = np.array([1.0, 2.5, 3.75, 4.0, 4.5, 5.25, 5.9, 6.0, 6.5, 7.25])
    pitch = np.array([60, 62, 64, 70, 71, 72, 73, 65, 67, 69])
    assert beats.in_skipped(score_time).tolist() == [False] * 3 + [True] * 4 + [False] * 3
    expected = {0: 2.0, 1: 3.5, 2: 4.75, 7: 5.012, 8: 5.512, 9: 6.262}  # score note -> its performance onset
    np.testing.assert_allclose(beats(score_time[list(expected)]), list(expected.values()), atol=1e-12)
    # The played notes, and notes of the skipped notes' pitches right where the squeezed beats map
    # them (5.0..5.012): without the skip rule they would pair.
    played = notes(pitch[list(expected)], list(expected.values()), velocity=[10, 11, 12, 17, 18, 19])
    near_skip = notes(pitch[3:7], [5.0, 5.004, 5.008, 5.012], velocity=99)
    perf = pd.concat([near_skip, played], ignore_index=True)
    match, counts = align_pair(notes(pitch, score_time), perf, beats, tolerance=0.2)
    assert (match[3:7] == -1).all()
    assert perf["velocity"].to_numpy()[match[list(expected)]].tolist() == [10, 11, 12, 17, 18, 19]
    assert counts == {"score_notes": 10, "skipped_by_pianist": 4, "matched": 6, "performance_notes": 10}
    # With no skip rule (skipped_beat 0) the squeezed beats' notes would pair with the notes near them.
    unskipped, _ = align_pair(notes(pitch, score_time), perf, beat_map(score_beats, perf_beats, 0.0), tolerance=0.2)
    assert (unskipped[3:7] >= 0).all()


# ---------------------------------------------------------------------------------------------
# Ornaments: a written-out trill played with more notes


def test_a_trill_played_with_more_notes_pairs_one_to_one_within_the_tolerance():
    tolerance = 0.2
    score_beats, perf_beats = np.arange(8.0), np.arange(8.0) + 0.5  # the performance half a second later
    written = 2.0 + np.arange(8) / 8  # 8 notes in one beat: 72 74 72 74 ...
    played = 2.5 + np.arange(11) / 11  # 11 notes over the same beat
    score = notes(np.concatenate([[60], np.where(np.arange(8) % 2, 74, 72), [76]]), np.concatenate([[1.0], written, [5.0]]))
    perf = notes(
        np.concatenate([[60], np.where(np.arange(11) % 2, 74, 72), [76, 77]]),
        np.concatenate([[1.5], played, [5.5 + 0.25, 5.5]]),  # 76 a quarter second off (beyond the tolerance); 77 a wrong-pitch decoy
    )  # fmt: skip
    beats = beat_map(score_beats, perf_beats, 0.05)
    match, counts = align_pair(score, perf, beats, tolerance)
    trill = match[1:9]
    assert (trill >= 0).all(), trill  # every written note of the trill found a played one
    assert len(set(match[match >= 0].tolist())) == (match >= 0).sum()  # no performance note used twice
    paired = np.flatnonzero(match >= 0)
    assert (perf["pitch"].to_numpy()[match[paired]] == score["pitch"].to_numpy()[paired]).all()
    assert (np.abs(perf["start"].to_numpy()[match[paired]] - beats(score["start"].to_numpy()[paired])) <= tolerance).all()
    assert match[0] == 0 and match[-1] == -1  # 76: its only same-pitch note is 0.25 s away
    assert counts["matched"] == 9 and counts["skipped_by_pianist"] == 0


def test_match_notes_is_one_to_one_and_the_nearest_candidate_wins():
    # Two score notes of one pitch near a single performance note: only the nearer gets it.
    pitch = np.array([60, 60])
    assert match_notes(pitch, np.array([1.0, 1.05]), np.array([60]), np.array([1.04]), 0.2).tolist() == [-1, 0]
    assert match_notes(pitch, np.array([1.05, 1.0]), np.array([60]), np.array([1.04]), 0.2).tolist() == [0, -1]
    # The nearer takes its note, the other takes the next nearest one still free.
    assert match_notes(pitch, np.array([1.0, 1.05]), np.array([60, 60]), np.array([1.04, 0.9]), 0.2).tolist() == [1, 0]
    # A different pitch is never a candidate, however close; `tolerance` is inclusive.
    assert match_notes(np.array([60, 62]), np.array([1.0, 2.0]), np.array([61, 62]), np.array([1.0, 2.25]), 0.25).tolist() == [-1, 1]
    assert match_notes(np.array([62]), np.array([2.0]), np.array([62]), np.array([2.5]), 0.25).tolist() == [-1]
    # Nothing to match on either side.
    assert match_notes(np.array([], dtype=np.int16), np.array([]), np.array([60]), np.array([1.0]), 0.2).tolist() == []
    assert match_notes(pitch, np.array([1.0, 2.0]), np.array([], dtype=np.int16), np.array([]), 0.2).tolist() == [-1, -1]


def test_read_beats_reads_asap_annotations_and_names_a_bad_file(tmp_path):
    from velocity.stages.align import AlignError

    path = tmp_path / "a_annotations.txt"
    path.write_text("0.25\t0.25\tdb,3/4,-3\n0.75\t0.75\tb\n\n1.25\t1.25\tb\n")
    assert read_beats(path).tolist() == [0.25, 0.75, 1.25]
    path.write_text("0.25\t0.25\tdb\nbeat\tb\n")
    with pytest.raises(AlignError, match="a_annotations.txt: not an ASAP annotation file"):
        read_beats(path)
    with pytest.raises(AlignError, match="no such annotation file"):
        read_beats(tmp_path / "missing.txt")


# ---------------------------------------------------------------------------------------------
# The stage on a tiny hand-made ASAP folder


TPQ = 480  # the score: 120 bpm, so a beat is 0.5 s
SCORE_NOTES = [(tick * TPQ, pitch) for tick, pitch in enumerate([60, 62, 64, 65, 67, 69, 71, 72, 74, 72, 71, 69, 67, 65, 64, 62])]
SCORE_NOTES += [(4 * TPQ, 48), (8 * TPQ, 43)]  # two chords: a bass note under beats 4 and 8
SCORE_NOTES.sort()
N_BEATS = 16


def write_score_midi(path: Path) -> None:
    mid = mido.MidiFile(type=1, ticks_per_beat=TPQ)
    conductor = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=500_000, time=0),
                                mido.MetaMessage("time_signature", numerator=4, denominator=4, time=0)])  # fmt: skip
    events = sorted([(t, 1, mido.Message("note_on", note=p, velocity=80)) for t, p in SCORE_NOTES]
                    + [(t + TPQ // 2, 0, mido.Message("note_off", note=p)) for t, p in SCORE_NOTES], key=lambda e: e[:2])  # fmt: skip
    piano, last = mido.MidiTrack(), 0
    for tick, _, msg in events:
        piano.append(msg.copy(time=tick - last))
        last = tick
    mid.tracks.extend([conductor, piano])
    mid.save(path)


def write_annotations(path: Path, times: np.ndarray) -> None:
    path.write_text("".join(f"{t:.6f}\t{t:.6f}\t{'db,4/4,0' if i % 4 == 0 else 'b'}\n" for i, t in enumerate(times)))


def performance(piece_id: str, split: str, beats: np.ndarray, velocity: np.ndarray, keep: np.ndarray | None = None) -> pd.DataFrame:
    """The score's notes played through `beats` (one per score beat), as the extract stage writes them."""
    score_time = np.array([t / TPQ * 0.5 for t, _ in SCORE_NOTES])
    pitch = np.array([p for _, p in SCORE_NOTES])
    start = np.interp(score_time, 0.5 * np.arange(N_BEATS), beats) + np.resize([0.01, -0.02, 0.0, 0.015], len(pitch))
    keep = np.ones(len(pitch), dtype=bool) if keep is None else keep
    table = pd.DataFrame({"pitch": pitch, "start": start, "velocity": velocity})[keep]
    table = table.sort_values(["start", "pitch"]).reset_index(drop=True)
    table["end"] = table["start"] + 0.3
    table["duration"] = 0.3
    table["dstart"] = np.append(np.diff(table["start"]), 0.3)
    table["pedal"] = 0
    source = "asap" if piece_id.endswith(".mid") else "maestro"
    return table.assign(piece_id=piece_id, composer="Composer X", title=f"Canonical {piece_id}", split=split, source=source)


def write_notes(notes_dir: Path, pieces: list[pd.DataFrame]) -> None:
    notes_dir.mkdir(parents=True)
    table = pd.concat(pieces, ignore_index=True)
    for split in SPLITS:
        part = table[table["split"] == split][NOTE_SCHEMA.names]
        pq.write_table(pa.Table.from_pandas(part, schema=NOTE_SCHEMA, preserve_index=False), notes_dir / f"{split}.parquet")


@pytest.fixture
def hand_made(tmp_path: Path) -> dict:
    """An ASAP folder of one piece and five performances (rows A..E; E is ASAP-only), and the notes
    of the performances."""
    scores_dir, folder = tmp_path / "asap-dataset", "Comp/Work/Piece"
    (scores_dir / folder).mkdir(parents=True)
    write_score_midi(scores_dir / folder / "midi_score.mid")
    write_annotations(scores_dir / folder / "midi_score_annotations.txt", 0.5 * np.arange(N_BEATS))
    beats = {"A": 1.0 + 0.6 * np.arange(N_BEATS), "B": 0.3 + 0.5 * np.arange(N_BEATS - 1),  # B: one beat short
             "C": 0.5 * np.arange(N_BEATS), "D": 0.4 + 0.55 * np.arange(N_BEATS), "E": 0.2 + 0.45 * np.arange(N_BEATS)}  # fmt: skip
    for name, times in beats.items():
        write_annotations(scores_dir / folder / f"{name}_annotations.txt", times)
    rows = {"A": "2019/recA.midi", "B": "2019/recB.midi", "C": "2019/recC.midi", "D": "2019/recD.midi", "E": None}
    pd.DataFrame([{
        "composer": "Comp", "title": "Piece_A", "folder": folder, "xml_score": f"{folder}/xml_score.musicxml",
        "midi_score": f"{folder}/midi_score.mid", "midi_performance": f"{folder}/{name}.mid",
        "performance_annotations": f"{folder}/{name}_annotations.txt", "midi_score_annotations": f"{folder}/midi_score_annotations.txt",
        "maestro_midi_performance": "{maestro}/" + maestro if maestro else "", "maestro_audio_performance": "", "start": "", "end": "", "audio_performance": "",
    } for name, maestro in rows.items()]).to_csv(scores_dir / "metadata.csv", index=False)  # fmt: skip
    n = len(SCORE_NOTES)
    missed = np.ones(n, dtype=bool)
    missed[5] = False  # D's pianist left out the 6th score note
    pieces = [
        performance("2019/recA__Piece_A.midi", "train", beats["A"], 30 + np.arange(n)),  # A: the suffixed name ...
        performance("2019/recA.midi", "test", beats["A"], np.full(n, 127)),  # ... beside the plain one: suffixed first
        performance("2019/recB.midi", "test", 0.3 + 0.5 * np.arange(N_BEATS), np.full(n, 50)),
        performance("2019/recC__Another_piece.midi", "train", beats["C"], np.full(n, 40)),  # C: not its name
        performance("2019/recD.midi", "validation", beats["D"], 100 - np.arange(n), keep=missed),  # D: plain name only
        performance(f"{folder}/E.mid", "train", beats["E"], np.full(n, 77)),  # E: ASAP-only, named by its file
    ]
    write_notes(tmp_path / "notes", pieces)
    return {"scores": scores_dir, "notes": tmp_path / "notes", "out": tmp_path / "aligned", "folder": folder, "n": n}


def test_align_stage_on_a_hand_made_asap_folder(hand_made):
    report = align(hand_made["scores"], hand_made["notes"], hand_made["out"], AlignParams(tolerance=0.2, skipped_beat=0.05))
    folder, n = hand_made["folder"], hand_made["n"]
    assert (report["rows"], report["aligned"], report["skipped"]) == (5, 3, 2)
    skipped = {row["performance"]: row["reason"] for row in report["skipped_rows"]}
    assert skipped == {
        f"{folder}/B_annotations.txt": "15 beats annotated in the performance, 16 in the score: cannot pair them",
        f"{folder}/C_annotations.txt": "its MAESTRO performance '{maestro}/2019/recC.midi' is not in the notes "
                                       "(data.source, or left out by extract: data/notes/report.json)",
    }  # fmt: skip
    by_piece = {p["piece_id"]: p for p in report["performances"]}
    assert set(by_piece) == {"2019/recA__Piece_A.midi", "2019/recD.midi", f"{folder}/E.mid"}
    assert by_piece["2019/recA__Piece_A.midi"]["split"] == "train" and by_piece["2019/recA__Piece_A.midi"]["match_rate"] == 1.0
    assert by_piece["2019/recD.midi"]["split"] == "validation" and by_piece["2019/recD.midi"]["matched"] == n - 1
    assert by_piece[f"{folder}/E.mid"]["source"] == "asap" and by_piece[f"{folder}/E.mid"]["match_rate"] == 1.0
    assert report["train"]["performances"] == 2 and report["test"]["performances"] == 0
    assert report["all"] == {"performances": 3, "score_notes": 3 * n, "matched": 3 * n - 1, "match_rate": round((3 * n - 1) / (3 * n), 4)}
    assert report["by_source"] == {"asap": {"train": 1, "validation": 0, "test": 0}, "maestro": {"train": 1, "validation": 1, "test": 0}}

    tables = {split: pd.read_parquet(hand_made["out"] / f"{split}.parquet") for split in SPLITS}
    assert all(list(t.columns) == ALIGNED_COLUMNS for t in tables.values())
    assert len(tables["test"]) == 0  # B's performance (test) was skipped, and A's plain-named decoy never used
    every = pd.concat(tables.values(), ignore_index=True)
    assert not every["piece_id"].isin(["2019/recB.midi", "2019/recA.midi", "2019/recC__Another_piece.midi"]).any()

    e = tables["train"][tables["train"]["source"] == "asap"]
    assert (e["piece_id"] == f"{folder}/E.mid").all() and e["velocity"].eq(77).all()
    a = tables["train"][tables["train"]["source"] == "maestro"]
    assert (a["piece_id"] == "2019/recA__Piece_A.midi").all() and (a["score_id"] == folder).all()
    assert a["score_note"].tolist() == list(range(n)) and a["pitch"].tolist() == [p for _, p in SCORE_NOTES]
    np.testing.assert_allclose(a["start"], [t / TPQ * 0.5 for t, _ in SCORE_NOTES])  # score time at the notated tempo
    assert a["velocity"].tolist() == list(range(30, 30 + n))  # each score note got its own performance note's velocity
    assert (a["composer"] == "Composer X").all() and (a["title"] == "Canonical 2019/recA__Piece_A.midi").all()
    assert (a["notated_velocity"] == 80).all() and (a["tempo"] == 120.0).all() and (a["bar_length"] == 4.0).all()
    d = tables["validation"]
    assert (d["piece_id"] == "2019/recD.midi").all()
    expected = 100 - np.arange(n)
    expected[5] = -1
    assert d["velocity"].tolist() == expected.tolist()
    assert d["performance_start"].isna().tolist() == [i == 5 for i in range(n)]
    assert d["performance_end"].isna().tolist() == [i == 5 for i in range(n)]


# ---------------------------------------------------------------------------------------------
# The tiny shared archives through the real pipeline: download -> extract -> align


@pytest.fixture(scope="module")
def tiny_pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tiny MIDI archive downloaded and extracted into notes, and the tiny scores unzipped."""
    from conftest import TINY_ZIP
    from velocity.stages.download import download
    from velocity.stages.extract import extract_notes

    for path in (TINY_ZIP, TINY_SCORES_ZIP):
        if not path.exists():
            pytest.skip(f"{path} not found: the shared archives sit in ../shared/data beside the repo (CI has them)")
    root = tmp_path_factory.mktemp("tiny_align")
    raw = download(str(TINY_ZIP), root / "raw", downloads_dir=root / "downloads", lock_path=root / "downloads.lock.json")
    with zipfile.ZipFile(TINY_SCORES_ZIP) as archive:
        archive.extractall(root / "scores")
    report = extract_notes(raw, root / "notes", False, 1, scores_dir=root / "scores" / "asap-dataset")
    return {"root": root, "raw": raw, "notes": root / "notes", "scores": root / "scores" / "asap-dataset", "extract": report}


def test_tiny_archives_extract_the_asap_only_performances_with_their_piece_split(tiny_pipeline):
    """The 4 ASAP-only rows: two of Chopin's op. 10 no. 5, whose MAESTRO performance is in validation,
    and two of pieces with no MAESTRO performance, which go to train."""
    report = tiny_pipeline["extract"]
    assert report["files_listed_by_source"] == {"maestro": {"train": 6, "validation": 2, "test": 2},
                                                "asap": {"train": 2, "validation": 2, "test": 0}}  # fmt: skip
    assert report["files_read"] == 14 and report["asap_rows_left_out"] == []
    notes = pd.concat([pd.read_parquet(tiny_pipeline["notes"] / f"{s}.parquet") for s in SPLITS], ignore_index=True)
    asap = notes[notes["source"] == "asap"].groupby("piece_id")["split"].first().to_dict()
    assert asap == {"Chopin/Etudes_op_10/5/Bach02.mid": "validation", "Chopin/Etudes_op_10/5/USHIKI03.mid": "validation",
                    "Chopin/Etudes_op_25/8/Toscano02.mid": "train", "Bach/Prelude/bwv_866/SOLOM02.mid": "train"}  # fmt: skip
    # Read through the same reader and note rules as MAESTRO's files: the same note count as a direct read.
    from velocity.model.notes import read_piece

    direct = read_piece(tiny_pipeline["scores"] / "Chopin/Etudes_op_10/5/USHIKI03.mid", False).notes
    assert (notes["piece_id"] == "Chopin/Etudes_op_10/5/USHIKI03.mid").sum() == len(direct) > 0


def test_tiny_archives_align_with_high_match_rates(tiny_pipeline):
    out = tiny_pipeline["root"] / "aligned"
    report = align(tiny_pipeline["scores"], tiny_pipeline["notes"], out, AlignParams(tolerance=0.2, skipped_beat=0.05))
    print({split: report[split]["match_rate"] for split in (*SPLITS, "all")})
    assert report["rows"] == 14 and report["aligned"] + report["skipped"] == 14
    assert len(report["performances"]) == report["aligned"] and len(report["skipped_rows"]) == report["skipped"]
    assert all(row["reason"] for row in report["skipped_rows"])
    assert report["all"]["match_rate"] > 0.8
    # Every row whose two annotation files hold equally many beats is aligned (its performance is in the notes).
    scores = tiny_pipeline["scores"]
    metadata = pd.read_csv(scores / "metadata.csv", dtype=str, keep_default_na=False)
    pairable = [len(read_beats(scores / row.performance_annotations)) == len(read_beats(scores / row.midi_score_annotations))
                for row in metadata.itertuples()]  # fmt: skip
    assert report["aligned"] == sum(pairable) and sum(pairable) >= 12
    assert sum(report["by_source"]["asap"].values()) == 4

    maestro = pd.read_csv(tiny_pipeline["raw"] / "maestro-v3.0.0.csv")
    maestro_split = dict(zip(maestro["midi_filename"], maestro["split"]))
    maestro_split.update({row.midi_performance: row.split for row in pd.concat(
        [pd.read_parquet(tiny_pipeline["notes"] / f"{s}.parquet", columns=["piece_id", "split", "source"]) for s in SPLITS]
    ).query("source == 'asap'").rename(columns={"piece_id": "midi_performance"}).itertuples()})  # the extract stage's split
    # No piece (ASAP's composer and title) in two splits.
    piece_of = {row.folder: f"{row.composer}/{row.title}" for row in metadata.itertuples()}
    aligned = pd.concat([pd.read_parquet(out / f"{s}.parquet", columns=["score_id", "split"]) for s in SPLITS])
    assert aligned.assign(piece=aligned["score_id"].map(piece_of)).groupby("piece")["split"].nunique().max() == 1
    performance_notes = pd.concat([pd.read_parquet(tiny_pipeline["notes"] / f"{s}.parquet") for s in SPLITS], ignore_index=True)
    for split in SPLITS:
        table = pd.read_parquet(out / f"{split}.parquet")
        assert list(table.columns) == ALIGNED_COLUMNS
        assert (table["split"] == split).all()
        assert table["piece_id"].map(maestro_split).eq(split).all()  # the MAESTRO csv's split of the performance
        unpaired = table["performance_start"].isna()
        assert ((table["velocity"] == -1) == unpaired).all()
        assert (table.loc[~unpaired, "velocity"] >= 1).all()
        # Every paired note is a real note of its performance: same piece, same onset, same pitch, same velocity.
        paired = table.loc[~unpaired, ["piece_id", "performance_start", "pitch", "velocity"]]
        found = paired.merge(performance_notes[["piece_id", "start", "pitch", "velocity"]],
                             left_on=["piece_id", "performance_start", "pitch"], right_on=["piece_id", "start", "pitch"],
                             how="left", suffixes=("", "_played"), indicator=True)  # fmt: skip
        assert (found["_merge"] == "both").all(), found[found["_merge"] != "both"].head()
        assert (found["velocity"] == found["velocity_played"]).all()
        # One to one: no performance note paired twice.
        assert not paired.duplicated(["piece_id", "performance_start", "pitch"]).any()
        for piece_id, part in table.groupby("piece_id"):
            assert part["score_note"].tolist() == list(range(len(part)))
    assert sum(r["score_notes"] for r in report["performances"]) == sum(len(pd.read_parquet(out / f"{s}.parquet")) for s in SPLITS)


def test_align_command_writes_report_json(tiny_pipeline, tmp_path):
    (tmp_path / "params.yaml").write_text("align:\n  tolerance: 0.2\n  skipped_beat: 0.05\n")
    out = tmp_path / "data" / "aligned"
    proc = subprocess.run(
        [sys.executable, "-m", "velocity.stages.align", str(tiny_pipeline["scores"]), str(tiny_pipeline["notes"]), "data/aligned"],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["rows"] == 14 and len(report["performances"]) == report["aligned"]
    rates = {p["piece_id"]: p["match_rate"] for p in report["performances"]}
    assert all(0.0 <= rate <= 1.0 for rate in rates.values()) and min(rates.values()) > 0.5
    assert all(p["matched"] <= p["score_notes"] and p["split"] in SPLITS for p in report["performances"])
    assert all((out / f"{split}.parquet").is_file() for split in SPLITS)
    assert f"wrote data/aligned ({report['aligned']} performances aligned" in proc.stderr


def test_align_command_refuses_bad_params_and_a_missing_metadata_table(tmp_path):
    (tmp_path / "params.yaml").write_text("align:\n  tolerance: 0\n  skipped_beat: 0.05\n")
    (tmp_path / "scores").mkdir()
    proc = subprocess.run([sys.executable, "-m", "velocity.stages.align", "scores", "notes", "out"], cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode != 0 and "align.tolerance must be positive seconds, got 0" in proc.stderr
    assert not (tmp_path / "out").exists()
    (tmp_path / "params.yaml").write_text("align:\n  tolerance: 0.2\n  skipped_beat: 0.05\n")
    assert stage_error(tmp_path, "velocity.stages.align", "scores", "notes", "out") == (
        "align: scores/metadata.csv: no such file (expected ASAP's metadata.csv; run the scores stage)"
    )
