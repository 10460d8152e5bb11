"""Stage `gbt`: the baseline a user would build instead, gradient-boosted trees on 46 note features.

scikit-learn's `HistGradientBoostingRegressor(loss="absolute_error")`, fitted on the train split
only (a seeded sample of `gbt.max_train_notes` notes when it holds more), one row per note, the features of `velocity.model.features.GBT_FEATURES`. It writes its predicted
velocity of every validation and test note (row order of data/notes/{split}.parquet), so that
evaluate scores it beside the Transformer without refitting, and the fitted trees as plain tensors
(`tree.pt`, velocity/model/trees.py), never pickled.

With `--score` it is the score path's baseline: fitted on the aligned score notes (data/aligned)
with the score's features beside those (`SCORE_GBT_FEATURES`: meter, beats, notated tempo, the
notated velocity raw and relative to the piece), the pianist's velocity as target. Every score note
is read for its neighbours' features; only paired notes (velocity >= 0) are fitted and scored.
With `--score --relative` the raw notated velocity is left out, so the notated dynamics count only
relative to the piece, as the score model reads them: that tree is the one the score model blends
with (score_tree), since a flat file or another notation program's curve then reads the same.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from velocity.model.checkpoint import save_checkpoint
from velocity.model.features import GBT_FEATURES, SCORE_GBT_FEATURES, note_features
from velocity.model.trees import TreeEnsemble
from velocity import params as params_lib
from velocity.io import save_npy, write_json

log = logging.getLogger(__name__)

PREDICTED_SPLITS = ("validation", "test")  # train is what the trees fit
RELATIVE_SCORE_FEATURES = tuple(name for name in SCORE_GBT_FEATURES if name != "notated_velocity")
PERFORMANCE_COLUMNS = ["piece_id", "pitch", "start", "duration", "dstart", "velocity"]  # what the trees read of a notes table


@dataclass(frozen=True)
class GbtParams:
    max_iter: int  # boosting iterations (the baseline: 300)
    max_train_notes: int  # a seeded sample of the train notes is fitted (each note's features read from its whole piece)
    seed: int

    def __post_init__(self) -> None:
        if self.max_iter < 1 or self.max_train_notes < 1:
            raise params_lib.ParamsError(f"gbt.max_iter and gbt.max_train_notes must be positive, got {self.max_iter} and {self.max_train_notes}")


def fit_predict(
    train: pd.DataFrame, others: dict[str, pd.DataFrame], params: GbtParams, features: tuple[str, ...] = GBT_FEATURES
) -> tuple[dict[str, np.ndarray], dict, TreeEnsemble]:
    """Fit on `train`'s notes with a velocity (>= 0); the predicted velocity (float) of every note
    of each of `others`, a report, and the fitted trees."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    target = train["velocity"].to_numpy(dtype=np.float64)
    if not (target >= 0).any():
        raise ValueError("gbt: the train split has no notes to fit on")
    began = time.perf_counter()
    regressor = HistGradientBoostingRegressor(
        loss="absolute_error", max_iter=params.max_iter, early_stopping=False, random_state=params.seed
    )
    fitted = np.flatnonzero(target >= 0)
    if len(fitted) > params.max_train_notes:
        fitted = np.sort(np.random.default_rng(params.seed).choice(fitted, params.max_train_notes, replace=False))
    regressor.fit(note_features(train, features).to_numpy()[fitted], target[fitted])
    tree = TreeEnsemble.from_sklearn(regressor, tuple(features))
    predicted = {name: tree.predict(notes) for name, notes in others.items()}
    report = {"features": len(features), "train_notes": len(train), "fitted_notes": len(fitted), "seconds": round(time.perf_counter() - began, 1)}
    for name, notes in others.items():
        true = notes["velocity"].to_numpy()
        if (true >= 0).any():
            report[f"{name}_mae"] = float(np.mean(np.abs(predicted[name] - true)[true >= 0]))
    return predicted, report, tree


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notes_dir", type=Path, help="data/notes")
    parser.add_argument("out_dir", type=Path, help="data/gbt")
    parser.add_argument("--score", action="store_true", help="notes_dir holds aligned scores (data/aligned): add the score features")
    parser.add_argument("--relative", action="store_true", help="with --score: the notated dynamics only relative to the piece")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    params = params_lib.load(GbtParams, "gbt")
    if args.relative and not args.score:
        parser.error("--relative needs --score")
    features = GBT_FEATURES
    if args.score:
        features += RELATIVE_SCORE_FEATURES if args.relative else SCORE_GBT_FEATURES
    columns = None if args.score else PERFORMANCE_COLUMNS  # a score's table: every column
    train = pd.read_parquet(args.notes_dir / "train.parquet", columns=columns)
    others = {split: pd.read_parquet(args.notes_dir / f"{split}.parquet", columns=columns) for split in PREDICTED_SPLITS}
    log.info("fitting %d boosting iterations on up to %d of %d train notes x %d features", params.max_iter, params.max_train_notes, len(train), len(features))
    try:
        predicted, report, tree = fit_predict(train, others, params, features)
    except ValueError as err:
        raise SystemExit(f"{args.notes_dir}: {err}") from None
    for split, velocity in predicted.items():
        save_npy(args.out_dir / f"{split}_velocity.npy", velocity.astype(np.float32))
    save_checkpoint(args.out_dir / "tree.pt", tree.to_state())
    write_json(args.out_dir / "report.json", report)
    log.info("wrote %s: %s", args.out_dir, report)


if __name__ == "__main__":
    main()
