"""Stage `bins`: quantile bin edges for dstart, duration and velocity, learned on the train split,
and the edges of every per-note feature params.yaml's `features:` names (velocity/model/features.py).

Edges are exactly what scikit-learn's `KBinsDiscretizer(strategy="quantile").bin_edges_` gives, so
`velocity.model.codec.bin_index` (its `transform`) puts a value in the same bin as scikit-learn would.
Fixed edges in params override learning, e.g. to reproduce the seed's published edges.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.preprocessing import KBinsDiscretizer

from velocity import params as params_lib
from velocity.model.config import ParamsError
from velocity.io import write_json
from velocity.model.codec import bin_index
from velocity.model.features import learn_feature_edges

log = logging.getLogger(__name__)

FEATURES = ("dstart", "duration", "velocity")


@dataclass(frozen=True)
class BinsParams:
    dstart: int
    duration: int
    velocity: int
    fixed_edges: dict[str, list[float]] | None


def quantile_edges(values: np.ndarray, n_bins: int) -> list[float]:
    """The n_bins+1 quantile edges of `values`, as KBinsDiscretizer learns them."""
    if len(values) == 0:
        raise ValueError("cannot learn bin edges from an empty train split")
    # subsample=None: exact quantiles of every note (the default samples 200k notes at random).
    discretizer = KBinsDiscretizer(
        n_bins=n_bins, encode="ordinal", strategy="quantile", quantile_method="linear", subsample=None
    )
    discretizer.fit(np.asarray(values, dtype=np.float64).reshape(-1, 1))
    edges = discretizer.bin_edges_[0]
    if len(edges) != n_bins + 1:
        # KBinsDiscretizer drops duplicate edges (with a warning) when a feature has few distinct
        # values; every token would then shift meaning, so we refuse instead.
        raise ValueError(f"only {len(edges) - 1} distinct quantile bins exist for {n_bins} requested: ask for {len(edges) - 1} or fewer, or give fixed_edges")
    return [float(e) for e in edges]


def learn_bins(train_notes: pd.DataFrame, params: BinsParams) -> dict:
    """Edges per feature (fixed ones from params win) and the share of train notes per bin."""
    fixed = params.fixed_edges or {}
    unknown = set(fixed) - set(FEATURES)
    if unknown:
        raise ParamsError(f"bins.fixed_edges: unknown feature '{sorted(unknown)[0]}'")
    result: dict = {}
    for name in FEATURES:
        values = train_notes[name].to_numpy(dtype=np.float64)
        if name in fixed:
            edges = [float(e) for e in fixed[name]]
            if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
                raise ParamsError(f"bins.fixed_edges.{name}: need at least 2 strictly increasing edges, got {edges}")
        else:
            try:
                edges = quantile_edges(values, getattr(params, name))
            except ValueError as err:
                raise ParamsError(f"bins.{name}: {err}") from None
        result[name] = edges
    counts = {
        name: np.bincount(bin_index(train_notes[name].to_numpy(), result[name]), minlength=len(result[name]) - 1)
        for name in FEATURES
    }
    result["share"] = {name: [round(float(c) / max(1, len(train_notes)), 6) for c in counts[name]] for name in FEATURES}
    return result


def feature_counts(params: dict, section: str = "features") -> dict[str, int]:
    """params.yaml's `features:` (or `section`) section: feature name -> bins, in order ({} or null: none)."""
    counts = params.get(section)
    if counts is None:
        return {}
    if not isinstance(counts, dict):
        raise params_lib.ParamsError(f"params.yaml: {section} must map feature names to bin counts, got {counts!r}")
    return dict(counts)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("train_notes", type=Path, help="data/notes/train.parquet")
    parser.add_argument("out", type=Path, help="data/bins.json")
    parser.add_argument("--features-section", default="features",
                        help="the params.yaml section naming the note features (score_features for the score model)")
    parser.add_argument("--token-edges", type=Path,
                        help="data/bins.json: take dstart, duration and velocity edges from it (the score model "
                             "shares the performance model's tokens) and learn only the features")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    all_params = params_lib.read_params()
    params = params_lib.section(BinsParams, "bins", all_params)
    counts = feature_counts(all_params, args.features_section)
    notes = pd.read_parquet(args.train_notes)
    try:  # degenerate data is one line that says what to change, not a traceback
        if args.token_edges:
            bins = {k: v for k, v in json.loads(args.token_edges.read_text()).items() if k in (*FEATURES, "share")}
        else:
            bins = learn_bins(notes, params)
        bins["features"] = learn_feature_edges(notes, counts, args.features_section)
    except ValueError as err:
        raise SystemExit(f"{args.train_notes}: {err} (params.yaml)") from None
    write_json(args.out, bins)
    for name in FEATURES if not args.token_edges else ():
        log.info("%s edges %s, share %s", name, np.round(bins[name], 4).tolist(), bins["share"][name])
    for name, edges in bins["features"].items():
        merged = "" if len(edges) - 1 == counts[name] else f" ({counts[name]} asked; equal quantiles merged)"
        log.info("feature %s: %d bins%s", name, len(edges) - 1, merged)
    log.info("wrote %s (learned on %d train notes)", args.out, len(notes))


if __name__ == "__main__":
    main()
