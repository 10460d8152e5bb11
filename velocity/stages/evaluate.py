"""Stage `evaluate`: the trained model on the test split, against baselines and an untrained twin.

Metrics (metrics/evaluate.json):
- teacher-forced, on the test windows of the windows stage (the seed's numbers): `loss` (the
  label-smoothed KL per token the model was trained on), `cross_entropy` (nats per token) and
  `velocity_mae_teacher_forced` (the seed's "average distance": |argmax target id - true id|);
- free-running, on whole test pieces (every note exactly once, windows stitched by
  velocity/model/pieces.py exactly as `velocity predict` does): `velocity_mae` (greedy decoding, the
  seed's), `velocity_mae_median` and `velocity_mae_notes_only` (the other decodings),
  `bin_distance` (|velocity bin of the greedy prediction - bin of the truth| with the learned edges
  in data/bins.json);
- baselines on the same notes: `velocity_mae_flat64` (every note 64) and
  `velocity_mae_per_pitch_mean` (each pitch's mean velocity in the train split; pitches never seen
  in train take the train split's global mean);
- `untrained_loss`, `untrained_velocity_mae`: the same architecture built from the same seed as the
  trained model, before any training;
- `notes`, `pieces`, `windows`: what was scored.

The score path (with `--score-model`, on data/aligned/test.parquet: every paired note of the test
split's scores, each score read as exported, the pianist's velocity as truth): the score model's
`velocity_mae_score`, `velocity_r_score`, `velocity_std_ratio_score`, `velocity_mae_centred_score`
(`pianist` decoding, as `velocity predict` plays a score: its networks blended with its tree, then
stretched; the parts alone: `velocity_mae_score_network`, the networks' `averaged` decoding, and
`velocity_mae_score_tree`, with the blend's `score_network_weight`); the same scores with every velocity 64
(`_score_flat_input`: no markings, played with the blend and stretch for such scores, whose weight is
`score_unmarked_network_weight`) and through another notation program's dynamics curve
(`_score_remapped`); and the baselines on the same notes: flat 64 (`velocity_mae_flat64_score`),
the notated velocities linearly rescaled on train (`_notated_score`), the performance model fed the
score (`_performance_model_score`), the tree on score features (`_gbt_score`) and, on the notes
of pieces with 2+ test performances, the mean of the other pianists (`_other_pianists_score`,
beside the score model on the same notes, `_score_shared_notes`).

Figures (plots/evaluate/), of the decoding `evaluate.figures` names (default notes-only, as
`velocity predict`): predicted vs true velocity (hexbin), confusion matrix of velocity bins, and
piano rolls of a few test segments, original and predicted (colour = velocity). The same segments
go to samples/evaluate/ as MIDI files, original and predicted, to listen to.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from velocity import params as params_lib
from velocity.io import write_json
from velocity.datasets.asap import MAESTRO
from velocity.figures import plot_bin_confusion, plot_piano_rolls, plot_predicted_vs_true
from velocity.metrics import bin_distance, dynamics_scores, mae, pearson_r, per_pitch_means, within_piece_r
from velocity.midi_writer import write_segment_midi
from velocity.model.decodings import DECODINGS, DEFAULT_DECODING

if TYPE_CHECKING:
    from velocity.model.decode import VelocityModel
    from velocity.model.training import Windows

log = logging.getLogger(__name__)

FLAT_VELOCITY = 64


@dataclass(frozen=True)
class EvaluateParams:
    batch_windows: int  # windows decoded (or teacher-forced) at once
    segments: int  # test segments drawn as piano rolls and written as MIDI
    segment_notes: int  # notes per segment
    figures: str  # the decoding the figures and MIDI samples show

    def __post_init__(self) -> None:
        if self.figures not in DECODINGS:
            raise params_lib.ParamsError(f"evaluate.figures must be one of {', '.join(DECODINGS)}, got {self.figures!r}")
        for name in ("batch_windows", "segment_notes"):
            if getattr(self, name) < 1:
                raise params_lib.ParamsError(f"evaluate.{name} must be positive, got {getattr(self, name)}")
        if self.segments < 0:
            raise params_lib.ParamsError(f"evaluate.segments must be >= 0, got {self.segments}")


def pick_segments(test_notes: pd.DataFrame, count: int, notes: int) -> list[np.ndarray]:
    """Row indices of `count` segments of `notes` consecutive notes: the middle of the first
    `count` test pieces (deterministic, so the figures only change when the model does)."""
    segments = []
    for _, rows in test_notes.groupby("piece_id", sort=False).indices.items():
        if len(segments) == count:
            break
        begin = max(0, (len(rows) - notes) // 2)
        segments.append(np.asarray(rows[begin : begin + notes]))
    return segments


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:60] or "piece"


# ---------------------------------------------------------------------------------------------
# The stage


def teacher_forced(model, windows, smoothing: float, batch_windows: int) -> dict[str, float]:
    """The seed's numbers on the test windows: label-smoothed KL per token, cross-entropy, and
    |argmax velocity - true velocity|, the decoder reading the true previous velocities."""
    import torch

    from velocity.model.training import evaluate as validate

    scores = validate(model, windows, torch.device("cpu"), smoothing, batch_windows, loss="kl")
    return {"loss": scores["loss"], "cross_entropy": scores["cross_entropy"], "velocity_mae_teacher_forced": scores["mae"]}


def evaluate(
    model: "VelocityModel",
    test_notes: pd.DataFrame,
    train_notes: pd.DataFrame,
    test_windows: "Windows",
    velocity_edges: list[float],
    params: EvaluateParams,
    gbt_velocity: np.ndarray | None = None,
) -> tuple[dict[str, float | int], dict[str, np.ndarray]]:
    """Metrics of the trained model, its untrained twin and the baselines (the gradient-boosted
    tree's test predictions when given), and the predicted velocity of every test note (row order
    of `test_notes`) by each decoding."""
    from velocity.model.decode import untrained_twin
    from velocity.model.pieces import decode_notes, predict_notes

    true = test_notes["velocity"].to_numpy(dtype=np.int64)
    piece_id = test_notes["piece_id"].to_numpy()
    smoothing = float(model.train_params["label_smoothing"])
    log.info("teacher-forced scores on %d test windows", len(test_windows))
    metrics: dict[str, float | int] = dict(teacher_forced(model.model, test_windows, smoothing, params.batch_windows))
    log.info("%s decodings of %d test notes", ", ".join(DECODINGS), len(true))
    predicted = decode_notes(model, test_notes, list(DECODINGS), batch_windows=params.batch_windows, progress=True)
    for decoding, how in DECODINGS.items():  # greedy first: the seed's, `velocity_mae`
        metrics[how.metric] = mae(predicted[decoding], true)
    metrics.update(dynamics_scores(predicted[DEFAULT_DECODING], true, piece_id, "predict"))  # what `velocity predict` gives
    if gbt_velocity is not None:
        gbt = dynamics_scores(gbt_velocity, true, piece_id, "gbt")
        metrics.update({key: gbt[key] for key in ("velocity_mae_gbt", "velocity_r_gbt", "velocity_std_ratio_gbt")})
    metrics["bin_distance"] = bin_distance(predicted["greedy"], true, velocity_edges)
    metrics["velocity_mae_flat64"] = mae(np.full_like(true, FLAT_VELOCITY), true)
    metrics["velocity_mae_per_pitch_mean"] = mae(per_pitch_means(train_notes)[test_notes["pitch"].to_numpy()], true)

    log.info("the untrained twin")
    untrained = untrained_twin(model)
    metrics["untrained_loss"] = teacher_forced(untrained.model, test_windows, smoothing, params.batch_windows)["loss"]
    metrics["untrained_velocity_mae"] = mae(predict_notes(untrained, test_notes, batch_windows=params.batch_windows), true)
    metrics["notes"] = int(len(true))
    metrics["pieces"] = int(test_notes["piece_id"].nunique())
    metrics["windows"] = int(len(test_windows))
    return metrics, predicted


def remap_dynamics(velocity: np.ndarray) -> np.ndarray:
    """Another notation program's dynamics curve: monotone, but not MuseScore's (a gamma of 0.6,
    so pp 33 -> 56, mf 80 -> 96, ff 112 -> 118): what a model must not depend on."""
    return np.clip(np.rint(127 * (np.asarray(velocity, dtype=np.float64) / 127) ** 0.6), 1, 127).astype(np.int16)


def others_mean(test: pd.DataFrame, column: str, defined: np.ndarray) -> np.ndarray:
    """Per row: the mean of `column` over the *other* performances of its score at the same score
    note, among the rows where `defined` (NaN where no other performance has it)."""
    key = (test["score_id"].astype(str) + "#" + test["score_note"].astype(str)).to_numpy()
    value = np.where(defined, test[column].to_numpy(dtype=np.float64), 0.0)
    sums = pd.Series(value).groupby(key).transform("sum").to_numpy()
    counts = pd.Series(defined.astype(np.float64)).groupby(key).transform("sum").to_numpy()
    others = counts - defined
    return np.where(others > 0, (sums - value) / np.maximum(others, 1), np.nan)


def other_pianists_mean(test: pd.DataFrame) -> np.ndarray:
    """Per played row: the mean velocity the *other* performances of its score gave the same score
    note (NaN where no other performance played it, or this one did not)."""
    played = test["velocity"].to_numpy() >= 0
    return np.where(played, others_mean(test, "velocity", played), np.nan)


def consensus_timing(test: pd.DataFrame) -> pd.DataFrame:
    """Per row: the other performances' mean of each timing target at the same score note."""
    from velocity.model.timing import TIMING_TARGETS

    played = test["velocity"].to_numpy() >= 0
    return pd.DataFrame({name: others_mean(test, name, (played if name != "pedal_down" else np.ones(len(test), dtype=bool))
                                           & np.isfinite(test[name].to_numpy(dtype=np.float64))) for name in TIMING_TARGETS}, index=test.index)


def timing_path(test: pd.DataFrame, pedal: pd.DataFrame, timing_model_path: Path, tree: pd.DataFrame | None, plots_dir: Path) -> dict[str, float]:
    """The timing keys (velocity/metrics.py `timing_scores`) of the MAESTRO test performances: the
    timing model, the score as written, the per-target tree and the other pianists' consensus;
    and the tempo curves of one test performance (plots_dir/tempo_curves.png)."""
    from velocity.figures import plot_tempo_curves
    from velocity.metrics import timing_scores
    from velocity.model.timing_net import load_timing_model, predict_timing

    headline = test[maestro_rows(test)]
    log.info("timing: the timing model on %d notes of %d performances", len(headline), headline["piece_id"].nunique())
    predicted = predict_timing(load_timing_model(timing_model_path), headline)
    written = pd.DataFrame({"log_pace": 0.0, "onset_deviation": 0.0, "articulation": 0.0, "pedal_down": headline["pedal"].astype(float)},
                           index=headline.index)  # fmt: skip
    renderings = {"": predicted, "_written": written, "_consensus": consensus_timing(headline)}
    if tree is not None:
        renderings["_tree"] = tree.loc[headline.index]
    metrics = timing_scores(headline, pedal, renderings)
    plot_tempo_curves(headline, predicted, plots_dir / "tempo_curves.png")
    return metrics


# The headline keys that evaluate also reports over the whole test split, ASAP-only performances
# included, with `_all` added; the plain keys score the test performances that come from MAESTRO.
WHOLE_SPLIT_KEYS = (
    "velocity_mae_predict", "velocity_r_predict", "velocity_std_ratio_predict", "velocity_mae_gbt", "velocity_r_gbt",
    "velocity_mae_flat64", "notes", "pieces",
    "velocity_mae_score", "velocity_r_score", "velocity_std_ratio_score", "velocity_mae_score_flat_input",
    "velocity_r_score_flat_input", "velocity_mae_gbt_score", "velocity_r_gbt_score", "velocity_mae_flat64_score",
    "velocity_mae_other_pianists_score", "velocity_r_other_pianists_score", "velocity_mae_score_shared_notes",
    "score_notes", "score_performances",
)  # fmt: skip


def maestro_rows(table: pd.DataFrame) -> np.ndarray:
    """True for the rows of performances that come from MAESTRO (every row of a table without a `source`)."""
    if "source" not in table:
        return np.ones(len(table), dtype=bool)
    return table["source"].to_numpy() == MAESTRO


def whole_split(
    model: "VelocityModel", test_notes: pd.DataFrame, headline: np.ndarray, headline_predicted: np.ndarray,
    gbt_velocity: np.ndarray | None, batch_windows: int,
) -> dict[str, float | int]:
    """The performance path's `_all` keys: `headline_predicted` (velocity predict's decoding of the
    `headline` rows) completed with the other rows' predictions, over every test note."""
    from velocity.model.pieces import predict_notes

    predicted = np.zeros(len(test_notes), dtype=np.float64)
    predicted[headline] = headline_predicted
    if (~headline).any():
        log.info("%d test notes of ASAP-only performances", int((~headline).sum()))
        predicted[~headline] = predict_notes(model, test_notes[~headline], batch_windows=batch_windows, progress=True, decoding=DEFAULT_DECODING)
    true = test_notes["velocity"].to_numpy(dtype=np.float64)
    metrics: dict[str, float | int] = dict(dynamics_scores(predicted, true, test_notes["piece_id"].to_numpy(), "predict"))
    if gbt_velocity is not None:
        metrics.update(dynamics_scores(gbt_velocity, true, test_notes["piece_id"].to_numpy(), "gbt"))
    metrics["velocity_mae_flat64"] = mae(np.full_like(true, FLAT_VELOCITY), true)
    metrics["notes"] = int(len(true))
    metrics["pieces"] = int(test_notes["piece_id"].nunique())
    return {f"{key}_all": value for key, value in metrics.items() if key in WHOLE_SPLIT_KEYS}


def evaluate_scores(
    score_model: "VelocityModel", performance_model: "VelocityModel", test: pd.DataFrame, train: pd.DataFrame,
    gbt_velocity: np.ndarray | None, batch_windows: int,
) -> dict[str, float | int]:
    """The score path's metrics (see the module doc) over the paired notes of the MAESTRO
    performances of `test` (aligned), and the `_all` keys over every paired note."""
    from velocity.model.pieces import decode_notes, predict_notes

    played = test["velocity"].to_numpy() >= 0
    headline = maestro_rows(test)
    true = test["velocity"].to_numpy(dtype=np.float64)
    piece_id = test["piece_id"].to_numpy()

    def predict(model: "VelocityModel", notes: pd.DataFrame, what: str, rows: np.ndarray | None = None) -> np.ndarray:
        """`velocity predict`'s decoding of every row of `notes` (NaN outside `rows`, which hold whole performances)."""
        rows = np.ones(len(notes), dtype=bool) if rows is None else rows
        log.info("score path: %s (%d notes)", what, int(rows.sum()))
        predicted = np.full(len(notes), np.nan)
        predicted[rows] = predict_notes(model, notes[rows], batch_windows=batch_windows, progress=True, decoding=DEFAULT_DECODING)
        return predicted

    def scores(predicted: np.ndarray, suffix: str, keep: np.ndarray, drop: str = "_macro_") -> dict[str, float]:
        return {k: v for k, v in dynamics_scores(predicted[keep], true[keep], piece_id[keep], suffix).items() if "_macro_" not in k and drop not in k}

    log.info("score path: the score model (%d notes)", len(test))
    # `velocity predict`'s decoding, and the networks' own (averaged, before the tree and the stretch), from one pass.
    decoded = decode_notes(score_model, test, ("averaged", DEFAULT_DECODING), batch_windows=batch_windows, progress=True)
    predicted = decoded[DEFAULT_DECODING].astype(np.float64)
    flat = predict(score_model, test.assign(notated_velocity=np.int16(FLAT_VELOCITY)), "every notated velocity 64")
    train_played = train["velocity"].to_numpy() >= 0
    slope, intercept = np.polyfit(train["notated_velocity"].to_numpy(dtype=np.float64)[train_played],
                                  train["velocity"].to_numpy(dtype=np.float64)[train_played], 1)  # fmt: skip
    notated = slope * test["notated_velocity"].to_numpy(dtype=np.float64) + intercept

    def metrics_over(rows: np.ndarray) -> dict[str, float | int]:
        """Every key whose predictions exist for `rows`, over their paired notes; the other
        pianists are the other performances among `rows`."""
        keep = played & rows
        metrics: dict[str, float | int] = dict(scores(predicted, "score", keep))
        metrics.update(scores(flat, "score_flat_input", keep))
        metrics["velocity_mae_flat64_score"] = mae(np.full(int(keep.sum()), FLAT_VELOCITY), true[keep])
        metrics["velocity_r_within_score"] = within_piece_r(predicted[keep], true[keep], piece_id[keep])
        metrics["velocity_r_within_notated_score"] = within_piece_r(notated[keep], true[keep], piece_id[keep])
        if gbt_velocity is not None:
            metrics["velocity_r_within_gbt_score"] = within_piece_r(gbt_velocity[keep], true[keep], piece_id[keep])
        metrics.update(scores(notated, "notated_score", keep, drop="_centred_"))
        if gbt_velocity is not None:
            metrics.update(scores(gbt_velocity, "gbt_score", keep, drop="_centred_"))
        others = np.full(len(test), np.nan)
        others[rows] = other_pianists_mean(test[rows])
        shared = keep & ~np.isnan(others)
        if shared.any():
            metrics["velocity_mae_other_pianists_score"] = mae(others[shared], true[shared])
            metrics["velocity_r_other_pianists_score"] = pearson_r(others[shared], true[shared])
            metrics["velocity_mae_score_shared_notes"] = mae(predicted[shared], true[shared])
            metrics["score_shared_notes"] = int(shared.sum())
            metrics["velocity_r_within_other_pianists_score"] = within_piece_r(others[shared], true[shared], piece_id[shared])
        metrics["score_notes"] = int(keep.sum())
        metrics["score_performances"] = int(test["piece_id"][rows].nunique())
        return metrics

    metrics = metrics_over(headline)
    keep = played & headline
    metrics["velocity_mae_score_network"] = mae(decoded["averaged"][keep], true[keep])
    if (tree := score_model.tree) is not None:
        metrics["velocity_mae_score_tree"] = mae(tree.predict(test)[keep], true[keep])
        metrics["score_network_weight"] = score_model.calibration.network_weight
        if (unmarked_calibration := score_model.unmarked_calibration) is not None:
            metrics["score_unmarked_network_weight"] = unmarked_calibration.network_weight
    remapped = predict(score_model, test.assign(notated_velocity=remap_dynamics(test["notated_velocity"])), "another dynamics curve", rows=headline)
    metrics.update(scores(remapped, "score_remapped", keep))
    as_performance = predict(performance_model, test, "the performance model fed the score", rows=headline)
    metrics.update(scores(as_performance, "performance_model_score", keep, drop="_centred_"))
    whole = metrics_over(np.ones(len(test), dtype=bool))
    metrics.update({f"{key}_all": value for key, value in whole.items() if key in WHOLE_SPLIT_KEYS})
    return metrics


def write_figures(
    test_notes: pd.DataFrame,
    predicted: np.ndarray,
    velocity_edges: list[float],
    params: EvaluateParams,
    plots_dir: Path,
    samples_dir: Path,
) -> None:
    true = test_notes["velocity"].to_numpy()
    plot_predicted_vs_true(true, predicted, plots_dir / "predicted_vs_true.png")
    plot_bin_confusion(true, predicted, velocity_edges, plots_dir / "velocity_bins_confusion.png")
    for k, rows in enumerate(pick_segments(test_notes, params.segments, params.segment_notes)):
        segment = test_notes.iloc[rows]
        piece = str(segment["piece_id"].iloc[0])
        name = f"segment{k}_{slug(Path(piece).stem)}"
        title = f"{segment['composer'].iloc[0]}: {segment['title'].iloc[0]} (notes {rows[0]}..{rows[-1]} of the test split)"
        plot_piano_rolls(segment, predicted[rows], title, plots_dir / f"{name}.png")
        write_segment_midi(segment, segment["velocity"].to_numpy(), samples_dir / f"{name}_original.mid")
        write_segment_midi(segment, predicted[rows], samples_dir / f"{name}_predicted.mid")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="models/velocity.pt")
    parser.add_argument("notes_dir", type=Path, help="data/notes (train.parquet for baselines, test.parquet)")
    parser.add_argument("bins", type=Path, help="data/bins.json (velocity edges for bin_distance)")
    parser.add_argument("windows_dir", type=Path, help="data/windows (test windows for teacher-forced scores)")
    parser.add_argument("metrics", type=Path, help="metrics/evaluate.json")
    parser.add_argument("plots_dir", type=Path, help="plots/evaluate")
    parser.add_argument("samples_dir", type=Path, help="samples/evaluate")
    parser.add_argument("--gbt", type=Path, help="data/gbt/test_velocity.npy: the tree baseline's test predictions")
    parser.add_argument("--score-model", type=Path, help="models/score/velocity.pt: also score the score path")
    parser.add_argument("--aligned", type=Path, help="data/aligned: the aligned score notes (train.parquet, test.parquet)")
    parser.add_argument("--score-gbt", type=Path, help="data/score_gbt/test_velocity.npy: the score tree's test predictions")
    parser.add_argument("--timing-model", type=Path, help="models/score/timing.pt: also score the rendered timing (needs --aligned)")
    parser.add_argument("--timing-tree", type=Path, help="data/timing_tree/test.parquet: the per-target trees' test predictions")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from velocity.model.decode import load_velocity_model
    from velocity.model.training import Windows

    params = params_lib.load(EvaluateParams, "evaluate")
    test_path = args.notes_dir / "test.parquet"
    test_notes = pd.read_parquet(test_path)
    if len(test_notes) == 0:  # one line, no traceback (a metadata csv without a test split, or every test file skipped)
        raise SystemExit(f"evaluate: {test_path}: no test notes to score (the test split is empty; "
                         f"{args.notes_dir / 'report.json'} lists the files extract skipped)")
    model = load_velocity_model(args.model)
    velocity_edges = json.loads(args.bins.read_text())["velocity"]
    train_notes = pd.read_parquet(args.notes_dir / "train.parquet", columns=["pitch", "velocity"])
    test_windows = Windows.load(args.windows_dir, "test")
    gbt_velocity = np.load(args.gbt) if args.gbt else None
    if gbt_velocity is not None and len(gbt_velocity) != len(test_notes):
        raise SystemExit(f"{args.gbt}: {len(gbt_velocity)} predictions for {len(test_notes)} test notes: rerun the gbt stage")

    # The plain keys score the MAESTRO performances, as every earlier round did; `_all` the whole split.
    headline = maestro_rows(test_notes)
    headline_notes = test_notes[headline].reset_index(drop=True)
    window_rows = np.load(args.windows_dir / "test_rows.npy", mmap_mode="r")[:, 0]
    headline_windows = test_windows.subset(headline[window_rows])
    headline_gbt = None if gbt_velocity is None else gbt_velocity[headline]
    metrics, predicted = evaluate(model, headline_notes, train_notes, headline_windows, velocity_edges, params, headline_gbt)
    metrics.update(whole_split(model, test_notes, headline, predicted[DEFAULT_DECODING], gbt_velocity, params.batch_windows))
    if args.score_model:
        metrics.update(score_path(args, model, params))
    write_json(args.metrics, metrics)
    write_figures(headline_notes, predicted[params.figures], velocity_edges, params, args.plots_dir, args.samples_dir)
    log.info("velocity MAE %s", ", ".join(f"{name} {metrics[how.metric]:.2f}" for name, how in DECODINGS.items()))
    log.info("velocity predict's decoding: MAE %.2f, r %.3f, std ratio %.2f (flat 64: %.2f, per-pitch mean: %.2f, tree: %s) on %d test notes",
             metrics["velocity_mae_predict"], metrics["velocity_r_predict"], metrics["velocity_std_ratio_predict"], metrics["velocity_mae_flat64"],
             metrics["velocity_mae_per_pitch_mean"], f"{metrics['velocity_mae_gbt']:.2f}" if "velocity_mae_gbt" in metrics else "not given", metrics["notes"])
    log.info("wrote %s, figures in %s, MIDI samples in %s", args.metrics, args.plots_dir, args.samples_dir)


def score_path(args: argparse.Namespace, performance_model: "VelocityModel", params: EvaluateParams) -> dict[str, float | int]:
    """Read the score path's inputs named on the command line and score them."""
    from velocity.model.decode import load_velocity_model

    if args.aligned is None:
        raise SystemExit("evaluate: --score-model needs --aligned (data/aligned)")
    test_path = args.aligned / "test.parquet"
    test = pd.read_parquet(test_path)
    if not (test["velocity"].to_numpy() >= 0).any():
        raise SystemExit(f"evaluate: {test_path}: no aligned test notes to score (the align stage's report.json says why)")
    train = pd.read_parquet(args.aligned / "train.parquet", columns=["notated_velocity", "velocity"])
    test = test.reset_index(drop=True)
    gbt_velocity = np.load(args.score_gbt) if args.score_gbt else None
    if gbt_velocity is not None and len(gbt_velocity) != len(test):
        raise SystemExit(f"{args.score_gbt}: {len(gbt_velocity)} predictions for {len(test)} aligned test notes: rerun the score_gbt stage")
    metrics = evaluate_scores(load_velocity_model(args.score_model), performance_model, test, train, gbt_velocity, params.batch_windows)
    if args.timing_model:
        tree = pd.read_parquet(args.timing_tree) if args.timing_tree else None
        if tree is not None and len(tree) != len(test):
            raise SystemExit(f"{args.timing_tree}: {len(tree)} predictions for {len(test)} aligned test notes: rerun the timing_tree stage")
        metrics.update(timing_path(test, pd.read_parquet(args.aligned / "pedal.parquet"), args.timing_model, tree, args.plots_dir))
        log.info("timing: tempo r %.2f (written %.2f), onset r %.2f, articulation r %.2f, pedal F1 %.2f", metrics["tempo_r_score"],
                 metrics["tempo_r_score_written"], metrics["onset_r_score"], metrics["articulation_r_score"], metrics["pedal_f1_score"])
    log.info("score path: MAE %.2f, r %.3f, std ratio %.2f (flat input %.2f, remapped %.2f; flat 64 %.2f, notated %.2f, "
             "performance model %.2f, tree %s) on %d paired test notes", metrics["velocity_mae_score"], metrics["velocity_r_score"],
             metrics["velocity_std_ratio_score"], metrics["velocity_mae_score_flat_input"], metrics["velocity_mae_score_remapped"],
             metrics["velocity_mae_flat64_score"], metrics["velocity_mae_notated_score"], metrics["velocity_mae_performance_model_score"],
             f"{metrics['velocity_mae_gbt_score']:.2f}" if "velocity_mae_gbt_score" in metrics else "not given", metrics["score_notes"])
    return metrics


if __name__ == "__main__":
    main()
