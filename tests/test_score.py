"""Scores (velocity/model/score.py): telling a score from a performance, the score columns, and the notated
dynamics features (velocity/model/features.py) that must not depend on a notation program's velocity curve."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import mido
import numpy as np
import pandas as pd
import pytest
from scipy.stats import rankdata

from conftest import SHARED_DATA
from velocity.model.features import note_features
from velocity.model.midi import read_midi
from velocity.model.notes import piece_notes
from velocity.model.score import SCORE_COLUMNS, detect_input_kind, score_table

TINY_SCORES_ZIP = SHARED_DATA / "asap-maestro-v3.0.0-tiny-scores.zip"
NOTATED = ["notated_rank", "notated_z", "notated_change", "notated_flat"]
REASON = re.compile(r"^(\d+)% of onsets on a 1/96-beat grid, (\d+)% of chord notes struck on the same tick$")


def write_midi(path: Path, notes: list[tuple[int, int, int, int]], tpq: int, meta: list[tuple[int, mido.MetaMessage]] = (),
               type_0: bool = False) -> Path:  # fmt: skip
    """notes: (start tick, pitch, length in ticks, velocity); meta: (tick, message), in a conductor
    track before the piano's (or in the one track of a type-0 file)."""
    def track(events: list[tuple[int, int, mido.Message]]) -> mido.MidiTrack:
        out, last = mido.MidiTrack(), 0
        for tick, _, msg in sorted(events, key=lambda e: e[:2]):
            out.append(msg.copy(time=tick - last))
            last = tick
        return out

    meta_events = [(tick, 0, msg) for tick, msg in meta]
    note_events = [(t, 2, mido.Message("note_on", note=p, velocity=v)) for t, p, _, v in notes]
    note_events += [(t + length, 1, mido.Message("note_off", note=p)) for t, p, length, _ in notes]  # a release before a press on one tick
    mid = mido.MidiFile(type=0 if type_0 else 1, ticks_per_beat=tpq)
    mid.tracks.extend([track(meta_events + note_events)] if type_0 else [track(meta_events), track(note_events)])
    mid.save(path)
    return path


def piece(path: Path):
    return piece_notes(read_midi(path))


def reason_percentages(reason: str) -> tuple[int, int]:
    found = REASON.match(reason)
    assert found, reason
    return int(found[1]), int(found[2])


# ---------------------------------------------------------------------------------------------
# Score or performance?


@pytest.fixture(scope="module")
def tiny_scores(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not TINY_SCORES_ZIP.exists():
        pytest.skip(f"{TINY_SCORES_ZIP} not found: the shared archives sit in ../shared/data beside the repo (CI has them)")
    dest = tmp_path_factory.mktemp("tiny_scores")
    with zipfile.ZipFile(TINY_SCORES_ZIP) as archive:
        archive.extractall(dest)
    return dest / "asap-dataset"


def test_the_tiny_archives_scores_read_as_scores_and_performances_as_performances(tiny_scores, tiny_zip, tmp_path):
    scores = sorted(tiny_scores.rglob("midi_score.mid"))
    assert len(scores) == 10
    for path in scores:
        kind = detect_input_kind(piece(path))
        assert kind.kind == "score", (path, kind.reason)
        on_grid, exact = reason_percentages(kind.reason)
        assert on_grid >= 50 and exact >= 50
    with zipfile.ZipFile(tiny_zip) as archive:
        archive.extractall(tmp_path)
    performances = sorted(tmp_path.rglob("*.midi"))
    assert len(performances) == 10
    for path in performances:
        kind = detect_input_kind(piece(path))
        assert kind.kind == "performance", (path, kind.reason)
        on_grid, exact = reason_percentages(kind.reason)
        assert on_grid < 50 or exact < 50


def daw_part() -> list[tuple[float, int, float, int]]:
    """Four bars of a quantized part in quarters: (onset, pitch, length, velocity), a 16th-note
    melody over block chords on every beat, all at one velocity."""
    melody = [72, 74, 76, 79, 77, 76, 74, 72]
    part = [(step / 4, melody[step % 8], 0.25, 100) for step in range(64)]
    part += [(float(beat), pitch, 1.0, 100) for beat in range(16) for pitch in ((48, 55, 60) if beat % 2 == 0 else (43, 50, 59))]
    return part


def test_a_quantized_daw_file_is_a_score_and_the_same_played_loosely_is_a_performance(tmp_path):
    tempo = [(0, mido.MetaMessage("set_tempo", tempo=500_000))]  # no time signature
    tpq = 96
    quantized = write_midi(tmp_path / "daw.mid", [(round(b * tpq), p, round(n * tpq), v) for b, p, n, v in daw_part()], tpq, tempo, type_0=True)
    kind = detect_input_kind(piece(quantized))
    assert kind.kind == "score"
    assert kind.reason == "100% of onsets on a 1/96-beat grid, 100% of chord notes struck on the same tick"
    table = score_table(piece(quantized))
    assert (table["bar_length"] == 4.0).all()  # no time signature: 4/4, as MIDI says
    assert (table["notated_velocity"] == 100).all()

    # The same part at 480 ticks per quarter, every onset moved 5..15 ticks (about 5..16 ms at 120 bpm) either way.
    tpq = 480
    rng = np.random.default_rng(7)
    part = daw_part()
    jitter = rng.integers(5, 16, len(part)) * rng.choice([-1, 1], len(part))
    played = [(round(b * tpq) + int(j) + tpq, p, round(n * tpq), v) for (b, p, n, v), j in zip(part, jitter)]  # a beat of lead-in: no tick < 0
    loose = write_midi(tmp_path / "played.mid", played, tpq, tempo, type_0=True)
    kind = detect_input_kind(piece(loose))
    assert kind.kind == "performance", kind.reason
    on_grid, exact = reason_percentages(kind.reason)
    assert on_grid < 50 and exact < 50
    # The exact grid fraction: ticks that are multiples of 5 (480 / 96) after the jitter.
    assert on_grid == round(100 * np.mean(np.array([t for t, *_ in played]) % 5 == 0))

    # At 96 ticks per quarter every tick is on the grid: only the chords tell a "humanized" part
    # (onsets moved 0..3 ticks, 0..16 ms, later) from a score.
    tpq = 96
    late = np.random.default_rng(8).integers(0, 4, len(part))
    humanized = write_midi(tmp_path / "humanized.mid", [(round(b * tpq) + int(j), p, round(n * tpq), v) for (b, p, n, v), j in zip(part, late)],
                           tpq, tempo, type_0=True)  # fmt: skip
    kind = detect_input_kind(piece(humanized))
    on_grid, exact = reason_percentages(kind.reason)
    assert kind.kind == "performance" and on_grid == 100 and exact < 50, kind.reason


# ---------------------------------------------------------------------------------------------
# The score columns


def test_score_table_under_changing_meters_and_tempi(tmp_path):
    """3/4 for two bars, then 6/8; 120 bpm, 80 bpm from the second bar, 150 bpm from the fourth."""
    tpq = 480
    meta = [
        (0, mido.MetaMessage("time_signature", numerator=3, denominator=4)),
        (0, mido.MetaMessage("set_tempo", tempo=500_000)),  # 120 quarters a minute
        (1440, mido.MetaMessage("set_tempo", tempo=750_000)),  # 80, from bar 2's downbeat
        (2880, mido.MetaMessage("time_signature", numerator=6, denominator=8)),  # bar 3
        (4320, mido.MetaMessage("set_tempo", tempo=400_000)),  # 150, from bar 4
    ]
    notes = [  # (tick, pitch, length, velocity)
        (0, 60, 480, 50),  # bar 1 (3/4), beat 1
        (960, 64, 240, 60),  # bar 1, beat 3
        (1440, 67, 480, 70),  # bar 2's downbeat
        (2160, 65, 360, 71),  # bar 2, halfway through its second beat
        (2880, 48, 1440, 80),  # bar 3 (6/8)'s downbeat: a chord
        (2880, 72, 720, 81),
        (3600, 74, 240, 82),  # bar 3, its second dotted quarter
        (4320, 76, 240, 90),  # bar 4's downbeat, at 150 bpm
        (4560, 77, 120, 91),  # bar 4, an eighth in
    ]
    table = score_table(piece(write_midi(tmp_path / "meters.mid", notes, tpq, meta)))
    assert list(table.columns[-len(SCORE_COLUMNS):]) == SCORE_COLUMNS
    assert table["pitch"].tolist() == [60, 64, 67, 65, 48, 72, 74, 76, 77]
    assert table["beat"].tolist() == [0.0, 2.0, 3.0, 4.5, 6.0, 6.0, 7.5, 9.0, 9.5]
    assert table["beat_duration"].tolist() == [1.0, 0.5, 1.0, 0.75, 3.0, 1.5, 0.5, 0.5, 0.25]
    assert table["bar_position"].tolist() == [0.0, 2.0, 0.0, 1.5, 0.0, 0.0, 1.5, 0.0, 0.5]
    assert table["bar_length"].tolist() == [3.0] * 4 + [3.0] * 5  # 3/4 and 6/8 bars are both 3 quarters long ...
    assert table["tempo"].tolist() == [120.0, 120.0, 80.0, 80.0, 80.0, 80.0, 80.0, 150.0, 150.0]
    assert table["notated_velocity"].tolist() == [50, 60, 70, 71, 80, 81, 82, 90, 91]
    assert table["notated_velocity"].dtype == np.int16
    # Seconds follow the tempo map: 1.5 s for 3 beats at 120, then 0.75 s a beat at 80, 0.4 s at 150.
    np.testing.assert_allclose(table["start"], [0.0, 1.0, 1.5, 2.625, 3.75, 3.75, 4.875, 6.0, 6.2], atol=1e-12)
    # ... but not the same phase: the features put 6/8's second dotted quarter halfway through the bar.
    features = note_features(table, ["bar_phase", "downbeat", "beat_phase"])
    assert features["downbeat"].tolist() == [1, 0, 1, 0, 1, 1, 0, 1, 0]
    assert features["bar_phase"].tolist() == [0.0, 2 / 3, 0.0, 0.5, 0.0, 0.0, 0.5, 0.0, 0.5 / 3]


def test_a_time_signature_in_mid_bar_starts_a_new_bar(tmp_path):
    meta = [(0, mido.MetaMessage("time_signature", numerator=4, denominator=4)),
            (480, mido.MetaMessage("time_signature", numerator=2, denominator=4))]  # a pickup beat, then 2/4  # fmt: skip
    table = score_table(piece(write_midi(tmp_path / "pickup.mid", [(0, 60, 480, 64), (480, 62, 480, 64), (1440, 64, 480, 64)], 480, meta)))
    assert table["bar_position"].tolist() == [0.0, 0.0, 0.0]
    assert table["bar_length"].tolist() == [4.0, 2.0, 2.0]


# ---------------------------------------------------------------------------------------------
# Notated dynamics, whatever the velocity curve


def remapped(table: pd.DataFrame, curve) -> pd.DataFrame:
    out = table.copy()
    out["notated_velocity"] = np.rint(curve(table["notated_velocity"].to_numpy(dtype=np.float64))).astype(np.int16)
    return out


def other_curve(v: np.ndarray) -> np.ndarray:
    return 127 * (v / 127) ** 0.6


def assert_curve_does_not_matter(table: pd.DataFrame) -> pd.DataFrame:
    velocity = np.unique(table["notated_velocity"])
    assert len(np.unique(np.rint(other_curve(velocity.astype(np.float64))))) == len(velocity)  # the other curve keeps every level apart
    before = note_features(table, NOTATED)
    after = note_features(remapped(table, other_curve), NOTATED)
    assert not np.array_equal(table["notated_velocity"], remapped(table, other_curve)["notated_velocity"])
    np.testing.assert_array_equal(before["notated_rank"], after["notated_rank"])
    np.testing.assert_array_equal(before["notated_flat"], after["notated_flat"])
    assert (before["notated_flat"] == 0).all()
    np.testing.assert_array_equal(rankdata(before["notated_z"]), rankdata(after["notated_z"]))  # same order, ties and all
    assert before.notna().all().all() and after.notna().all().all()
    return before


def test_notated_dynamics_survive_another_velocity_curve_on_a_hand_made_score(tmp_path):
    """p, a crescendo hairpin to f, f, then a sudden pp: eighth notes of a scale."""
    levels = [49] * 16 + [55, 61, 67, 73, 79, 85, 91] + [96] * 16 + [33] * 16
    notes = [(240 * i, 60 + i % 12, 240, v) for i, v in enumerate(levels)]
    table = score_table(piece(write_midi(tmp_path / "dynamics.mid", notes, 480)))
    features = assert_curve_does_not_matter(table)
    assert features["notated_rank"].tolist() == list((rankdata(levels) - 0.5) / len(levels))
    z = features["notated_z"].to_numpy()
    assert z[16:23].tolist() == sorted(z[16:23].tolist()) and z[23] > z[0] > z[-1]  # the hairpin rises; f above p above pp
    change = features["notated_change"].to_numpy()
    assert change[23] > 0 and change[39] < 0  # the f arrives above its neighbourhood; the pp drops below it

    # An affine curve (another program's scale, shifted) leaves even the z-scores as they were.
    affine = note_features(remapped(table, lambda v: 2 * v - 20), NOTATED)
    np.testing.assert_allclose(affine["notated_z"], features["notated_z"], atol=1e-12)
    np.testing.assert_allclose(affine["notated_change"], features["notated_change"], atol=1e-12)


def test_notated_dynamics_survive_another_velocity_curve_on_a_real_score(tiny_scores):
    table = score_table(piece(tiny_scores / "Liszt" / "Concert_Etude_S145" / "2" / "midi_score.mid"))
    assert table["notated_velocity"].nunique() > 5  # MuseScore's dynamics, hairpins among them
    assert_curve_does_not_matter(table)


@pytest.mark.parametrize("velocity", [64, 80])
def test_a_flat_score_is_never_read_as_dynamics(tmp_path, velocity):
    notes = [(240 * i, 60 + i % 12, 240, velocity) for i in range(40)]
    table = score_table(piece(write_midi(tmp_path / "flat.mid", notes, 480)))
    features = note_features(table, NOTATED)
    assert (features["notated_flat"] == 1).all()
    assert (features["notated_rank"] == 0.5).all()
    assert (features["notated_z"] == 0).all() and (features["notated_change"] == 0).all()
    other = 144 - velocity  # the other of 64 and 80: the same features
    other_features = note_features(remapped(table, lambda v: np.full_like(v, other)), NOTATED)
    pd.testing.assert_frame_equal(features, other_features)


def test_a_real_flat_score_is_flat(tiny_scores):
    """The Bach scores keep one velocity (80) throughout: no markings at all."""
    table = score_table(piece(tiny_scores / "Bach" / "Fugue" / "bwv_854" / "midi_score.mid"))
    assert (table["notated_velocity"] == 80).all()
    features = note_features(table, NOTATED)
    assert (features["notated_flat"] == 1).all() and (features["notated_rank"] == 0.5).all() and (features["notated_z"] == 0).all()


def test_notation_dropout_hides_a_windows_dynamics_as_a_flat_score_reads():
    """The training augmentation replaces the notated features of whole windows by exactly the ids
    a score without markings gets, and touches nothing else."""
    import torch

    from velocity.model.features import feature_ids, flat_notation_ids
    from velocity.model.training import hide_notation

    edges = {"notated_rank": [0.0, 0.25, 0.5, 0.75, 1.0], "chord_size": [0.5, 1.5, 2.5], "notated_flat": [-0.5, 0.5, 1.5]}
    flat_ids = flat_notation_ids(edges)
    flat_table = pd.DataFrame({"pitch": [60, 64], "start": [0.0, 0.5], "duration": [0.5, 0.5], "dstart": [0.5, 0.5],
                               "beat": [0.0, 1.0], "beat_duration": [1.0, 1.0], "bar_position": [0.0, 1.0],
                               "bar_length": [4.0, 4.0], "tempo": [120.0, 120.0], "notated_velocity": [80, 80]})  # fmt: skip
    assert flat_ids == {0: int(feature_ids(flat_table, edges)[0, 0]), 2: int(feature_ids(flat_table, edges)[0, 2])}

    torch.manual_seed(0)
    src = torch.tensor([[5, 6, 0], [7, 8, 9]])
    features = torch.tensor([[[1, 1, 1], [4, 2, 1], [0, 0, 0]], [[1, 2, 1], [2, 1, 1], [3, 2, 1]]])
    _, _, always = hide_notation((src, src, features), flat_ids, 1.0)
    assert torch.equal(always[..., 1], features[..., 1])  # chord_size untouched
    assert torch.equal(always[0, 2], features[0, 2])  # padding stays padding
    assert (always[1, :, 0] == flat_ids[0]).all() and (always[1, :, 2] == flat_ids[2]).all()
    _, _, never = hide_notation((src, src, features), flat_ids, 0.0)
    assert torch.equal(never, features)


def test_a_steady_passage_has_no_notated_change(tmp_path):
    """Inside a long run at one level the change is exactly 0, not float noise: the quantile edges
    learned on train would otherwise split the noise into bins of their own."""
    levels = [49] * 100 + [96] * 100 + [70] * 100
    notes = [(240 * i, 60 + i % 12, 240, v) for i, v in enumerate(levels)]
    change = note_features(score_table(piece(write_midi(tmp_path / "steady.mid", notes, 480))), NOTATED)["notated_change"].to_numpy()
    steady = np.r_[20:80, 120:180, 220:280]
    assert (change[steady] == 0).all()
    assert change[100] > 0 and change[200] < 0
