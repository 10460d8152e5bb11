"""Stage `gbt`: the baseline a user would build instead, gradient-boosted trees on 46 note features.

scikit-learn's `HistGradientBoostingRegressor(loss="absolute_error")`, fitted on the train split
only, one row per note, the features of `model.features.GBT_FEATURES`. It writes its predicted
velocity of every validation and test note (row order of data/notes/{split}.parquet), so that
evaluate scores it beside the Transformer without refitting, and no fitted model is pickled.
"""

from __future__ import annotations

import argparse
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from model.features import GBT_FEATURES, note_features
from stages import params as params_lib
from stages.io import save_npy, write_json

log = logging.getLogger(__name__)

SPLITS = ("validation", "test")
NOTE_COLUMNS = ["piece_id", "pitch", "start", "duration", "dstart", "velocity"]


@dataclass(frozen=True)
class GbtParams:
    max_iter: int  # boosting iterations (the baseline: 300)
    seed: int

    def __post_init__(self) -> None:
        if self.max_iter < 1:
            raise params_lib.ParamsError(f"gbt.max_iter must be positive, got {self.max_iter}")


def fit_predict(train: pd.DataFrame, others: dict[str, pd.DataFrame], params: GbtParams) -> tuple[dict[str, np.ndarray], dict]:
    """Fit on `train`'s notes; the predicted velocity (float) of every note of each of `others`."""
    from sklearn.ensemble import HistGradientBoostingRegressor

    if len(train) == 0:
        raise ValueError("gbt: the train split has no notes to fit on")
    began = time.perf_counter()
    features = list(GBT_FEATURES)
    tree = HistGradientBoostingRegressor(
        loss="absolute_error", max_iter=params.max_iter, early_stopping=False, random_state=params.seed
    )
    tree.fit(note_features(train, features).to_numpy(), train["velocity"].to_numpy(dtype=np.float64))
    predicted = {
        name: np.clip(tree.predict(note_features(notes, features).to_numpy()), 1, 127) if len(notes) else np.zeros(0)
        for name, notes in others.items()
    }
    report = {"features": len(features), "train_notes": len(train), "seconds": round(time.perf_counter() - began, 1)}
    for name, notes in others.items():
        if len(notes):
            report[f"{name}_mae"] = float(np.mean(np.abs(predicted[name] - notes["velocity"].to_numpy())))
    return predicted, report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notes_dir", type=Path, help="data/notes")
    parser.add_argument("out_dir", type=Path, help="data/gbt")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    params = params_lib.load(GbtParams, "gbt")
    train = pd.read_parquet(args.notes_dir / "train.parquet", columns=NOTE_COLUMNS)
    others = {split: pd.read_parquet(args.notes_dir / f"{split}.parquet", columns=NOTE_COLUMNS) for split in SPLITS}
    log.info("fitting %d boosting iterations on %d train notes x %d features", params.max_iter, len(train), len(GBT_FEATURES))
    try:
        predicted, report = fit_predict(train, others, params)
    except ValueError as err:
        raise SystemExit(f"{args.notes_dir}: {err}") from None
    for split, velocity in predicted.items():
        save_npy(args.out_dir / f"{split}_velocity.npy", velocity.astype(np.float32))
    write_json(args.out_dir / "report.json", report)
    log.info("wrote %s: %s", args.out_dir, report)


if __name__ == "__main__":
    main()
