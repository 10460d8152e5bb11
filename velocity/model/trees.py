"""A fitted gradient-boosted tree ensemble as plain arrays: stored without pickle, evaluated with numpy.

scikit-learn's `HistGradientBoostingRegressor` has no safe file format (joblib is pickle: loading a
file runs its code), yet the score model carries a tree inside its `velocity.pt`, which `velocity
predict` loads with `torch.load(weights_only=True)`. So a fitted regressor is flattened here into
node arrays (every tree's nodes one after another), stored as tensors (`to_state`: a torch file
that `torch.load(weights_only=True)` reads), and evaluated by walking all trees at once, level by
level, moving only the paths not yet at a leaf.

The walk is scikit-learn's rule for numeric splits: a missing value (NaN) goes where the split
learned to send missing values, any other value goes left when it is <= the threshold. The
prediction is the baseline plus the leaf values reached (absolute-error loss: no link function).

scikit-learn keeps a fitted regressor's trees private: `_predictors` (one `TreePredictor` per
iteration, whose `nodes` is a record array) and `_baseline_prediction`. It has no public API for them
(its maintainers declined one: scikit-learn issue #16063), so `from_sklearn` reads those, checks their
layout, and pyproject.toml pins the versions this was checked on, SKLEARN_CHECKED (tests/test_trees.py
compares the walk with scikit-learn's own `predict`). Widen the pin only after that test passes.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import pandas as pd
import torch

from velocity.model.checkpoint import CheckpointError
from velocity.model.features import note_features

SKLEARN_CHECKED = "1.4 to 1.9"  # the versions pyproject.toml allows, each checked with tests/test_trees.py
NODE_FIELDS = ("feature_idx", "num_threshold", "missing_go_to_left", "left", "right", "is_leaf", "value", "is_categorical")
CHUNK_NOTES = 1024  # notes walked at once (x trees: the index arrays of one level; small stays in cache)


@dataclass(frozen=True)
class TreeEnsemble:
    features: tuple[str, ...]  # velocity/model/features.py names, the columns the trees split on
    baseline: float
    roots: np.ndarray  # (trees,) each tree's root node
    feature: np.ndarray  # (nodes,) the column a split node reads
    threshold: np.ndarray  # (nodes,) values <= this go left
    missing_left: np.ndarray  # (nodes,) NaN goes left
    left: np.ndarray  # (nodes,) child node indices
    right: np.ndarray
    is_leaf: np.ndarray
    value: np.ndarray  # (nodes,) a leaf's share of the prediction (0 elsewhere)

    @classmethod
    def from_sklearn(cls, regressor: Any, features: tuple[str, ...]) -> TreeEnsemble:
        """Flatten a fitted `HistGradientBoostingRegressor` (numeric features only)."""
        if regressor.n_trees_per_iteration_ != 1:
            raise ValueError("only single-output regressors can be flattened")
        nodes = [predictor.nodes for (predictor,) in _private(regressor, "_predictors")]
        baseline = _private(regressor, "_baseline_prediction")
        lacking = [name for name in NODE_FIELDS if any(name not in (tree.dtype.names or ()) for tree in nodes)]
        if lacking:
            raise ValueError(f"{_unchecked()}: its tree nodes have no '{lacking[0]}'")
        if any(tree["is_categorical"].any() for tree in nodes):
            raise ValueError("categorical splits are not supported")
        offsets = np.cumsum([0] + [len(tree) for tree in nodes])[:-1]
        every = np.concatenate(nodes)
        shift = np.repeat(offsets, [len(tree) for tree in nodes])
        leaf = every["is_leaf"].astype(bool)
        return cls(
            features=tuple(features),
            baseline=float(np.ravel(baseline)[0]),
            roots=offsets.astype(np.int64),
            feature=np.where(leaf, 0, every["feature_idx"]).astype(np.int64),
            threshold=every["num_threshold"].astype(np.float64),
            missing_left=every["missing_go_to_left"].astype(bool),
            left=np.where(leaf, 0, every["left"].astype(np.int64) + shift),
            right=np.where(leaf, 0, every["right"].astype(np.int64) + shift),
            is_leaf=leaf,
            value=np.where(leaf, every["value"], 0.0),
        )

    def predict_features(self, x: np.ndarray) -> np.ndarray:
        """(n,) predictions of an (n, len(features)) float matrix in `features` order."""
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ValueError(f"expected an (n, {len(self.features)}) feature matrix, got shape {x.shape}")
        predicted = np.full(len(x), self.baseline)
        trees, width = len(self.roots), x.shape[1]
        # Each node's two children side by side, right then left: a step is one gather at 2 * node + go_left.
        children = np.stack([self.right, self.left], axis=1).ravel().astype(np.intp)
        feature, roots = self.feature.astype(np.intp), self.roots.astype(np.intp)
        for begin in range(0, len(x), CHUNK_NOTES):
            chunk = x[begin : begin + CHUNK_NOTES]
            values, has_nan = chunk.ravel(), bool(np.isnan(chunk).any())
            # One entry per (note, tree); only the entries still at a split node move on each level.
            node = np.tile(roots, len(chunk))
            base = np.repeat(np.arange(len(chunk), dtype=np.intp) * width, trees)  # the entry's note's row in `values`
            active = np.flatnonzero(~self.is_leaf[node])
            while active.size:
                at = node[active]
                value = values[base[active] + feature[at]]
                go_left = value <= self.threshold[at]
                if has_nan:
                    go_left = np.where(np.isnan(value), self.missing_left[at], go_left)
                node[active] = at = children[2 * at + go_left]
                active = active[~self.is_leaf[at]]
            predicted[begin : begin + CHUNK_NOTES] += self.value[node].reshape(len(chunk), trees).sum(axis=1)
        return predicted

    def predict(self, notes: pd.DataFrame) -> np.ndarray:
        """The velocity (float, 1..127) of every note of a notes table (pieces by `piece_id`)."""
        if len(notes) == 0:
            return np.zeros(0)
        return np.clip(self.predict_features(note_features(notes, self.features).to_numpy()), 1, 127)

    def to_state(self) -> dict[str, Any]:
        """The arrays as tensors and the names as strings: loadable with weights_only=True."""
        state: dict[str, Any] = {"features": list(self.features), "baseline": self.baseline}
        for name in self._array_names():
            state[name] = torch.from_numpy(np.ascontiguousarray(getattr(self, name)))
        return state

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> TreeEnsemble:
        """The trees of `to_state`'s dict (a checkpoint loaded with weights_only=True)."""
        missing = [name for name in ("features", "baseline", *cls._array_names()) if name not in state]
        if missing:
            raise CheckpointError(f"not a tree ensemble: no '{missing[0]}'")
        arrays = {name: torch.as_tensor(state[name]).numpy() for name in cls._array_names()}
        return cls(features=tuple(str(name) for name in state["features"]), baseline=float(state["baseline"]), **arrays)

    @staticmethod
    def _array_names() -> list[str]:
        return [f.name for f in fields(TreeEnsemble) if f.name not in ("features", "baseline")]


def _private(regressor: Any, name: str) -> Any:
    """A private attribute of a fitted regressor, or an error naming the versions this was checked on."""
    try:
        return getattr(regressor, name)
    except AttributeError:
        raise ValueError(f"{_unchecked()}: a fitted {type(regressor).__name__} has no '{name}'") from None


def _unchecked() -> str:
    import sklearn

    return f"scikit-learn {sklearn.__version__} is not one the tree flattening was checked on ({SKLEARN_CHECKED})"
