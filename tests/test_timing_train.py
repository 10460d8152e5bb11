"""The timing_train stage's ensemble (velocity/stages/timing_train.py): networks from consecutive
seeds, trained side by side or in turn to the same weights, averaged when a score is read."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import params_section
from trained_models import WINDOW_LENGTH, WINDOW_STEP, DemoData


def test_timing_networks_side_by_side_equal_those_in_turn_and_the_model_averages_them(demo_data: DemoData, demo_score_windows,
                                                                                       trained_timing_model, tmp_path):  # fmt: skip
    """`trained_timing_model` trains its two networks one after another; the same params with
    `member_processes: 2` train them in two processes to the same weights and curves. Reading a
    score, the model's outputs are the mean of its two networks' own."""
    from velocity.model.checkpoint import load_checkpoint
    from velocity.model.timing_net import TimingEnsemble, TimingTrainConfig, predict_timing, timing_model
    from velocity.stages.timing_train import TimingModelParams, train_timing

    root = demo_score_windows
    train_timing(
        root / "windows", demo_data.aligned, root / "vocab.json", root / "bins.json", tmp_path / "timing.pt", tmp_path / "checkpoints",
        params_section(TimingModelParams, "timing_train.model", layers=1, heads=2, d_model=32, d_ff=64, dropout=0.0),
        params_section(TimingTrainConfig, "timing_train.train", batch_size=16, warmup=10, lr_factor=2.0, epochs=None, max_steps=20, eval_every=20,
                       checkpoint_every=20, device="cpu", ensemble=2, member_processes=2),
        WINDOW_LENGTH, WINDOW_STEP, live_dir=tmp_path / "live",
    )  # fmt: skip
    in_turn, side_by_side = load_checkpoint(trained_timing_model), load_checkpoint(tmp_path / "timing.pt")
    assert len(side_by_side["members"]) == 1
    for state, other in [(in_turn["model"], side_by_side["model"]), (in_turn["members"][0], side_by_side["members"][0])]:
        assert all(torch.equal(state[k], other[k]) for k in state)
    assert not all(torch.equal(side_by_side["model"][k], side_by_side["members"][0][k]) for k in side_by_side["model"])  # two seeds
    with open(tmp_path / "live" / "plots" / "metrics" / "member_1" / "val_loss.tsv", newline="") as f:
        assert [int(row["step"]) for row in csv.DictReader(f, delimiter="\t")] == [20]
    assert (tmp_path / "checkpoints" / "member_1" / "last.pt").exists()

    notes = pd.read_parquet(demo_data.aligned / "validation.parquet")
    model = timing_model(in_turn)
    assert isinstance(model.net, TimingEnsemble)
    alone = [predict_timing(timing_model({**in_turn, "model": weights, "members": []}), notes, blend=False)
             for weights in (in_turn["model"], in_turn["members"][0])]  # fmt: skip
    both = predict_timing(model, notes, blend=False)
    regression = ["log_pace", "onset_deviation", "articulation"]
    np.testing.assert_allclose(both[regression], (alone[0][regression] + alone[1][regression]) / 2, atol=1e-5)
    assert not np.allclose(alone[0][regression], alone[1][regression])


def test_an_ensemble_of_no_timing_networks_is_refused():
    from velocity.model.config import ParamsError
    from velocity.model.timing_net import TimingTrainConfig

    with pytest.raises(ParamsError, match="timing_train.train.ensemble must be at least 1, got 0"):
        params_section(TimingTrainConfig, "timing_train.train", ensemble=0)
    with pytest.raises(ParamsError, match="timing_train.train.ema must be in"):
        params_section(TimingTrainConfig, "timing_train.train", ema=1.0)
