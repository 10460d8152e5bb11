"""Stage `timing_tree`: the timing baseline a user would build in an afternoon, one tree per target.

    python -m velocity.stages.timing_tree data/aligned data/timing_tree

For each of the align stage's timing targets (`log_pace`, `onset_deviation`, `articulation`,
`pedal_down`) a scikit-learn `HistGradientBoostingRegressor` on the score model's tree features
(the notes' shape, the meter, the notated tempo, the dynamics relative to the piece) plus the
score's own pedal marks (velocity/model/timing_net.py `tree_inputs`): absolute error for the
first three, fitted on the notes that have them; squared error for the pedal (0/1), so it predicts
the chance it is down. Fitted on the notes of whole train
performances drawn in a seeded order up to `timing_tree.max_train_notes` (a user's afternoon: the
2.5 M notes of both shared archives take a tree many minutes). Writes every test note's prediction (the pedal as a probability), in
data/aligned/{validation,test}.parquet's row order, to `{validation,test}.parquet`, the trees as
tensors (`trees.pt`, velocity/model/trees.py; the timing model blends with them) and `report.json`.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from velocity import params as params_lib
from velocity.io import atomic_path, write_json
from velocity.model.checkpoint import save_checkpoint
from velocity.model.timing import TIMING_TARGETS
from velocity.model.timing_net import PEDAL, TREE_FEATURES, blend_error, tree_inputs, tree_predictions
from velocity.model.trees import TreeEnsemble

log = logging.getLogger(__name__)

SPLITS = ("validation", "test")


@dataclass(frozen=True)
class TimingTreeParams:
    max_iter: int  # boosting iterations per target
    max_train_notes: int  # train notes sampled for fitting
    seed: int

    def __post_init__(self) -> None:
        if self.max_iter < 1 or self.max_train_notes < 1:
            raise params_lib.ParamsError("timing_tree.max_iter and timing_tree.max_train_notes must be positive")


def sample_performances(train: pd.DataFrame, max_notes: int, seed: int) -> pd.DataFrame:
    """Whole performances in a seeded order, until they hold `max_notes` notes (the features read
    each note's neighbours, so a piece is never cut)."""
    pieces = train["piece_id"].drop_duplicates().to_numpy()
    order = np.random.default_rng(seed).permutation(len(pieces))
    sizes = train.groupby("piece_id", sort=False).size().loc[pieces[order]].to_numpy()
    chosen = set(pieces[order][: int(np.searchsorted(np.cumsum(sizes), max_notes)) + 1])
    return train[train["piece_id"].isin(chosen)]


def fit_trees(train: pd.DataFrame, params: TimingTreeParams) -> tuple[dict[str, TreeEnsemble], dict]:
    """One tree per timing target, and a report."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    began = time.perf_counter()
    train = sample_performances(train, params.max_train_notes, params.seed)
    x = tree_inputs(train)
    trees, report = {}, {"train_notes": len(train), "train_performances": int(train["piece_id"].nunique()), "features": x.shape[1]}
    for name in TIMING_TARGETS:
        y = train[name].to_numpy(dtype=np.float64)
        fit = np.isfinite(y)
        regressor = HistGradientBoostingRegressor(loss="squared_error" if name == PEDAL else "absolute_error", max_iter=params.max_iter,
                                                  early_stopping=False, random_state=params.seed)  # fmt: skip
        regressor.fit(x[fit], y[fit])
        trees[name] = TreeEnsemble.from_sklearn(regressor, (*TREE_FEATURES, "pedal"))
        log.info("fitted the %s tree on %d notes", name, int(fit.sum()))
    report["seconds"] = round(time.perf_counter() - began, 1)
    return trees, report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("aligned_dir", type=Path, help="data/aligned")
    parser.add_argument("out_dir", type=Path, help="data/timing_tree")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    params = params_lib.load(TimingTreeParams, "timing_tree")
    train = pd.read_parquet(args.aligned_dir / "train.parquet")
    if len(train) == 0:
        raise SystemExit(f"timing_tree: {args.aligned_dir / 'train.parquet'}: no aligned train notes")
    trees, report = fit_trees(train, params)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        notes = pd.read_parquet(args.aligned_dir / f"{split}.parquet")
        predicted = tree_predictions(trees, notes)
        for name in TIMING_TARGETS:
            report[f"{split}_{name}_error"] = blend_error(name, predicted[name].to_numpy(), notes)  # the onset's: 1 - r
        with atomic_path(args.out_dir / f"{split}.parquet") as tmp:
            predicted.reset_index(drop=True).to_parquet(tmp)
    save_checkpoint(args.out_dir / "trees.pt", {name: tree.to_state() for name, tree in trees.items()})
    write_json(args.out_dir / "report.json", report)
    log.info("wrote %s: %s", args.out_dir, report)


if __name__ == "__main__":
    main()
