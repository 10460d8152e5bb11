"""Training the Velocity Transformer: determinism, resuming after SIGKILL, stale checkpoints, the
seed configuration, and the train stage (its `dvc repro`, killed and resumed: tests/test_distributed.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import csv
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from velocity.model.checkpoint import load_checkpoint
from velocity.model.decode import load_model
from velocity.model.pieces import decode_windows
from velocity.model.training import (
    SEED_PRESET,
    TrainConfig,
    Windows,
    WindowsError,
    cut_windows,
    drop_inputs,
    dvc_set_args,
    VelocityTask,
    train,
)
from velocity.model.codec import N_SPECIALS, PAD, START
from velocity.model.transformer import ModelConfig, build_model, decoder_input
from velocity.stages.train import ModelParams, run_training
from conftest import ROOT, assert_weights_close, params_section, stage_error

# The encoder-decoder, teacher forced: the synthetic velocities below follow a per-window level that
# only the previous velocities reveal.
TINY_MODEL = {"layers": 1, "heads": 2, "d_model": 16, "d_ff": 32, "dropout": 0.1, "kind": "encoder-decoder", "aligned": False}
TINY_TRAIN = params_section(TrainConfig, "train", batch_size=4, accum=2, warmup=10, lr_factor=1.0, epochs=None, max_steps=8, seed=0,
                             device="cpu", eval_every=4, checkpoint_every=4, loss="kl", input_dropout=0.0,
                             transpose=0, ensemble=1)  # synthetic tokens: no pitches to move
SRC_VOCAB, TGT_VOCAB, LENGTH = 40, 131, 16


pytestmark = pytest.mark.usefixtures("single_threaded")


def write_windows_project(root: Path, n_train: int = 24, n_val: int = 6, seed: int = 0) -> Path:
    """A folder laid out like a project after the windows stage: data/windows, vocab, bins.

    Velocity follows a learnable rule like a performance's: a loudness level per window, plus 8 for
    odd source tokens ("melody notes"), plus a little noise. The last window of each split is half
    padding, as a piece's short tail would be.
    """
    rng = np.random.default_rng(seed)
    windows = root / "data" / "windows"
    windows.mkdir(parents=True)
    for split, n in (("train", n_train), ("validation", n_val), ("test", n_val)):
        src = rng.integers(N_SPECIALS, SRC_VOCAB, size=(n, LENGTH))
        level = rng.integers(40, 90, size=(n, 1))
        tgt = level + 8 * (src % 2) + rng.integers(-1, 2, size=src.shape) + N_SPECIALS
        src[-1, LENGTH // 2 :] = 0
        tgt[-1, LENGTH // 2 :] = 0
        np.save(windows / f"{split}_src.npy", src.astype(np.int16))
        np.save(windows / f"{split}_tgt.npy", tgt.astype(np.int16))
    (windows / "stats.json").write_text(json.dumps({"length": LENGTH, "step": LENGTH // 2}))
    vocab = {"src": ["<pad>", "<s>", "</s>"] + [f"p{i}" for i in range(SRC_VOCAB - 3)],
             "tgt": ["<pad>", "<s>", "</s>"] + [f"v{v}" for v in range(128)]}
    (root / "data" / "vocab.json").write_text(json.dumps(vocab))
    (root / "data" / "bins.json").write_text(json.dumps({"dstart": [0, 0.1, 9.0], "duration": [0, 0.2, 9.0], "velocity": [0, 64, 128]}))
    return root


def tiny_config() -> ModelConfig:
    return ModelConfig(src_vocab=SRC_VOCAB, tgt_vocab=TGT_VOCAB, max_len=LENGTH, features=(), **asdict(params_section(ModelParams, "model", **TINY_MODEL)))


def run_in(root: Path, cfg: TrainConfig, live: bool = False, sustain: bool = False):
    return run_training(
        root / "data" / "windows", root / "data" / "vocab.json", root / "data" / "bins.json", root / "models",
        params_section(ModelParams, "model", **TINY_MODEL), cfg, live_dir=root / "dvclive" / "train" if live else None,
        sustain=sustain,
    )


def test_training_is_deterministic_on_cpu(tmp_path):
    """Same seed -> bit-identical weights after N steps (dropout on); another seed -> different."""
    data = write_windows_project(tmp_path / "data_root")
    train_w, val_w = Windows.load(data / "data" / "windows", "train"), Windows.load(data / "data" / "windows", "validation")
    results = [
        train(tiny_config(), replace(TINY_TRAIN, seed=seed), train_w, val_w, tmp_path / f"ckpt{i}", progress=False)
        for i, seed in enumerate((0, 0, 1))
    ]
    a, b, c = (load_checkpoint(tmp_path / f"ckpt{i}" / "last.pt")["model"] for i in range(3))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)
    assert results[0].best == results[1].best


@pytest.mark.slow
def test_compiled_training_matches_eager_and_saves_plain_weights(tmp_path):
    """`train.compile: true` trains the same model (float tolerance; dropout off, since compiled
    dropout draws other random numbers) and checkpoints the plain network's weights, which load
    without torch.compile."""
    data = write_windows_project(tmp_path / "data_root")
    train_w, val_w = Windows.load(data / "data" / "windows", "train"), Windows.load(data / "data" / "windows", "validation")
    model_cfg = replace(tiny_config(), dropout=0.0)
    results = [train(model_cfg, replace(TINY_TRAIN, compile=compiled), train_w, val_w, tmp_path / f"ckpt{compiled}", progress=False)
               for compiled in (False, True)]  # fmt: skip
    eager, compiled = (load_checkpoint(tmp_path / f"ckpt{flag}" / "last.pt")["model"] for flag in (False, True))
    assert_weights_close(compiled, eager)  # the same keys, too: no `_orig_mod.` prefixes
    assert results[1].best["loss"] == pytest.approx(results[0].best["loss"], rel=1e-4)
    build_model(model_cfg).load_state_dict(compiled)


def test_training_learns_and_exports_a_self_contained_model(tmp_path):
    root = write_windows_project(tmp_path, n_train=48)
    cfg = replace(TINY_TRAIN, max_steps=80, accum=1, warmup=30, lr_factor=1.0, eval_every=20, checkpoint_every=40)
    result = run_in(root, cfg, sustain=True)
    assert result.start_step == 0 and result.step == 80
    ckpt = load_checkpoint(root / "models" / "velocity.pt")  # weights_only=True inside
    assert ckpt["kind"] == "velocity-transformer"
    assert ckpt["model_config"] == tiny_config().to_dict()
    assert ckpt["vocab"]["tgt"][N_SPECIALS] == "v0" and ckpt["bins"]["velocity"] == [0, 64, 128]
    assert ckpt["windows"]["length"] == LENGTH and ckpt["train"]["max_steps"] == 80
    assert ckpt["extract"] == {"sustain": True}  # predict reads a new file's pedal as the training notes were read
    assert ckpt["step"] == result.best_step and ckpt["best_val_loss"] == pytest.approx(result.best["loss"])
    # Learned something: the validation error beats always answering the validation set's median.
    val_tgt = np.load(root / "data" / "windows" / "validation_tgt.npy")
    notes = val_tgt[val_tgt > 0].astype(float)
    assert ckpt["val_mae"] < np.abs(notes - np.median(notes)).mean()
    # And `velocity predict` needs nothing else: decode the test windows from the file alone.
    model, _ = load_model(root / "models" / "velocity.pt")
    test_src = np.load(root / "data" / "windows" / "test_src.npy", mmap_mode="r")
    velocity = decode_windows(model, np.asarray(test_src), np.full(len(test_src), test_src.shape[1]), batch_windows=4)
    assert velocity.shape == test_src.shape
    assert ((velocity >= 0) & (velocity <= 127)).all() and (velocity[test_src == 0] == 0).all()


def test_a_finished_run_is_reused_and_changed_params_start_over(tmp_path):
    root = write_windows_project(tmp_path)
    first = run_in(root, TINY_TRAIN, live=True)
    assert (first.start_step, first.step) == (0, 8)
    exported = load_checkpoint(root / "models" / "velocity.pt")

    again = run_in(root, TINY_TRAIN, live=True)  # same params and data: nothing left to train
    assert (again.start_step, again.step) == (8, 8)
    reexported = load_checkpoint(root / "models" / "velocity.pt")
    assert all(torch.equal(exported["model"][k], reexported["model"][k]) for k in exported["model"])

    changed = run_in(root, replace(TINY_TRAIN, lr_factor=0.5), live=True)  # stale checkpoint: start over
    assert (changed.start_step, changed.step) == (0, 8)
    assert _steps_logged(root / "dvclive" / "train") == [4, 8]  # the restarted run's history only


def _steps_logged(live_dir: Path, metric: str = "val_loss") -> list[int]:
    with open(live_dir / "plots" / "metrics" / f"{metric}.tsv", newline="") as f:
        return [int(row["step"]) for row in csv.DictReader(f, delimiter="\t")]


@pytest.mark.slow
def test_resumes_after_sigkill_from_the_last_checkpoint(tmp_path):
    """Kill a training process with SIGKILL after its first checkpoint; the rerun continues from
    that checkpoint's step and ends with exactly the weights of an uninterrupted run."""
    # The length curriculum ends part-way, so the resumed run must also pick the right data view.
    # The weights' moving average, too, must go on as if never interrupted.
    cfg = replace(TINY_TRAIN, max_steps=150, accum=1, eval_every=10, checkpoint_every=3, curriculum_steps=20, curriculum_length=4, ema=0.9)
    root = write_windows_project(tmp_path / "killed")
    params = {**yaml.safe_load((ROOT / "params.yaml").read_text()), "model": asdict(params_section(ModelParams, "model", **TINY_MODEL)), "train": asdict(cfg)}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    proc = subprocess.Popen(
        [sys.executable, "-m", "velocity.stages.train", "data/windows", "data/vocab.json", "data/bins.json", "models"],
        cwd=root, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    last = root / "models" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate()
    assert proc.returncode == -signal.SIGKILL, f"training ended before it could be killed:\n{stderr.decode()[-2000:]}"
    killed_at = load_checkpoint(last)["step"]
    assert 0 < killed_at < cfg.max_steps and killed_at % cfg.checkpoint_every == 0

    resumed = run_in(root, cfg, live=True)
    assert resumed.start_step == killed_at and resumed.step == cfg.max_steps
    steps = _steps_logged(root / "dvclive" / "train")
    assert steps == list(range(10, cfg.max_steps + 1, 10))  # no step logged twice, none missing

    reference_root = write_windows_project(tmp_path / "uninterrupted")
    reference = run_in(reference_root, cfg)
    assert reference.start_step == 0
    a = load_checkpoint(root / "models" / "checkpoints" / "last.pt")
    b = load_checkpoint(reference_root / "models" / "checkpoints" / "last.pt")
    for state in ("model", "averaged"):
        assert all(torch.equal(a[state][k], b[state][k]) for k in a[state])
    assert resumed.best == reference.best


def test_seed_configuration_builds_and_takes_one_step():
    """The seed's 6-layer, 8-head, 512/2048 model with its 795/131 vocabularies, one optimizer
    step on tiny windows through the training task's loss."""
    torch.manual_seed(0)
    cfg = ModelConfig(src_vocab=795, tgt_vocab=131, max_len=128, features=(), **SEED_PRESET["model"])
    model = build_model(cfg)
    assert (len(model.encoder_layers), model.encoder_layers[0].self_attn.heads) == (6, 8)
    assert 40e6 < model.num_params() < 50e6
    rng = np.random.default_rng(0)
    windows = Windows(rng.integers(3, 795, (4, 16)).astype(np.int16), rng.integers(3, 131, (4, 16)).astype(np.int16))
    task = VelocityTask(cfg, params_section(TrainConfig, "train", **SEED_PRESET["train"]), windows, windows)
    optimizer = task.make_optimizer(model)
    before = model.generator.proj.weight.detach().clone()
    loss, n_tokens = task.loss(model, task.train_batch(np.arange(4)), step=0)
    (loss / n_tokens).backward()
    for group in optimizer.param_groups:
        group["lr"] = task.lr(1)
    optimizer.step()
    assert n_tokens == 64 and np.isfinite(loss.item())
    assert not torch.equal(before, model.generator.proj.weight)


def test_seed_preset_command_line_sets_every_key_the_sections_know():
    line = dvc_set_args(SEED_PRESET)
    assert "-S model.layers=6" in line and "-S train.accum=10" in line and "-S train.max_steps=null" in line
    params_section(TrainConfig, "train", **SEED_PRESET["train"])  # the preset's keys are real train params
    params_section(ModelParams, "model", **SEED_PRESET["model"])


def test_the_model_docs_give_the_whole_seed_preset():
    docs = " ".join((ROOT / "docs" / "model.md").read_text().replace("\\\n", " ").split())
    wanted = ["-S " + arg.removeprefix("-S ") for arg in dvc_set_args(SEED_PRESET).split(" -S ")]
    missing = [arg for arg in wanted if arg + " " not in docs]
    assert not missing, f"docs/model.md's seed command lacks {missing}"


def test_cut_windows_makes_short_windows_and_drops_empty_pieces():
    src = torch.tensor([[5, 6, 7, 8, 9, 10], [11, 12, 13, 0, 0, 0]])
    tgt = src + 50
    features = torch.stack([src + 100, src + 200], dim=-1)  # (2, 6, 2)
    short_src, short_tgt, short_features = cut_windows((src, tgt, features), 2)
    assert short_src.tolist() == [[5, 6], [7, 8], [9, 10], [11, 12], [13, 0]]
    assert torch.equal(short_tgt[short_src != 0], short_src[short_src != 0] + 50)
    assert torch.equal(short_features[..., 1], short_src + 200)  # each note keeps its own features
    assert cut_windows((src, tgt, features), 4)[0].tolist() == [[5, 6, 7, 8], [11, 12, 13, 0]]  # ragged ends cut


def test_input_dropout_hides_velocities_behind_start_and_leaves_padding_alone():
    torch.manual_seed(0)
    tgt = torch.randint(N_SPECIALS, 131, (64, 128))
    tgt[:, 100:] = PAD
    tgt_in = decoder_input(tgt)
    assert drop_inputs(tgt_in, 0.0) is tgt_in
    dropped = drop_inputs(tgt_in, 0.75)
    changed = dropped != tgt_in
    assert (dropped[changed] == START).all()
    assert not changed[:, 101:].any()  # padding stays padding
    assert 0.72 < changed[:, 1:101].float().mean().item() < 0.78
    assert (drop_inputs(tgt_in, 1.0)[:, :101] == START).all()
    with pytest.raises(ValueError, match="train.input_dropout"):
        params_section(TrainConfig, "train", input_dropout=1.5)


def test_an_empty_validation_split_stops_the_stage_with_one_line(tmp_path):
    root = write_windows_project(tmp_path)
    for kind in ("src", "tgt"):
        np.save(root / "data" / "windows" / f"validation_{kind}.npy", np.zeros((0, LENGTH), dtype=np.int16))
    params = {**yaml.safe_load((ROOT / "params.yaml").read_text()), "model": asdict(params_section(ModelParams, "model", **TINY_MODEL)), "train": asdict(TINY_TRAIN)}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    assert stage_error(root, "velocity.stages.train", "data/windows", "data/vocab.json", "data/bins.json", "models") == (
        "train: data/windows/validation_{src,tgt,features}.npy: no validation windows (the validation split is empty)"
    )
    assert not (root / "models" / "velocity.pt").exists()


def test_missing_windows_name_the_file(tmp_path):
    with pytest.raises(WindowsError, match="train_src.npy"):
        Windows.load(tmp_path, "train")


def test_bad_train_params_are_named():
    with pytest.raises(ValueError, match="train.batch_size"):
        params_section(TrainConfig, "train", batch_size=0)


def test_warm_start_copies_what_means_the_same():
    """The score model starts from the performance model: shared weights, and feature embeddings
    only where the feature is quantized with the same edges (another embedding order is followed)."""
    import torch

    from velocity.model.training import warm_start
    from velocity.model.transformer import ModelConfig, build_model

    def config(features: tuple[int, ...]) -> ModelConfig:
        return ModelConfig(src_vocab=795, tgt_vocab=131, max_len=16, features=features, layers=1, heads=2, d_model=16, d_ff=32,
                           dropout=0.0, aligned=True, kind="encoder")  # fmt: skip

    torch.manual_seed(0)
    source = build_model(config((3, 4, 5)))  # chord_size, dprev, pedal
    source_features = {"chord_size": [0.5, 1.5, 2.5], "dprev": [0.0, 0.1, 0.2, 0.3], "pedal": [-0.5, 0.5, 1.5, 2.5, 3.5]}
    target = build_model(config((4, 3, 6)))  # dprev (other edges), chord_size (same), notated_rank (new)
    features = {"dprev": [0.0, 0.2, 0.4, 0.6], "chord_size": [0.5, 1.5, 2.5], "notated_rank": [0, 0.2, 0.4, 0.6, 0.8, 1.0]}
    state = warm_start(target, source.state_dict(), features, source_features)
    embeddings = [key for key in state if ".features." in key]
    assert embeddings == ["src_embed.features.1.weight"]  # chord_size only, from position 0 there
    assert torch.equal(state["src_embed.features.1.weight"], source.state_dict()["src_embed.features.0.weight"])
    assert len(state) == len(target.state_dict()) - 2  # every other weight
    target.load_state_dict(state, strict=False)
    assert torch.equal(target.state_dict()["generator.proj.weight"], source.state_dict()["generator.proj.weight"])


def test_score_train_overrides_replace_only_their_keys():
    from velocity.model.config import ParamsError
    from velocity.stages.train import with_overrides

    params = {"model": {"layers": 2, "dropout": 0.1}, "train": {"epochs": 10, "notation_dropout": 0.0},
              "score_train": {"model": {}, "train": {"epochs": 2, "notation_dropout": 0.25}}}  # fmt: skip
    merged = with_overrides(params, "score_train")
    assert merged["train"] == {"epochs": 2, "notation_dropout": 0.25} and merged["model"] == params["model"]
    assert params["train"]["epochs"] == 10  # the performance model's params are untouched
    assert with_overrides(params, None) is params
    with pytest.raises(ParamsError, match="unknown key 'score_train.train.epoch'"):
        with_overrides({**params, "score_train": {"train": {"epoch": 2}}}, "score_train")
    with pytest.raises(ParamsError, match="only `model:` and `train:`"):
        with_overrides({**params, "score_train": {"windows": {}}}, "score_train")


def test_an_ensemble_keeps_every_member_and_averages_their_distributions(tmp_path):
    """`train.ensemble: 2` trains a second network from seed + 1 beside the first, exports both,
    and decodes with the mean of their distributions; a third member later reuses the two."""
    from velocity.model.transformer import Ensemble, one_pass_logits

    root = write_windows_project(tmp_path)
    encoder = params_section(ModelParams, "model", **{**TINY_MODEL, "kind": "encoder"})

    def run(ensemble: int):
        return run_training(root / "data" / "windows", root / "data" / "vocab.json", root / "data" / "bins.json", root / "models",
                            encoder, replace(TINY_TRAIN, ensemble=ensemble, member_processes=1), live_dir=root / "dvclive" / "train")

    first = run(2)  # in turn, in this process (side by side: the test below)
    ckpt = load_checkpoint(root / "models" / "velocity.pt")
    assert len(ckpt["members"]) == 1 and ckpt["model"].keys() == ckpt["members"][0].keys()
    assert not all(torch.equal(ckpt["model"][k], ckpt["members"][0][k]) for k in ckpt["model"])  # seeds 0 and 1
    assert all(torch.equal(first.best_model[k], ckpt["model"][k]) for k in ckpt["model"])  # the first member is "model"
    assert _steps_logged(root / "dvclive" / "train") == [4, 8]
    assert _steps_logged(root / "dvclive" / "train", "member_1/val_loss") == [4, 8]  # its own curves, beside the first's

    model, _ = load_model(root / "models" / "velocity.pt")
    assert isinstance(model, Ensemble) and len(model.members) == 2
    src = torch.as_tensor(np.load(root / "data" / "windows" / "test_src.npy").astype(np.int64))
    members = []
    for state in (ckpt["model"], ckpt["members"][0]):
        network = build_model(model.cfg)
        network.load_state_dict(state)
        members.append(one_pass_logits(network.eval(), src).softmax(dim=-1))
    with torch.no_grad():
        mean = one_pass_logits(model, src).softmax(dim=-1)
    torch.testing.assert_close(mean, (members[0] + members[1]) / 2)

    (root / "models" / "velocity.pt").unlink()
    modified = {p: p.stat().st_mtime_ns for p in (root / "models" / "checkpoints").rglob("last.pt")}
    run(3)
    assert len(load_checkpoint(root / "models" / "velocity.pt")["members"]) == 2
    assert all(p.stat().st_mtime_ns == t for p, t in modified.items())  # the two trained members were reused as they were
    assert (root / "models" / "checkpoints" / "member_2" / "last.pt").exists()


def test_ensemble_members_trained_side_by_side_equal_those_trained_in_turn(tmp_path):
    """`train.member_processes: 2` trains the members in two processes of one thread each: the
    same weights and curves as one thread training them one after another."""
    encoder = params_section(ModelParams, "model", **{**TINY_MODEL, "kind": "encoder"})
    checkpoints = {}
    for processes in (1, 2):
        root = write_windows_project(tmp_path / f"processes_{processes}")
        run_training(root / "data" / "windows", root / "data" / "vocab.json", root / "data" / "bins.json", root / "models", encoder,
                     replace(TINY_TRAIN, ensemble=2, member_processes=processes), live_dir=root / "dvclive" / "train")
        checkpoints[processes] = load_checkpoint(root / "models" / "velocity.pt")
        assert _steps_logged(root / "dvclive" / "train", "member_1/val_loss") == [4, 8]
    in_turn, side_by_side = checkpoints[1], checkpoints[2]
    for state, other in [(in_turn["model"], side_by_side["model"]), (in_turn["members"][0], side_by_side["members"][0])]:
        assert all(torch.equal(state[k], other[k]) for k in state)


def test_an_ensemble_needs_an_encoder_only_model(tmp_path):
    from velocity.model.config import ParamsError

    root = write_windows_project(tmp_path)
    with pytest.raises(ParamsError, match="train.ensemble.*model.kind: encoder"):
        run_in(root, replace(TINY_TRAIN, ensemble=2))


def test_a_budget_stops_at_whichever_comes_first_epochs_or_steps():
    """The score model's budget (one epoch, at most 1,000 steps) on the real archives' 38,172 score
    windows and on the demo's 1,395; either bound alone; no bound at all is an error."""
    from velocity.model.config import ParamsError
    from velocity.model.harness import budget_steps

    assert budget_steps(1000, 1, 38_172, 16) == 1000  # the step cap binds on large data
    assert budget_steps(1000, 1, 1_395, 16) == 88  # one epoch on small data: ceil(1,395 / 16)
    assert budget_steps(None, 2.7, 1_395, 16) == 236
    assert budget_steps(6, None, 1_395, 16) == 6
    assert budget_steps(None, 0.001, 10, 16) == 1  # never fewer than one step
    with pytest.raises(ValueError, match="max_steps or epochs"):
        budget_steps(None, None, 1_395, 16)
    with pytest.raises(ParamsError, match="both null"):
        replace(TINY_TRAIN, epochs=None, max_steps=None)


def test_the_moving_average_ramps_up_to_its_decay():
    """`ema_updater`: each update moves the average a share 1 - min(decay, (1 + n) / (10 + n)) of
    the way to the current weights, n the updates before it."""
    from velocity.model.harness import ema_updater

    update = ema_updater(0.95)
    averaged, expected = [torch.zeros(3)], torch.zeros(3)
    for n in range(1, 200):
        current = torch.full((3,), float(n))
        update(averaged, [current], torch.tensor(n))
        expected += (1 - min(0.95, (1 + n) / (10 + n))) * (current - expected)
        assert torch.allclose(averaged[0], expected)  # the ramp binds until n = 170, the decay after


def test_validation_judges_and_the_model_keeps_the_averaged_weights(tmp_path):
    """With `train.ema` the raw weights train on; validation, best.pt and the result are their
    moving average, which last.pt carries so that a resumed run continues it."""
    data = write_windows_project(tmp_path / "data_root")
    train_w, val_w = Windows.load(data / "data" / "windows", "train"), Windows.load(data / "data" / "windows", "validation")
    cfg = replace(TINY_TRAIN, eval_every=8, ema=0.9)  # one validation, at the last step: it is the best
    averaged_run = train(tiny_config(), cfg, train_w, val_w, tmp_path / "averaged", progress=False)
    raw_run = train(tiny_config(), replace(cfg, ema=0.0), train_w, val_w, tmp_path / "raw", progress=False)
    last = load_checkpoint(tmp_path / "averaged" / "last.pt")
    raw_last = load_checkpoint(tmp_path / "raw" / "last.pt")["model"]
    assert all(torch.equal(last["model"][k], raw_last[k]) for k in raw_last)  # the average does not steer training
    average = {k.removeprefix("module."): v for k, v in last["averaged"].items() if k.startswith("module.")}
    assert all(torch.equal(averaged_run.best_model[k], average[k]) for k in average)
    assert not all(torch.equal(averaged_run.best_model[k], raw_last[k]) for k in raw_last)
    assert averaged_run.best["loss"] != raw_run.best["loss"]
    from velocity.model.config import ParamsError

    with pytest.raises(ParamsError, match="train.ema"):
        replace(TINY_TRAIN, ema=1.0)
