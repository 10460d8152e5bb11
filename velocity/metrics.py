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
