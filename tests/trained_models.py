"""Tiny trained models for the tests of `velocity predict` and `velocity studio`: session fixtures
(conftest.py imports them), trained for a few steps through the stage functions `dvc repro` runs,
on a small generated demo corpus (velocity/datasets/demo_corpus.py), so a bare clone without
../shared tests the main feature.

The demo data (`demo_data`): DEMO_PIECES pieces of seed DEMO_SEED in MAESTRO's layout and their
scores in ASAP's layout (with the scores' ASAP-only performances), extracted, aligned. From it:
- `trained_model`: the performance model (notes -> bins, vocab, windows, train);
- `trained_score_model`: the score model blended with a tree (aligned -> score bins, vocab, score
  windows, tree, train), returned with the folder that holds the scores (`TEST_SCORE` inside it);
- `trained_timing_model`: the timing model, two networks (the same score windows and the aligned
  notes' timing targets, `timing_train`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from conftest import one_torch_thread, params_section

DEMO_PIECES = 6  # one test and two validation pieces among them (velocity.datasets.demo_corpus.assign_splits)
DEMO_SEED = 7
# A Romantic nocturne of the demo data (rubato, chord spread, pedal), relative to the folder
# `trained_score_model` returns; and its performance, relative to `demo_raw.parent`.
TEST_SCORE = "asap-dataset/Demo/Demo_Romantic/Nocturne_No_6_in_C_major/midi_score.mid"
DEMO_PIECE = "maestro-v3.0.0/2006/DEMO_0005_Nocturne_No_6_in_C_major.midi"
WINDOW_LENGTH, WINDOW_STEP = 32, 16


@dataclass(frozen=True)
class DemoData:
    """The demo data laid out as `dvc repro` lays out data/: `root` holds raw/, raw_scores/, notes/, aligned/."""

    root: Path
    raw: Path  # raw/maestro-v3.0.0: the MAESTRO-layout corpus (csv and MIDI)
    scores: Path  # raw_scores/asap-dataset: the ASAP-layout scores, beat annotations and performances
    notes: Path
    aligned: Path


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory) -> DemoData:
    """The demo corpus and its scores, generated, extracted and aligned by the stage functions."""
    from velocity.datasets.demo_corpus import generate_corpus, generate_scores
    from velocity.stages.align import AlignParams, align
    from velocity.stages.extract import extract_notes

    root = tmp_path_factory.mktemp("demo_data")
    raw = generate_corpus(root / "raw", DEMO_PIECES, DEMO_SEED)
    scores = generate_scores(root / "raw_scores", DEMO_PIECES, DEMO_SEED)
    extract_notes(raw, root / "notes", sustain=False, workers=1, scores_dir=scores)
    align(scores, root / "notes", root / "aligned", params_section(AlignParams, "align"), performances_dir=raw)
    data = DemoData(root, raw, scores, root / "notes", root / "aligned")
    assert (data.scores.parent / TEST_SCORE).is_file() and (data.raw.parent / DEMO_PIECE).is_file()
    return data


@pytest.fixture(scope="session")
def demo_raw(demo_data: DemoData) -> Path:
    """The demo corpus's `maestro-v3.0.0/` folder (as `tiny_raw` is the tiny archive's): `demo_raw.parent / DEMO_PIECE`."""
    return demo_data.raw


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory, demo_data: DemoData) -> Path:
    """A tiny Velocity Transformer trained for a few steps on the demo corpus, through the same
    stage functions `dvc repro train` runs."""
    from velocity.model.features import learn_feature_edges
    from velocity.stages.bins import BinsParams, learn_bins

    root = tmp_path_factory.mktemp("tiny_model")
    train_notes = pd.read_parquet(demo_data.notes / "train.parquet")
    bins = learn_bins(train_notes, BinsParams(dstart=3, duration=3, velocity=3, fixed_edges=None))
    bins["features"] = learn_feature_edges(train_notes, {"dprev": 8, "chord_rank": 4})
    write_windows(root, bins, demo_data.notes)
    return train_tiny(root, demo_data.notes)


@pytest.fixture(scope="session")
def demo_score_windows(demo_data: DemoData) -> Path:
    """The score bins, vocabulary and score windows (rows included) of the demo data's aligned
    notes, written under `demo_data.root` (bins.json, vocab.json, windows/) as score_bins,
    vocab and score_windows write them; returns that root."""
    from velocity.model.features import learn_feature_edges
    from velocity.stages.bins import BinsParams, learn_bins

    train_notes = pd.read_parquet(demo_data.aligned / "train.parquet")
    bins = learn_bins(pd.read_parquet(demo_data.notes / "train.parquet"), BinsParams(dstart=3, duration=3, velocity=3, fixed_edges=None))
    bins["features"] = learn_feature_edges(train_notes, {"beat_dprev": 8, "bar_phase": 4, "notated_rank": 4, "notated_flat": 2})
    write_windows(demo_data.root, bins, demo_data.aligned)
    return demo_data.root


@pytest.fixture(scope="session")
def trained_score_model(demo_data: DemoData, demo_score_windows: Path) -> tuple[Path, Path]:
    """A tiny score model trained for a few steps on the demo data's aligned scores, blended with a
    20-iteration tree, through the stage functions `dvc repro score_tree score_train` run; returns
    (the model file, the folder holding the scores' `asap-dataset/`: `TEST_SCORE` inside it). The
    model file lies in `<root>/models/`, beside `<root>/aligned/`."""
    from velocity.model.checkpoint import save_checkpoint
    from velocity.model.features import GBT_FEATURES
    from velocity.stages.gbt import RELATIVE_SCORE_FEATURES, GbtParams, fit_predict

    root = demo_score_windows
    *_, tree = fit_predict(pd.read_parquet(demo_data.aligned / "train.parquet"), {}, GbtParams(max_iter=20, max_train_notes=1_000_000, seed=0),
                           GBT_FEATURES + RELATIVE_SCORE_FEATURES)  # fmt: skip
    save_checkpoint(root / "score_tree/tree.pt", tree.to_state())
    return train_tiny(root, demo_data.aligned, input_kind="score", blend_tree=root / "score_tree/tree.pt"), demo_data.scores.parent


@pytest.fixture(scope="session")
def trained_timing_model(demo_data: DemoData, demo_score_windows: Path) -> Path:
    """A tiny timing model of two networks (velocity/model/timing_net.py), each trained for 20
    steps on the demo data's score windows and its aligned notes' timing targets, through the
    function `dvc repro timing_train` runs; returns the model file (`models/timing.pt` under the
    demo data's root)."""
    from velocity.stages.timing_train import TimingModelParams, train_timing
    from velocity.model.timing_net import TimingTrainConfig

    root = demo_score_windows
    with one_torch_thread():  # a session fixture runs outside the tests' single_threaded
        train_timing(
            root / "windows", demo_data.aligned, root / "vocab.json", root / "bins.json", root / "models/timing.pt",
            root / "models/timing_checkpoints",
            params_section(TimingModelParams, "timing_train.model", layers=1, heads=2, d_model=32, d_ff=64, dropout=0.0),
            params_section(TimingTrainConfig, "timing_train.train", batch_size=16, warmup=10, lr_factor=2.0, epochs=None, max_steps=20, eval_every=20,
                           checkpoint_every=20, device="cpu", ensemble=2, member_processes=1),
            WINDOW_LENGTH, WINDOW_STEP, live_dir=None,
        )  # fmt: skip
    return root / "models/timing.pt"


def write_windows(root: Path, bins: dict, notes_dir: Path) -> None:
    """`bins`, their vocabulary, and 32-note windows (source, target, features, rows) of
    `notes_dir`'s train and validation notes, under `root` as the windows stage writes them."""
    from velocity.io import save_npy, write_json
    from velocity.stages.vocab import build_vocab
    from velocity.stages.windows import WindowsParams, make_windows

    vocab = build_vocab(bins, velocity_hint=False)
    write_json(root / "bins.json", bins)
    write_json(root / "vocab.json", vocab.to_dict())
    windows_params = params_section(WindowsParams, "windows", length=WINDOW_LENGTH, step=WINDOW_STEP)
    for split in ("train", "validation"):
        windows = make_windows(pd.read_parquet(notes_dir / f"{split}.parquet"), bins, vocab, windows_params)
        for name in ("src", "tgt", "features", "rows"):
            save_npy(root / f"windows/{split}_{name}.npy", getattr(windows, name))
    write_json(root / "windows/stats.json", {"length": WINDOW_LENGTH, "step": WINDOW_STEP, "tail": "last", "short": "pad"})


def train_tiny(root: Path, notes_dir: Path, input_kind: str = "performance", blend_tree: Path | None = None) -> Path:
    """20 training steps of a one-layer model on `write_windows`' files under `root`, calibrated on
    `notes_dir`'s validation notes; returns the model file (`root/models/velocity.pt`)."""
    from velocity.model.training import TrainConfig
    from velocity.stages.train import ModelParams, run_training

    with one_torch_thread():  # a session fixture runs outside the tests' single_threaded
        run_training(
            root / "windows", root / "vocab.json", root / "bins.json", root / "models",
            params_section(ModelParams, "model", layers=1, heads=2, d_model=32, d_ff=64, dropout=0.0),
            params_section(TrainConfig, "train", batch_size=16, warmup=10, lr_factor=2.0, epochs=None, max_steps=20, eval_every=20, checkpoint_every=20,
                           device="cpu", eval_windows=16, ensemble=1),
            live_dir=None, calibration_notes=notes_dir / "validation.parquet", input_kind=input_kind, blend_tree=blend_tree,
        )  # fmt: skip
    return root / "models/velocity.pt"
