"""Stage `timing_train`: learn how pianists time a score (tempo, chord spread, articulation, pedal).

    python -m velocity.stages.timing_train data/score_windows data/aligned data/vocab.json data/score_bins.json models/score/timing.pt

Reads the score windows (the score model's source tokens and score features) and, through each
window note's row, the aligned notes' timing targets (the align stage's `log_pace`,
`onset_deviation`, `articulation`, `pedal_down`) and the score's own pedal marks. Trains the timing
network (velocity/model/timing_net.py) with the project's loop (resumable checkpoints in
`models/score/timing_checkpoints/`, curves in `dvclive/timing_train/`) and keeps the step of the
lowest validation loss, `ensemble` times from consecutive seeds (`member_processes` at once; the
later networks' checkpoints in `member_<i>/`, their curves as `member_<i>/...`). It writes
`models/score/timing.pt`: the networks' weights, config, the targets' standardization, and the
bins, vocabulary and window geometry to read a new score with. With
`--blend-trees` (the timing_tree stage's trees.pt and its validation predictions beside it) it also
fits each target's blend of network and tree on validation (and the overall tempo's, by the
overall tempo error) and keeps the trees and the weights in the model file, as the score model
keeps its tree.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from velocity import params as params_lib
from velocity.live import Curves

if TYPE_CHECKING:
    from velocity.model.harness import FitResult
    from velocity.model.timing_net import Standardizer, TimingTrainConfig, TimingWindows
    from velocity.model.transformer import ModelConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TimingModelParams:
    layers: int
    heads: int
    d_model: int
    d_ff: int
    dropout: float


def train_timing(
    windows_dir: Path, aligned_dir: Path, vocab_path: Path, bins_path: Path, model_path: Path, checkpoint_dir: Path,
    model_params: TimingModelParams, train_params: TimingTrainConfig, window_length: int, window_step: int, live_dir: Path | None = None,
    blend_trees: Path | None = None,
) -> dict[str, float]:  # fmt: skip
    """Train the timing network (`train_params.ensemble` of them) and write `model_path`; the first
    network's best validation point."""
    from velocity.model.checkpoint import load_checkpoint, save_checkpoint
    from velocity.model.features import feature_sizes
    from velocity.model.harness import fingerprint, fit_members
    from velocity.model.timing_net import KIND, PEDAL_FEATURE_IDS
    from velocity.model.transformer import ModelConfig

    vocab = json.loads(vocab_path.read_text())
    bins = json.loads(bins_path.read_text())
    train, validation, standardizer = member_data(windows_dir, aligned_dir)
    log.info("%d train and %d validation windows; targets' train means %s", len(train), len(validation), standardizer.mean)
    sizes = feature_sizes(bins.get("features") or {})
    model_cfg = ModelConfig(src_vocab=len(vocab["src"]), tgt_vocab=len(vocab["tgt"]), layers=model_params.layers, heads=model_params.heads,
                            d_model=model_params.d_model, d_ff=model_params.d_ff, dropout=model_params.dropout,
                            max_len=window_length, aligned=False, kind="encoder", features=(*sizes, PEDAL_FEATURE_IDS))  # fmt: skip
    if train.features.shape[-1] != len(model_cfg.features):
        raise SystemExit(f"timing_train: {windows_dir} has {train.features.shape[-1] - 1} feature columns, {bins_path} {len(sizes)}: rerun score_windows")
    # Network i trains from seed + i in its own checkpoint folder; its fingerprint leaves out the
    # ensemble's size, so a larger ensemble keeps the networks already trained.
    jobs = []
    in_process = (train, validation) if min(train_params.member_processes, train_params.ensemble) == 1 else None  # a spawned process reads its own
    for member in range(train_params.ensemble):
        member_params = replace(train_params, seed=train_params.seed + member)
        resumable = {k: v for k, v in asdict(member_params).items() if k not in ("ensemble", "member_processes")}
        run = fingerprint(asdict(model_params), resumable, standardizer.mean, len(train), len(validation))
        jobs.append(partial(train_member, windows_dir, aligned_dir, model_cfg, member_params, checkpoint_dir / f"member_{member}" if member else checkpoint_dir,
                            run, data=in_process, label=f"timing_train network {member}" if train_params.ensemble > 1 else "timing_train"))  # fmt: skip
    with Curves(live_dir) as curves:
        results = fit_members(jobs, train_params.member_processes, [curves] + [curves.member(m) for m in range(1, len(jobs))])
    result = results[0]
    state = {
        "kind": KIND, "model": result.best_model, "members": [r.best_model for r in results[1:]], "model_config": model_cfg.to_dict(),
        "train": asdict(train_params), "standardizer": {"mean": list(standardizer.mean), "std": list(standardizer.std)},
        "bins": bins, "vocab": vocab, "windows": {"length": window_length, "step": window_step},
        "step": result.best_step, "steps_trained": result.step, "best": result.best, "history": result.history,
    }  # fmt: skip
    if blend_trees is not None:
        state["trees"] = load_checkpoint(blend_trees)
        state["blend"] = fit_tree_blend(state, pd.read_parquet(aligned_dir / "validation.parquet"),
                                        pd.read_parquet(blend_trees.with_name("validation.parquet")))  # fmt: skip
    save_checkpoint(model_path, state)
    for member, r in enumerate(results):
        log.info("network %d: best validation loss %.4f at step %d of %d", member, r.best["loss"], r.best_step, r.step)
    log.info("wrote %s (%d network%s)", model_path, len(results), "s" if len(results) > 1 else "")
    return result.best


def member_data(windows_dir: Path, aligned_dir: Path) -> tuple[TimingWindows, TimingWindows, Standardizer]:
    """The train and validation windows with their standardized targets, and the standardization."""
    from velocity.model.timing_net import timing_windows

    train, standardizer = timing_windows(windows_dir, pd.read_parquet(aligned_dir / "train.parquet"), "train")
    validation, _ = timing_windows(windows_dir, pd.read_parquet(aligned_dir / "validation.parquet"), "validation", standardizer)
    return train, validation, standardizer


def train_member(windows_dir: Path, aligned_dir: Path, model_cfg: ModelConfig, train_params: TimingTrainConfig, checkpoint_dir: Path,
                 run_fingerprint: str, data: tuple[TimingWindows, TimingWindows] | None = None, label: str = "timing_train",
                 log_point: Callable[[dict[str, float]], None] | None = None) -> FitResult:  # fmt: skip
    """One timing network from `train_params.seed` on `data` (or the windows read from the folders:
    a job that pickles, for harness.side_by_side); resumes from `checkpoint_dir`."""
    from velocity.model.harness import LoopConfig, budget_steps, fit
    from velocity.model.runtime import seed_everything
    from velocity.model.timing_net import TimingTask, build_timing_net

    train, validation = data or member_data(windows_dir, aligned_dir)[:2]
    seed_everything(train_params.seed)
    net = build_timing_net(model_cfg)
    steps = budget_steps(train_params.max_steps, train_params.epochs, len(train), train_params.batch_size)
    loop = LoopConfig(steps=steps, batch_size=train_params.batch_size, accum=1, eval_every=train_params.eval_every,
                      checkpoint_every=train_params.checkpoint_every, seed=train_params.seed, device=train_params.device,
                      label=label, ema=train_params.ema)  # fmt: skip
    return fit(TimingTask(model_cfg, train_params, train, validation), net, loop, checkpoint_dir, run_fingerprint, log_point)


def fit_tree_blend(state: dict, validation: pd.DataFrame, tree: pd.DataFrame) -> dict[str, float]:
    """Each target's network weight against the trees, the tempo level's, the tempo curve's scale
    for scores without a tempo of their own and its slow part's, fitted on the validation notes."""
    from velocity.model.timing import TIMING_TARGETS
    from velocity.model.timing_net import LEVEL, SLOW_SHAPE, SLOW_SPAN, UNSTATED_SHAPE, blend_error, fit_blend, level_blend_error, predict_timing, timing_model, unstated_rows

    model = timing_model(state)
    network = predict_timing(model, validation, blend=False)
    tree = tree.set_axis(validation.index)
    weights = fit_blend(network, tree, validation)
    for name in TIMING_TARGETS:
        w = weights[name]
        log.info("validation %s: network %.4f, tree %.4f, blend %.4f at network weight %.1f", name,
                 blend_error(name, network[name].to_numpy(), validation), blend_error(name, tree[name].to_numpy(), validation),
                 blend_error(name, w * network[name].to_numpy() + (1 - w) * tree[name].to_numpy(), validation), w)  # fmt: skip
    log.info("validation overall tempo error with the network's level %.4f, the tree's %.4f, the log_pace blend's %.4f: level weight %.1f",
             *(level_blend_error(network, tree, validation, weights["log_pace"], w) for w in (1.0, 0.0, weights["log_pace"])), weights[LEVEL])  # fmt: skip
    log.info("validation scores without a tempo of their own: %d performances, their tempo curves scaled by %.2f",
             validation.loc[unstated_rows(validation), "piece_id"].nunique(), weights[UNSTATED_SHAPE])
    log.info("validation tempo curves: their slow part (means over %g score seconds) scaled by %.2f", SLOW_SPAN, weights[SLOW_SHAPE])
    return weights


def main(argv: list[str] | None = None) -> None:
    from velocity.model.timing_net import TimingTrainConfig

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("windows_dir", type=Path, help="data/score_windows")
    parser.add_argument("aligned_dir", type=Path, help="data/aligned")
    parser.add_argument("vocab", type=Path, help="data/vocab.json")
    parser.add_argument("bins", type=Path, help="data/score_bins.json")
    parser.add_argument("model_path", type=Path, help="models/score/timing.pt")
    parser.add_argument("--checkpoints", type=Path, default=Path("models/score/timing_checkpoints"), help="resumable training state")
    parser.add_argument("--live-dir", type=Path, default=Path("dvclive/timing_train"), help="dvclive folder for the curves")
    parser.add_argument("--blend-trees", type=Path, help="data/timing_tree/trees.pt: blend each target with its tree (validation.parquet beside it)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    params = params_lib.read_params()
    section = params.get("timing_train") or {}
    model_params = params_lib.section(TimingModelParams, "timing_train.model", {"timing_train.model": section.get("model")})
    train_params = params_lib.section(TimingTrainConfig, "timing_train.train", {"timing_train.train": section.get("train")})
    windows = params_lib.value(params, "windows")
    train_timing(args.windows_dir, args.aligned_dir, args.vocab, args.bins, args.model_path, args.checkpoints, model_params, train_params,
                 int(windows["length"]), int(windows["step"]), args.live_dir, args.blend_trees)  # fmt: skip


if __name__ == "__main__":
    main()
