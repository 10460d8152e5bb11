"""The `evaluate` stage: baselines, scores, figures, and a real `dvc repro evaluate` on the demo corpus."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pretty_midi
import pytest
import torch

from conftest import ROOT, dvc, params_section, stage_error
from velocity.midi_writer import write_segment_midi
from velocity.metrics import bin_distance, mae, per_pitch_means
from velocity.stages.evaluate import pick_segments, teacher_forced

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
METRIC_KEYS = {
    "loss", "cross_entropy", "velocity_mae_teacher_forced", "velocity_mae", "bin_distance", "velocity_mae_flat64",
    "velocity_mae_median", "velocity_mae_notes_only", "velocity_mae_per_pitch_mean", "untrained_loss", "untrained_velocity_mae", "notes",
    "velocity_mae_averaged", "velocity_mae_pianist",
    # velocity predict's default decoding, and the tree baseline
    "velocity_mae_predict", "velocity_r_predict", "velocity_std_ratio_predict", "velocity_mae_centred_predict",
    "velocity_mae_macro_predict", "velocity_mae_gbt",
    # the same over the whole test split, ASAP-only performances included
    "velocity_mae_predict_all", "velocity_r_predict_all", "velocity_std_ratio_predict_all", "velocity_mae_gbt_all",
    "velocity_mae_flat64_all", "notes_all", "pieces_all",
}  # fmt: skip


def test_per_pitch_means_fall_back_to_the_global_train_mean():
    train = pd.DataFrame({"pitch": [60, 60, 62, 70], "velocity": [50, 70, 80, 40]})
    means = per_pitch_means(train)
    assert means.shape == (128,)
    assert means[60] == 60 and means[62] == 80 and means[70] == 40
    assert means[21] == means[108] == 60  # (50 + 70 + 80 + 40) / 4: never seen in train


def test_every_decoding_has_a_metric_and_figures_name_a_decoding():
    from velocity.model.decodings import DECODINGS
    from velocity import params as params_lib
    from velocity.stages.evaluate import EvaluateParams

    assert {how.metric for how in DECODINGS.values()} <= METRIC_KEYS
    with pytest.raises(params_lib.ParamsError, match="evaluate.figures"):
        params_section(EvaluateParams, "evaluate", figures="beam")


def test_bin_distance_and_mae():
    edges = [0.0, 57.0, 74.0, 128.0]
    assert bin_distance(np.array([10, 60, 100, 56]), np.array([100, 60, 10, 57]), edges) == pytest.approx((2 + 0 + 2 + 1) / 4)
    assert mae(np.array([64, 64]), np.array([60, 70])) == 5.0


def test_teacher_forced_scores_match_the_training_loops_validation():
    """The stage's loss and teacher-forced MAE are the numbers `train` reports for the same windows."""
    from velocity.model.training import Windows, evaluate
    from velocity.model.transformer import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(src_vocab=30, tgt_vocab=131, layers=1, heads=2, d_model=16, d_ff=32, dropout=0.1, max_len=12, aligned=False,
                                    kind="encoder-decoder", features=())).eval()
    rng = np.random.default_rng(0)
    src = rng.integers(3, 30, size=(7, 12)).astype(np.int16)
    tgt = rng.integers(3, 131, size=(7, 12)).astype(np.int16)
    src[-1, 5:] = tgt[-1, 5:] = 0  # a padded short piece
    ours = teacher_forced(model, Windows(src, tgt), smoothing=0.1, batch_windows=3)
    theirs = evaluate(model, Windows(src, tgt), torch.device("cpu"), smoothing=0.1, batch_size=4, loss="kl")
    assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-5)
    assert ours["velocity_mae_teacher_forced"] == pytest.approx(theirs["mae"], rel=1e-6)
    # Without smoothing the label-smoothed KL is the cross-entropy.
    assert teacher_forced(model, Windows(src, tgt), 0.0, 7)["loss"] == pytest.approx(ours["cross_entropy"], rel=1e-5)


def test_dynamics_scores_on_known_numbers():
    from velocity.metrics import dynamics_scores

    true = np.array([40.0, 60.0, 80.0, 100.0])
    piece = np.array(["a", "a", "b", "b"])
    scores = dynamics_scores(true / 2 + 30, true, piece, "x")  # half the spread, perfectly correlated
    assert scores["velocity_r_x"] == pytest.approx(1.0)
    assert scores["velocity_std_ratio_x"] == pytest.approx(0.5)
    assert scores["velocity_mae_x"] == pytest.approx(np.mean(np.abs(true / 2 + 30 - true)))
    # within each piece: prediction -5, +5 around its mean, truth -10, +10
    assert scores["velocity_mae_centred_x"] == pytest.approx(5.0)
    assert scores["velocity_mae_macro_x"] == pytest.approx(np.mean([np.mean([10, 0]), np.mean([10, 20])]))


def test_segments_come_from_the_middle_of_the_first_pieces():
    notes = pd.DataFrame({"piece_id": ["a"] * 10 + ["b"] * 3 + ["c"] * 5})
    segments = pick_segments(notes, count=2, notes=4)
    np.testing.assert_array_equal(segments[0], [3, 4, 5, 6])
    np.testing.assert_array_equal(segments[1], [10, 11, 12])  # shorter than a segment: all of it


def test_segment_midi_round_trips(tmp_path):
    segment = pd.DataFrame({"pitch": [60, 64, 67], "start": [10.0, 10.5, 11.0], "end": [10.4, 11.0, 12.0], "velocity": [50, 60, 70]})
    path = tmp_path / "segment.mid"
    write_segment_midi(segment, np.array([0, 90, 127]), path)
    notes = pretty_midi.PrettyMIDI(str(path)).instruments[0].notes
    assert [n.velocity for n in notes] == [1, 90, 127]  # 0 would be a note-off
    assert [n.pitch for n in notes] == [60, 64, 67]
    np.testing.assert_allclose([n.start for n in notes], [0.0, 0.5, 1.0], atol=2e-3)
    np.testing.assert_allclose([n.end for n in notes], [0.4, 1.0, 2.0], atol=2e-3)


@pytest.mark.slow
def test_dvc_repro_evaluate_beats_the_baselines_on_the_demo_corpus(demo_run):
    """The demo run (conftest.DEMO_RUN: a short training, 200 steps, on a small demo corpus, every
    stage through `dvc repro`). With no velocity hint every decoding must beat both baselines, so the
    model learned dynamics from the notes and windows, batched decoding, stitching and scoring line
    up. Measured at these settings: greedy 0.77 x flat-64 and 0.85 x per-pitch; medians fed back
    0.79 x per-pitch; notes-only 0.81 x per-pitch; the score model 0.67 x flat-64; tempo r 0.63
    against the score's 0.0; pedal accuracy 0.79 against 0.25."""
    project = demo_run["project"]

    metrics = json.loads((project / "metrics/evaluate.json").read_text())
    assert METRIC_KEYS <= set(metrics)
    every_test_note = pd.read_parquet(project / "data/notes/test.parquet")
    # The plain keys score the MAESTRO performances (as every earlier round); `_all` the whole split,
    # the demo's ASAP-only performances (another pianist of the first test piece) included.
    test_notes = every_test_note[every_test_note["source"] == "maestro"]
    assert metrics["notes"] == len(test_notes) > 0  # every test note scored exactly once
    assert metrics["notes_all"] == len(every_test_note) > len(test_notes)
    assert metrics["pieces_all"] == metrics["pieces"] + every_test_note.query("source == 'asap'")["piece_id"].nunique()
    assert metrics["velocity_mae_flat64_all"] == pytest.approx(np.abs(every_test_note["velocity"].to_numpy() - 64).mean())
    assert metrics["velocity_mae_predict_all"] < 0.9 * metrics["velocity_mae_flat64_all"]
    assert metrics["velocity_mae"] < 0.9 * metrics["velocity_mae_flat64"]
    assert metrics["velocity_mae"] < metrics["velocity_mae_per_pitch_mean"]
    assert metrics["velocity_mae_median"] < 0.95 * metrics["velocity_mae_per_pitch_mean"]
    assert metrics["velocity_mae_notes_only"] < 0.9 * metrics["velocity_mae_per_pitch_mean"]
    assert metrics["velocity_mae"] < 0.5 * metrics["untrained_velocity_mae"]
    assert metrics["loss"] < metrics["untrained_loss"]
    assert 0 <= metrics["bin_distance"] < 1
    # The flat baseline is exactly what it says.
    assert metrics["velocity_mae_flat64"] == pytest.approx(np.abs(test_notes["velocity"].to_numpy() - 64).mean())

    # The score path: the demo's scores, aligned and learned by the score model from the same run.
    assert SCORE_KEYS <= set(metrics)
    every_aligned = pd.read_parquet(project / "data/aligned/test.parquet")
    aligned = every_aligned[every_aligned["source"] == "maestro"]
    assert metrics["score_notes"] == int((aligned["velocity"] >= 0).sum()) > 0
    assert metrics["score_notes_all"] == int((every_aligned["velocity"] >= 0).sum()) > metrics["score_notes"]
    assert metrics["velocity_mae_flat64_score"] == pytest.approx(np.abs(aligned["velocity"][aligned["velocity"] >= 0] - 64).mean())
    played = every_aligned["velocity"][every_aligned["velocity"] >= 0]
    assert metrics["velocity_mae_flat64_score_all"] == pytest.approx(np.abs(played - 64).mean())
    assert metrics["velocity_mae_score_all"] < 0.8 * metrics["velocity_mae_flat64_score_all"]
    # The first test piece has two performances only with its ASAP-only one: other pianists in `_all` alone.
    assert "velocity_mae_other_pianists_score_all" in metrics
    assert metrics["velocity_mae_score"] < 0.8 * metrics["velocity_mae_flat64_score"]
    assert metrics["velocity_mae_score"] < metrics["velocity_mae_performance_model_score"]  # a score is not a performance
    assert abs(metrics["velocity_mae_score_remapped"] - metrics["velocity_mae_score"]) < 0.5  # relative dynamics only
    assert 0 <= metrics["score_network_weight"] <= 1  # fitted on validation: the networks' share against the tree's
    assert 0 <= metrics["score_unmarked_network_weight"] <= 1  # ... and on validation read without its markings

    # Timing: the rendered scores against the pianists, beside the score as written and the trees (the
    # other pianists' consensus needs 2+ MAESTRO test performances of a score, which the demo has not).
    assert TIMING_KEYS <= set(metrics)
    assert metrics["tempo_r_score"] > metrics["tempo_r_score_written"] + 0.1  # the demo's rubato, learned
    assert metrics["pedal_accuracy_score"] > metrics["pedal_accuracy_score_written"]

    plots = sorted(p.name for p in (project / "plots/evaluate").iterdir())
    assert "predicted_vs_true.png" in plots and "velocity_bins_confusion.png" in plots and "tempo_curves.png" in plots
    assert len([p for p in plots if p.startswith("segment")]) == 2
    for name in plots:
        assert (project / "plots/evaluate" / name).read_bytes()[:8] == PNG_MAGIC
    samples = sorted((project / "samples/evaluate").iterdir())
    assert len(samples) == 4
    for path in samples:
        notes = pretty_midi.PrettyMIDI(str(path)).instruments[0].notes
        assert len(notes) == 64 and all(1 <= n.velocity <= 127 for n in notes)

    shown = json.loads(dvc(project, "metrics", "show", "--json").stdout)
    assert "velocity_mae_per_pitch_mean" in json.dumps(shown)
    assert "up to date" in dvc(project, "status", "evaluate").stdout


SCORE_KEYS = {
    f"velocity_{what}_{kind}" for kind in ("score", "score_flat_input", "score_remapped") for what in ("mae", "r", "std_ratio", "mae_centred")
} | {"velocity_mae_flat64_score", "velocity_mae_notated_score", "velocity_mae_performance_model_score", "velocity_mae_gbt_score",
     "velocity_r_gbt_score", "velocity_std_ratio_gbt_score", "score_notes", "score_performances",
     "velocity_mae_score_network", "velocity_mae_score_tree", "score_network_weight", "score_unmarked_network_weight"} | {
    f"{key}_all" for key in ("velocity_mae_score", "velocity_r_score", "velocity_std_ratio_score", "velocity_mae_score_flat_input",
                             "velocity_mae_gbt_score", "velocity_mae_flat64_score", "score_notes", "score_performances")
}  # fmt: skip


TIMING_KEYS = {f"{key}_score{baseline}" for key in ("tempo_r", "tempo_shape_error", "tempo_level_error", "onset_r", "articulation_r",
                                                   "pedal_accuracy", "pedal_f1") for baseline in ("", "_written", "_tree")}
TIMING_KEYS |= {"velocity_r_within_score", "velocity_r_within_notated_score", "velocity_r_within_gbt_score"}


def test_other_pianists_mean_leaves_each_performance_out():
    from velocity.stages.evaluate import other_pianists_mean, remap_dynamics

    test = pd.DataFrame({"score_id": ["a"] * 6 + ["b"] * 2, "score_note": [0, 1, 0, 1, 0, 1, 0, 0],
                         "velocity": [60, 70, 80, -1, 40, 90, 50, 55]})  # fmt: skip
    others = other_pianists_mean(test)
    np.testing.assert_allclose(others, [60, 90, 50, np.nan, 70, 70, 55, 50])  # note a#1 played twice: 70 and 90
    assert np.isnan(others[3])  # not played: no target to compare
    curve = remap_dynamics(np.array([33, 49, 64, 80, 96, 112]))
    assert np.all(np.diff(curve) > 0) and not np.array_equal(curve, [33, 49, 64, 80, 96, 112])


def test_an_empty_test_split_stops_the_stage_with_one_line(tmp_path):
    notes = tmp_path / "data" / "notes"
    notes.mkdir(parents=True)
    pd.DataFrame({"pitch": pd.Series([], dtype="int16"), "velocity": pd.Series([], dtype="int16")}).to_parquet(notes / "test.parquet")
    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    args = ["models/velocity.pt", "data/notes", "data/bins.json", "data/windows", "metrics/evaluate.json", "plots/evaluate", "samples/evaluate"]
    assert stage_error(tmp_path, "velocity.stages.evaluate", *args) == (
        "evaluate: data/notes/test.parquet: no test notes to score "
        "(the test split is empty; data/notes/report.json lists the files extract skipped)"
    )
    assert not (tmp_path / "metrics").exists()
