"""How close predicted velocities are to a pianist's: the figures evaluate reports and the bench prints."""

from __future__ import annotations

import numpy as np
import pandas as pd

from velocity.model.codec import bin_index


def per_pitch_means(train_notes: pd.DataFrame) -> np.ndarray:
    """(128,) mean train velocity of each pitch; pitches absent from train get the global mean."""
    velocity = train_notes["velocity"].to_numpy(dtype=np.float64)
    if len(velocity) == 0:
        raise ValueError("the train split has no notes: no per-pitch baseline")
    pitch = train_notes["pitch"].to_numpy(dtype=np.int64)
    sums = np.bincount(pitch, weights=velocity, minlength=128)
    counts = np.bincount(pitch, minlength=128)
    return np.where(counts > 0, sums / np.maximum(counts, 1), velocity.mean())


def mae(predicted: np.ndarray, true: np.ndarray) -> float:
    return float(np.mean(np.abs(np.asarray(predicted, dtype=np.float64) - np.asarray(true, dtype=np.float64))))


def bin_distance(predicted: np.ndarray, true: np.ndarray, velocity_edges: list[float]) -> float:
    """Mean |bin(predicted) - bin(true)| under the velocity bin edges."""
    return float(np.mean(np.abs(bin_index(predicted, velocity_edges) - bin_index(true, velocity_edges))))


def pearson_r(predicted: np.ndarray, true: np.ndarray) -> float:
    predicted, true = np.asarray(predicted, dtype=np.float64), np.asarray(true, dtype=np.float64)
    if predicted.std() == 0 or true.std() == 0:
        return 0.0
    return float(np.corrcoef(predicted, true)[0, 1])


def dynamics_scores(predicted: np.ndarray, true: np.ndarray, piece_id: np.ndarray, suffix: str) -> dict[str, float]:
    """MAE, Pearson r, std of prediction / std of truth, MAE with each piece's own mean removed
    from prediction and truth (the shape within a piece), and MAE averaged over pieces."""
    predicted, true = np.asarray(predicted, dtype=np.float64), np.asarray(true, dtype=np.float64)
    _, piece = np.unique(piece_id, return_inverse=True)
    counts = np.bincount(piece)

    def centred(x: np.ndarray) -> np.ndarray:
        return x - (np.bincount(piece, weights=x) / counts)[piece]

    error = np.abs(predicted - true)
    return {
        f"velocity_mae_{suffix}": float(error.mean()),
        f"velocity_r_{suffix}": pearson_r(predicted, true),
        f"velocity_std_ratio_{suffix}": float(predicted.std() / true.std()) if true.std() > 0 else 0.0,
        f"velocity_mae_centred_{suffix}": mae(centred(predicted), centred(true)),
        f"velocity_mae_macro_{suffix}": float(np.mean(np.bincount(piece, weights=error) / counts)),
    }


def within_piece_r(predicted: np.ndarray, true: np.ndarray, piece_id: np.ndarray) -> float:
    """The mean over pieces of Pearson r between prediction and truth within each piece (the shape
    of the dynamics, each recording's level aside); a constant prediction counts r 0."""
    frame = pd.DataFrame({"piece": piece_id, "predicted": np.asarray(predicted, dtype=np.float64), "true": np.asarray(true, dtype=np.float64)})
    return float(np.mean([pearson_r(part["predicted"].to_numpy(), part["true"].to_numpy()) for _, part in frame.groupby("piece", sort=False)]))


# The names of velocity/model/timing.py's METRICS, as evaluate reports them.
TIMING_KEYS = {"tempo_r": "tempo_r", "tempo_shape_error": "tempo_shape_error", "overall_tempo_error": "tempo_level_error",
               "onset_r": "onset_r", "articulation_r": "articulation_r", "pedal_accuracy": "pedal_accuracy", "pedal_f1": "pedal_f1"}  # fmt: skip


def timing_scores(test: pd.DataFrame, pedal: pd.DataFrame, renderings: dict[str, pd.DataFrame]) -> dict[str, float]:
    """How each named prediction of per-note timing targets (TIMING_TARGETS, rows of `test`, the
    aligned notes; NaN rows are played as written) times each performance of `test`, rendered as
    `velocity predict --perform` renders it, against the pianist's own timing and pedal (`pedal`: the
    align stage's pedal.parquet), with velocity/model/timing.py's definitions; means over the
    performances a prediction covers (a row of all-NaN targets for a whole performance: not covered;
    a prediction covering none has no keys). Keys `<metric>_score<name>`."""
    from velocity.model.timing import compare, mean_metrics, onset_groups, render_performance, timing_profile

    events = {piece: (part["time"].to_numpy(), part["value"].to_numpy()) for piece, part in pedal.groupby("piece_id", sort=False)}
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in renderings}
    for piece_id, part in test.groupby("piece_id", sort=False):
        start, end, pitch = part["start"].to_numpy(), part["end"].to_numpy(), part["pitch"].to_numpy()
        if not (part["velocity"].to_numpy() >= 0).any():
            continue
        group = onset_groups(start)
        times, values = events.get(piece_id, (np.zeros(0), np.zeros(0)))
        truth = timing_profile(start, end, part["performance_start"].to_numpy(), part["performance_end"].to_numpy(), times, values, group)
        downbeat = np.isclose(part["bar_position"].to_numpy(dtype=np.float64), 0.0)
        for name, predicted in renderings.items():
            targets = predicted.loc[part.index]
            if targets[["log_pace", "onset_deviation", "articulation", "pedal_down"]].isna().all(axis=None):
                continue
            played = render_performance(start, end, pitch, targets.fillna(0.0), change=downbeat)
            pedal_times = np.array([t for t, _ in played.pedal])
            pedal_values = np.array([v for _, v in played.pedal])
            rows[name].append(compare(timing_profile(start, end, played.onset, played.end, pedal_times, pedal_values, group), truth))
    scores: dict[str, float] = {}
    for name, found in rows.items():
        if not found:  # the consensus of a test split with one performance per score
            continue
        for metric, value in mean_metrics(found).items():
            scores[f"{TIMING_KEYS[metric]}_score{name}"] = value
        scores[f"timing_performances_score{name}"] = len(found)
    return scores
