"""What the `pianist` decoding does after averaging: blend with the model's tree, stretch the dynamics.

A predictor that minimises absolute error shrinks towards the middle; `Calibration`, learned on
validation, stretches its dynamics back to span a pianist's range. A model that carries a tree (the
score model: `velocity.model.trees`) first blends its networks' velocity with the tree's, by a
weight also learned on validation (`fit_network_weight`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Calibration:
    """Stretch predicted dynamics back towards a pianist's range: each piece's mean moves away from
    `centre` by `between`, each note away from its piece's mean by `within`. Learned on validation
    (`fit_calibration`): a predictor that minimises absolute error shrinks towards the middle.
    A model with a tree first takes `network_weight` of the network's velocity and the rest of the
    tree's (`fit_network_weight`)."""

    centre: float = 64.0
    between: float = 1.0
    within: float = 1.0
    network_weight: float = 1.0

    def apply(self, velocity: np.ndarray) -> np.ndarray:
        """One piece's predicted velocities, stretched, rounded and kept in 1..127."""
        velocity = np.asarray(velocity, dtype=np.float64)
        if len(velocity) == 0:
            return velocity.astype(np.int64)
        mean = velocity.mean()
        stretched = self.centre + self.between * (mean - self.centre) + self.within * (velocity - mean)
        return np.clip(np.floor(stretched + 0.5), 1, 127).astype(np.int64)


def fit_calibration(predicted: np.ndarray, true: np.ndarray, piece_id: np.ndarray, min_std_ratio: float) -> Calibration:
    """The stretch with the least absolute error among those whose predictions spread at least
    `min_std_ratio` as widely as the truth (std of prediction / std of truth); the widest one if
    none does. A grid search over between, within in 1.00, 1.05, ..., 2.50."""
    predicted = np.asarray(predicted, dtype=np.float64)
    true = np.asarray(true, dtype=np.float64)
    _, piece = np.unique(piece_id, return_inverse=True)
    piece_mean = (np.bincount(piece, weights=predicted) / np.bincount(piece))[piece]
    centre = float(predicted.mean())
    true_std = true.std()
    best: tuple[bool, float, Calibration] | None = None
    for between in np.arange(1.0, 2.5001, 0.05):
        for within in np.arange(1.0, 2.5001, 0.05):
            stretched = centre + between * (piece_mean - centre) + within * (predicted - piece_mean)
            stretched = np.clip(np.floor(stretched + 0.5), 1, 127)
            ratio = stretched.std() / true_std if true_std > 0 else 1.0
            wide_enough = ratio >= min_std_ratio
            score = np.mean(np.abs(stretched - true)) if wide_enough else -ratio
            candidate = (wide_enough, -score, Calibration(centre, round(float(between), 2), round(float(within), 2)))
            if best is None or candidate[:2] > best[:2]:
                best = candidate
    assert best is not None
    return best[2]


def blend_with_tree(network: np.ndarray, tree: np.ndarray, network_weight: float) -> np.ndarray:
    """`network_weight` of the network's velocity and the rest of the tree's."""
    return network_weight * network + (1 - network_weight) * tree


def fit_network_weight(network: np.ndarray, tree: np.ndarray, true: np.ndarray) -> float:
    """The network's share in `blend_with_tree` with the least absolute error, among 0.00, 0.05, ..., 1.00."""
    weights = np.round(np.arange(0.0, 1.0001, 0.05), 2)
    errors = [np.mean(np.abs(blend_with_tree(network, tree, w) - true)) for w in weights]
    return float(weights[int(np.argmin(errors))])
