"""Stage `timing_tree`: the timing baseline a user would build in an afternoon, one tree per target.

    python -m velocity.stages.timing_tree data/aligned data/timing_tree

For each of the align stage's timing targets (`log_pace`, `onset_deviation`, `articulation`,
`pedal_down`) a scikit-learn histogram gradient-boosted model on the score model's tree features
(the notes' shape, the meter, the notated tempo, the dynamics relative to the piece) plus the
score's own pedal marks: a regressor (absolute error) for the first three, fitted on the notes the
pianist played; a classifier for the pedal, fitted on every note. Fitted on the notes of whole train
performances drawn in a seeded order up to `timing_tree.max_train_notes` (a user's afternoon: the
2.5 M notes of both shared archives take a tree many minutes). Writes every test note's prediction (the pedal as a probability), in
data/aligned/test.parquet's row order, to `test.parquet`, and `report.json`.
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
from velocity.model.features import GBT_FEATURES, SCORE_GBT_FEATURES, note_features
from velocity.model.timing import TIMING_TARGETS

log = logging.getLogger(__name__)

FEATURES = GBT_FEATURES + tuple(name for name in SCORE_GBT_FEATURES if name != "notated_velocity")


@dataclass(frozen=True)
class TimingTreeParams:
    max_iter: int  # boosting iterations per target
    max_train_notes: int  # train notes sampled for fitting
    seed: int

    def __post_init__(self) -> None:
        if self.max_iter < 1 or self.max_train_notes < 1:
            raise params_lib.ParamsError("timing_tree.max_iter and timing_tree.max_train_notes must be positive")


def tree_inputs(notes: pd.DataFrame) -> np.ndarray:
    """The trees' features of every note: `FEATURES` and the score's pedal at the onset."""
    return np.column_stack([note_features(notes, FEATURES).to_numpy(), notes["pedal"].to_numpy(dtype=np.float64)])


def sample_performances(train: pd.DataFrame, max_notes: int, seed: int) -> pd.DataFrame:
    """Whole performances in a seeded order, until they hold `max_notes` notes (the features read
    each note's neighbours, so a piece is never cut)."""
    pieces = train["piece_id"].drop_duplicates().to_numpy()
    order = np.random.default_rng(seed).permutation(len(pieces))
    sizes = train.groupby("piece_id", sort=False).size().loc[pieces[order]].to_numpy()
    chosen = set(pieces[order][: int(np.searchsorted(np.cumsum(sizes), max_notes)) + 1])
    return train[train["piece_id"].isin(chosen)]


def fit_predict(train: pd.DataFrame, test: pd.DataFrame, params: TimingTreeParams) -> tuple[pd.DataFrame, dict]:
    """Each target's predictions for every `test` note, and a report."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    began = time.perf_counter()
    train = sample_performances(train, params.max_train_notes, params.seed)
    x_train, x_test = tree_inputs(train), tree_inputs(test)
    played = train["velocity"].to_numpy() >= 0
    predicted, report = {}, {"train_notes": len(train), "train_performances": int(train["piece_id"].nunique()), "features": x_train.shape[1]}
    for name in TIMING_TARGETS:
        y = train[name].to_numpy(dtype=np.float64)
        if name == "pedal_down":
            model = HistGradientBoostingClassifier(max_iter=params.max_iter, early_stopping=False, random_state=params.seed)
            model.fit(x_train, y.astype(np.int64))
            predicted[name] = model.predict_proba(x_test)[:, list(model.classes_).index(1)] if 1 in model.classes_ else np.zeros(len(test))
        else:
            fit = played & np.isfinite(y)
            model = HistGradientBoostingRegressor(loss="absolute_error", max_iter=params.max_iter, early_stopping=False, random_state=params.seed)
            model.fit(x_train[fit], y[fit])
            predicted[name] = model.predict(x_test)
        log.info("fitted the %s tree", name)
    report["seconds"] = round(time.perf_counter() - began, 1)
    return pd.DataFrame(predicted, index=test.index), report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("aligned_dir", type=Path, help="data/aligned")
    parser.add_argument("out_dir", type=Path, help="data/timing_tree")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    params = params_lib.load(TimingTreeParams, "timing_tree")
    train = pd.read_parquet(args.aligned_dir / "train.parquet")
    test = pd.read_parquet(args.aligned_dir / "test.parquet")
    if len(train) == 0:
        raise SystemExit(f"timing_tree: {args.aligned_dir / 'train.parquet'}: no aligned train notes")
    predicted, report = fit_predict(train, test, params)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out_dir / "test.parquet") as tmp:
        predicted.reset_index(drop=True).to_parquet(tmp)
    write_json(args.out_dir / "report.json", report)
    log.info("wrote %s: %s", args.out_dir, report)


if __name__ == "__main__":
    main()
