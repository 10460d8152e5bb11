"""Tiny trained models for the tests of `velocity predict` and `velocity studio`: session fixtures
(conftest.py imports them), trained for a few steps through the stage functions `dvc repro` runs."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from conftest import one_torch_thread, params_section

TINY_SCORES = Path(__file__).resolve().parents[2] / "shared/data/asap-maestro-v3.0.0-tiny-scores.zip"
TEST_SCORE = "asap-dataset/Bach/Prelude/bwv_862/midi_score.mid"


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, tiny_raw) -> Path:
    """A tiny Velocity Transformer trained for a few steps on the tiny MAESTRO archive, through the
    same stage functions `dvc repro train` runs."""
    from velocity.model.features import learn_feature_edges
    from velocity.stages.bins import BinsParams, learn_bins
    from velocity.stages.extract import extract_notes

    root = tmp_path_factory.mktemp("tiny_model")
    extract_notes(tiny_raw, root / "notes", sustain=False, workers=1)
    train_notes = pd.read_parquet(root / "notes/train.parquet")
    bins = learn_bins(train_notes, BinsParams(dstart=3, duration=3, velocity=3, fixed_edges=None))
    bins["features"] = learn_feature_edges(train_notes, {"dprev": 8, "chord_rank": 4})
    return train_tiny(root, bins, root / "notes")


@pytest.fixture(scope="session")
def trained_score_model(tmp_path_factory, tiny_raw) -> tuple[Path, Path]:
    """A tiny score model trained for a few steps on the tiny archives' aligned scores, blended with a
    20-iteration tree, through the stage functions `dvc repro score_tree score_train` run; returns
    (the model file, the unzipped scores)."""
    import zipfile

    from velocity.model.checkpoint import save_checkpoint
    from velocity.model.features import GBT_FEATURES, learn_feature_edges
    from velocity.stages.align import AlignParams, align
    from velocity.stages.bins import BinsParams, learn_bins
    from velocity.stages.extract import extract_notes
    from velocity.stages.gbt import RELATIVE_SCORE_FEATURES, GbtParams, fit_predict

    if not TINY_SCORES.is_file():
        pytest.skip(f"{TINY_SCORES} not found (the shared ASAP scores archive)")
    root = tmp_path_factory.mktemp("tiny_score_model")
    extract_notes(tiny_raw, root / "notes", sustain=False, workers=1)
    with zipfile.ZipFile(TINY_SCORES) as archive:
        archive.extractall(root / "scores")
    align(root / "scores/asap-dataset", root / "notes", root / "aligned", AlignParams(tolerance=0.2, skipped_beat=0.05))
    train_notes = pd.read_parquet(root / "aligned/train.parquet")
    bins = learn_bins(pd.read_parquet(root / "notes/train.parquet"), BinsParams(dstart=3, duration=3, velocity=3, fixed_edges=None))
    bins["features"] = learn_feature_edges(train_notes, {"beat_dprev": 8, "bar_phase": 4, "notated_rank": 4, "notated_flat": 2})
    *_, tree = fit_predict(train_notes, {}, GbtParams(max_iter=20, seed=0), GBT_FEATURES + RELATIVE_SCORE_FEATURES)
    save_checkpoint(root / "score_tree/tree.pt", tree.to_state())
    return train_tiny(root, bins, root / "aligned", input_kind="score", blend_tree=root / "score_tree/tree.pt"), root / "scores"


def train_tiny(root: Path, bins: dict, notes_dir: Path, input_kind: str = "performance", blend_tree: Path | None = None) -> Path:
    """The vocabulary, 32-note windows of `notes_dir`'s train and validation notes, and 20 training
    steps of a one-layer model calibrated on validation, all under `root`; returns the model file."""
    from velocity.model.training import TrainConfig
    from velocity.io import save_npy, write_json
    from velocity.stages.train import ModelParams, run_training
    from velocity.stages.vocab import build_vocab
    from velocity.stages.windows import WindowsParams, make_windows

    vocab = build_vocab(bins, velocity_hint=False)
    write_json(root / "bins.json", bins)
    write_json(root / "vocab.json", vocab.to_dict())
    windows_params = params_section(WindowsParams, "windows", length=32, step=16)
    for split in ("train", "validation"):
        windows = make_windows(pd.read_parquet(notes_dir / f"{split}.parquet"), bins, vocab, windows_params)
        for name in ("src", "tgt", "features"):
            save_npy(root / f"windows/{split}_{name}.npy", getattr(windows, name))
    write_json(root / "windows/stats.json", {"length": 32, "step": 16, "tail": "last", "short": "pad"})
    with one_torch_thread():  # a session fixture runs outside the tests' single_threaded
        run_training(
            root / "windows", root / "vocab.json", root / "bins.json", root / "models",
            params_section(ModelParams, "model", layers=1, heads=2, d_model=32, d_ff=64, dropout=0.0),
            params_section(TrainConfig, "train", batch_size=16, warmup=10, lr_factor=2.0, max_steps=20, eval_every=20, checkpoint_every=20,
                           device="cpu", eval_windows=16, ensemble=1),
            live_dir=None, calibration_notes=notes_dir / "validation.parquet", input_kind=input_kind, blend_tree=blend_tree,
        )  # fmt: skip
    return root / "models/velocity.pt"
