"""The demo corpus: deterministic, in MAESTRO's layout, real MIDI, and velocities with structure."""

from __future__ import annotations

import hashlib
import io
import re
from pathlib import Path

import mido
import numpy as np
import pandas as pd
import pretty_midi
import pytest

from velocity.datasets.demo_corpus import (
    ASAP_COLUMNS,
    ASAP_CSV,
    ASAP_DIR,
    COLUMNS,
    CSV_NAME,
    GRID,
    INNER,
    MAESTRO_DIR,
    MAESTRO_PREFIX,
    MELODY,
    MUSESCORE_VELOCITY,
    TICKS_PER_SECOND,
    UNMARKED_STYLES,
    asap_only_performances,
    assign_splits,
    generate_corpus,
    generate_piece,
    generate_scores,
)

# The performance file of seed 0, piece 0, as the generator wrote it before the scores were added:
# generating scores must not change a single random draw of the performances.
PIECE_0_SHA256 = "6d90f6efcf66299308a358c574f944abd5b214f8373f2cb99bf697bc668e4b99"
SCORE_PIECES = 10


def corpus_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def pieces() -> list:
    """The first 30 pieces of the default corpus (seed 0)."""
    return [generate_piece(0, i) for i in range(30)]


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    first = corpus_files(generate_corpus(tmp_path / "a", n_pieces=6, seed=3))
    second = corpus_files(generate_corpus(tmp_path / "b", n_pieces=6, seed=3))
    other = corpus_files(generate_corpus(tmp_path / "c", n_pieces=6, seed=4))
    assert first == second
    assert len(first) == 6 + 3  # MIDI files, csv, json, README
    midi_first = {k: v for k, v in first.items() if k.endswith(".midi")}
    midi_other = {k: v for k, v in other.items() if k.endswith(".midi")}
    assert not set(midi_first.values()) & set(midi_other.values())


def test_piece_depends_only_on_seed_and_index(tmp_path):
    small = generate_corpus(tmp_path / "small", n_pieces=4, seed=0)
    large = generate_corpus(tmp_path / "large", n_pieces=7, seed=0)
    small_rows = pd.read_csv(small / CSV_NAME)
    large_rows = pd.read_csv(large / CSV_NAME)
    for name in small_rows["midi_filename"]:
        assert (small / name).read_bytes() == (large / name).read_bytes()
    assert list(large_rows["midi_filename"][:4]) == list(small_rows["midi_filename"])


def test_layout_csv_and_splits(tmp_path):
    root = generate_corpus(tmp_path, n_pieces=20, seed=0)
    assert root == tmp_path / MAESTRO_DIR
    table = pd.read_csv(root / CSV_NAME)
    assert list(table.columns) == COLUMNS
    assert table["split"].value_counts().to_dict() == {"train": 16, "validation": 2, "test": 2}
    assert table["midi_filename"].is_unique
    for row in table.itertuples():
        path = root / row.midi_filename
        assert path.is_file()
        assert path.parent.name == str(row.year)  # MIDI files sit in year folders, as in MAESTRO
        assert row.audio_filename.endswith(".wav")
        assert row.canonical_composer.startswith("Demo ")
    json_table = pd.read_json(root / "maestro-v3.0.0.json")
    assert list(json_table["midi_filename"]) == list(table["midi_filename"])


def test_splits_keep_one_piece_each_and_refuse_too_few():
    assert sorted(assign_splits(3, seed=0)) == ["test", "train", "validation"]
    counts = pd.Series(assign_splits(200, seed=0)).value_counts().to_dict()
    assert counts == {"train": 160, "validation": 20, "test": 20}
    with pytest.raises(ValueError, match="at least 3 pieces"):
        assign_splits(2, seed=0)


def test_files_are_two_track_midi_that_pretty_midi_reads_back(tmp_path):
    root = generate_corpus(tmp_path, n_pieces=5, seed=0)
    table = pd.read_csv(root / CSV_NAME)
    for index, row in enumerate(table.itertuples()):
        piece = generate_piece(0, index)
        midi = mido.MidiFile(root / row.midi_filename)
        assert (midi.type, len(midi.tracks), midi.ticks_per_beat) == (1, 2, 480)
        assert [m.type for m in midi.tracks[0]] == ["set_tempo", "time_signature", "end_of_track"]
        # Note-offs are velocity-0 note-ons; every note-on has its note-off.
        note_ons = [m for m in midi.tracks[1] if m.type == "note_on"]
        assert sum(m.velocity > 0 for m in note_ons) == sum(m.velocity == 0 for m in note_ons) == len(piece.pitch)

        pm = pretty_midi.PrettyMIDI(str(root / row.midi_filename))
        assert len(pm.instruments) == 1 and pm.instruments[0].program == 0
        notes = sorted(pm.instruments[0].notes, key=lambda n: (n.start, n.pitch))
        np.testing.assert_allclose([n.start for n in notes], piece.start, atol=1e-9)
        np.testing.assert_allclose([n.end for n in notes], piece.end, atol=1e-9)
        assert [n.pitch for n in notes] == piece.pitch.tolist()
        assert [n.velocity for n in notes] == piece.velocity.tolist()
        assert all(n.end > n.start for n in notes)
        assert row.duration == pytest.approx(pm.get_end_time(), abs=1 / TICKS_PER_SECOND)
        assert 21 <= piece.pitch.min() and piece.pitch.max() <= 108


def test_pedal_is_continuous_in_pedalled_pieces(pieces):
    values = []
    for piece in pieces:
        pm = pretty_midi.PrettyMIDI(io.BytesIO(piece.midi))
        values += [cc.value for cc in pm.instruments[0].control_changes if cc.number == 64]
    values = np.array(values)
    assert len(values) > 1000
    assert np.mean((values > 0) & (values < 127)) > 0.8  # like MAESTRO: mostly neither 0 nor 127
    assert (values >= 64).any() and (values < 64).any()


def test_pieces_vary_in_meter_tempo_size_and_style(pieces):
    assert {p.beats_per_bar for p in pieces} == {3, 4}
    bpm = [p.bpm for p in pieces]
    assert max(bpm) - min(bpm) > 40
    sizes = [len(p.pitch) for p in pieces]
    assert min(sizes) >= 250 and max(sizes) <= 1000 and np.median(sizes) > 400
    assert len({p.composer for p in pieces}) == 5


def test_notes_have_length_and_a_key_is_released_before_it_is_struck_again(pieces):
    for piece in pieces:
        assert np.all(piece.end - piece.start >= 0.02)
        for q in np.unique(piece.pitch):
            on_key = piece.pitch == q
            start, end = piece.start[on_key], piece.end[on_key]  # sorted by start
            assert np.all(end[:-1] < start[1:])


def test_velocities_follow_the_expressive_model_not_pitch(pieces):
    velocity = np.concatenate([p.velocity for p in pieces]).astype(float)
    expected = np.concatenate([p.expected_velocity for p in pieces])
    pitch = np.concatenate([p.pitch for p in pieces])
    role = np.concatenate([p.role for p in pieces])

    model_mae = np.abs(velocity - expected).mean()  # only the noise is left
    # Baselines fitted in-sample on these very notes, which flatters them.
    pitch_means = {q: velocity[pitch == q].mean() for q in np.unique(pitch)}
    per_pitch_mae = np.abs(velocity - np.array([pitch_means[q] for q in pitch])).mean()
    flat_mae = np.abs(velocity - np.median(velocity)).mean()
    assert model_mae < 3.5
    assert per_pitch_mae > 2.5 * model_mae
    assert flat_mae > per_pitch_mae

    # One pitch in both roles: the melody note is clearly louder than the same key in the chords.
    gaps = []
    for q in np.unique(pitch):
        melody, inner = velocity[(pitch == q) & (role == MELODY)], velocity[(pitch == q) & (role == INNER)]
        if len(melody) >= 30 and len(inner) >= 30:
            gaps.append(melody.mean() - inner.mean())
    assert len(gaps) >= 8
    assert np.mean(gaps) > 10

    assert 40 < velocity.mean() < 90 and 8 < velocity.std() < 25


def test_phrases_swell_toward_their_peak(pieces):
    """Within a phrase, notes around 45-80% of its length are louder than those at its edges."""
    swells = []
    for piece in pieces:
        for k in np.unique(piece.phrase):
            in_phrase = piece.phrase == k
            start = piece.start[in_phrase]
            u = (start - start.min()) / max(start.max() - start.min(), 1e-9)
            # Compare notes of one role only, so the texture cannot fake a swell.
            for role in (MELODY, INNER):
                v = piece.velocity[in_phrase][piece.role[in_phrase] == role].astype(float)
                r = u[piece.role[in_phrase] == role]
                middle, edges = v[(r > 0.45) & (r < 0.8)], v[(r < 0.15) | (r > 0.95)]
                if len(middle) >= 3 and len(edges) >= 3:
                    swells.append(middle.mean() - edges.mean())
    assert len(swells) > 100
    assert np.mean(swells) > 4
    assert np.mean(np.array(swells) > 0) > 0.75


# --- the scores (ASAP's layout) ---

def test_performance_bytes_did_not_change(tmp_path):
    root = generate_corpus(tmp_path, n_pieces=3, seed=0)
    first = pd.read_csv(root / CSV_NAME)["midi_filename"][0]
    assert hashlib.sha256((root / first).read_bytes()).hexdigest() == PIECE_0_SHA256


@pytest.fixture(scope="module")
def scores_root(tmp_path_factory) -> Path:
    return generate_scores(tmp_path_factory.mktemp("scores"), n_pieces=SCORE_PIECES, seed=0)


def read_beats(path: Path) -> tuple[np.ndarray, list[str]]:
    lines = [line.split("\t") for line in path.read_text().splitlines()]
    assert all(len(fields) == 3 and fields[0] == fields[1] for fields in lines)
    return np.array([float(fields[0]) for fields in lines]), [fields[2] for fields in lines]


def read_notes(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(onset seconds, pitch, velocity) of a one-instrument MIDI file."""
    (instrument,) = pretty_midi.PrettyMIDI(str(path)).instruments
    notes = sorted(instrument.notes, key=lambda n: (n.start, n.pitch))
    return np.array([n.start for n in notes]), np.array([n.pitch for n in notes]), np.array([n.velocity for n in notes])


def row_pieces() -> list[tuple[int, int]]:
    """(piece index, pianist) of each metadata row: the corpus's performances, then the ASAP-only ones."""
    return [(index, 0) for index in range(SCORE_PIECES)] + asap_only_performances(SCORE_PIECES, seed=0)


def test_scores_layout_pairs_every_performance_of_the_corpus(scores_root, tmp_path):
    assert scores_root.name == ASAP_DIR
    everything = pd.read_csv(scores_root / ASAP_CSV, keep_default_na=False)
    assert list(everything.columns) == ASAP_COLUMNS and len(everything) == len(row_pieces())
    table, asap_only = everything.iloc[:SCORE_PIECES], everything.iloc[SCORE_PIECES:]
    corpus = generate_corpus(tmp_path / "corpus", n_pieces=SCORE_PIECES, seed=0)
    performances = pd.read_csv(corpus / CSV_NAME)
    assert [n.removeprefix(MAESTRO_PREFIX) for n in table["maestro_midi_performance"]] == list(performances["midi_filename"])
    assert list(table["title"]) == list(performances["canonical_title"])
    for row in table.itertuples():
        assert " " not in row.folder and row.folder.startswith("Demo/")
        for name in (row.midi_score, row.midi_performance, row.performance_annotations, row.midi_score_annotations):
            assert name.startswith(row.folder + "/") and (scores_root / name).is_file()
        maestro = corpus / row.maestro_midi_performance.removeprefix(MAESTRO_PREFIX)
        assert (scores_root / row.midi_performance).read_bytes() == maestro.read_bytes()
        assert row.xml_score == "" and row.start == 0 and row.end == pytest.approx(pretty_midi.PrettyMIDI(str(maestro)).get_end_time())

    # ASAP-only rows: no MAESTRO recording; another pianist of a corpus piece's score, or a piece
    # the corpus does not have; every split has one.
    assert (asap_only["maestro_midi_performance"] == "").all() and len(asap_only) >= 4
    folders = dict(zip(table["folder"], table["midi_performance"]))
    splits = assign_splits(SCORE_PIECES, seed=0)
    assert {splits[index] for index, _ in asap_only_performances(SCORE_PIECES, seed=0) if index < SCORE_PIECES} == {"train", "validation", "test"}
    assert (~asap_only["folder"].isin(folders)).sum() == 1  # a piece beyond the corpus
    for row in asap_only.itertuples():
        assert (scores_root / row.midi_performance).is_file() and (scores_root / row.performance_annotations).is_file()
        if row.folder in folders:
            assert (scores_root / row.midi_performance).read_bytes() != (scores_root / folders[row.folder]).read_bytes()

    again = generate_scores(tmp_path / "again", n_pieces=SCORE_PIECES, seed=0)
    assert corpus_files(again) == corpus_files(scores_root)


def test_score_midi_is_on_the_grid_at_the_notated_tempo_meter_and_key(scores_root):
    table = pd.read_csv(scores_root / ASAP_CSV, keep_default_na=False)
    for (index, _), row in zip(row_pieces(), table.itertuples()):
        piece = generate_piece(0, index)
        midi = mido.MidiFile(scores_root / row.midi_score)
        assert (midi.type, len(midi.tracks), midi.ticks_per_beat) == (1, 2, 480)
        meta = {m.type: m for m in midi.tracks[0]}
        assert mido.tempo2bpm(meta["set_tempo"].tempo) == pytest.approx(piece.bpm, rel=1e-5)
        assert (meta["time_signature"].numerator, meta["time_signature"].denominator) == (piece.beats_per_bar, 4)
        tick, onsets = 0, []
        for message in midi.tracks[1]:
            tick += message.time
            if message.type == "note_on" and message.velocity > 0:
                onsets.append(tick)
        assert np.all(np.array(onsets) % (480 // GRID) == 0)  # on the grid: chords exactly together
        # Every written note is there, played or not (a unison of two voices is one MIDI note).
        assert len(onsets) == len(set(zip(piece.score.onset, piece.score.pitch)))


def breath_beat(performed_start: np.ndarray, performed_beats: np.ndarray, index: int) -> np.ndarray:
    """True for performance notes after the beat of a phrase's last beat: the pianist breathes
    before the next phrase there, which interpolating between the beats cannot know."""
    score = generate_piece(0, index).score
    last = (score.phrase_start + score.phrase_steps) // GRID - 1
    low = performed_beats[last] + 0.02
    high = np.append(performed_beats[last[:-1] + 1], np.inf)
    return ((performed_start[:, None] >= low) & (performed_start[:, None] < high)).any(axis=1)


def test_score_maps_onto_the_performance_through_the_beats(scores_root):
    """The true pairing: score time -> performance time through the paired beats puts a score note
    of the same pitch within 40 ms of every performed note; louder markings are played louder."""
    table = pd.read_csv(scores_root / ASAP_CSV, keep_default_na=False)
    checked_levels = 0
    for (index, _), row in zip(row_pieces(), table.itertuples()):
        score_beats, score_labels = read_beats(scores_root / row.midi_score_annotations)
        performed_beats, performed_labels = read_beats(scores_root / row.performance_annotations)
        assert score_labels == performed_labels and len(score_beats) == len(performed_beats)
        beats = generate_piece(0, index).beats_per_bar
        assert re.fullmatch(rf"db,{beats}/4,-?\d", score_labels[0])
        assert score_labels[1:beats + 1] == ["b"] * (beats - 1) + ["db"]
        assert np.all(np.diff(score_beats) > 0) and np.all(np.diff(performed_beats) > 0)

        score_start, score_pitch, score_velocity = read_notes(scores_root / row.midi_score)
        mapped = np.interp(score_start, score_beats, performed_beats)
        start, pitch, velocity = read_notes(scores_root / row.midi_performance)
        error, marking = np.empty(len(start)), np.empty(len(start), dtype=int)
        for i in range(len(start)):
            same = np.flatnonzero(score_pitch == pitch[i])
            nearest = same[np.argmin(np.abs(mapped[same] - start[i]))]
            error[i] = abs(mapped[nearest] - start[i])
            marking[i] = np.searchsorted(sorted(MUSESCORE_VELOCITY.values()), score_velocity[nearest], side="right") - 1
        assert error[~breath_beat(start, performed_beats, index)].max() < 0.040
        assert np.mean(error < 0.040) > 0.98

        if row.composer not in UNMARKED_STYLES:
            levels = np.unique(marking)
            assert len(levels) >= 2
            means = [velocity[marking == level].mean() for level in levels]
            assert np.all(np.diff(means) > 0), (row.title, means)
            checked_levels += 1
    assert checked_levels >= 5


def test_scores_without_markings_are_flat_and_marked_ones_use_musescore_levels(pieces):
    from velocity.datasets.demo_corpus import score_midi

    flat = marked = 0
    for piece in pieces:
        pm = pretty_midi.PrettyMIDI(io.BytesIO(score_midi(piece.score)))
        velocities = {n.velocity for n in pm.instruments[0].notes}
        if piece.composer in UNMARKED_STYLES:
            assert velocities == {80}
            flat += 1
        else:
            levels = {max(m for m in MUSESCORE_VELOCITY.values() if m <= v) for v in velocities}
            assert len(levels) >= 2 and levels <= set(MUSESCORE_VELOCITY.values())
            assert all(v - max(m for m in MUSESCORE_VELOCITY.values() if m <= v) <= 8 for v in velocities)  # hairpins
            marked += 1
    assert flat >= 3 and marked >= 10
