"""Train a tiny model of either kind on synthetic windows through velocity/model/harness.py and save this
process's final weights to OUT/rank{RANK}.pt. Run plainly (one process), under torchrun, or as
`main([...])` in the test's own process; the distributed tests compare the files.

    python tests/helpers/fit_synthetic.py OUT --task velocity --batch-size 8 --steps 6
    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/helpers/fit_synthetic.py OUT --batch-size 4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from velocity.model.checkpoint import save_checkpoint  # noqa: E402
from velocity.model.harness import LoopConfig, distributed_from_env, end_process, fit  # noqa: E402
from velocity.model.performance_rnn import PerformanceRNNConfig, PerformanceTask, build_model as build_rnn  # noqa: E402
from velocity.model.runtime import seed_everything  # noqa: E402
from velocity.model.training import TrainConfig, VelocityTask, Windows  # noqa: E402
from velocity.model.transformer import ModelConfig, build_model  # noqa: E402
from velocity.params import read_params, section  # noqa: E402


def velocity_task(batch_size: int) -> tuple[VelocityTask, torch.nn.Module]:
    rng = np.random.default_rng(0)
    src = rng.integers(3, 40, size=(40, 16)).astype(np.int16)
    tgt = (rng.integers(40, 90, size=(40, 1)) + 8 * (src % 2) + 3).astype(np.int16)
    src[-1, 8:], tgt[-1, 8:] = 0, 0  # one half-padded window: token counts differ between ranks
    windows = Windows(src, tgt, name="synthetic")
    train = {**read_params(ROOT / "params.yaml")["train"], "batch_size": batch_size, "warmup": 4, "lr_factor": 1.0, "max_steps": 1,
             "device": "cpu", "transpose": 0, "input_dropout": 0.0}
    cfg = section(TrainConfig, "train", {"train": train})
    model_cfg = ModelConfig(src_vocab=40, tgt_vocab=131, max_len=16, layers=1, heads=2, d_model=16, d_ff=32, dropout=0.0, aligned=False, kind="encoder",
                            features=())
    seed_everything(0)
    return VelocityTask(model_cfg, cfg, windows, windows), build_model(model_cfg)


def performance_task(batch_size: int) -> tuple[PerformanceTask, torch.nn.Module]:
    rng = np.random.default_rng(0)
    windows = rng.integers(0, 413, size=(40, 24)).astype(np.int16)
    windows[-1, 12:] = -1  # padding
    seed_everything(0)
    return PerformanceTask(windows, windows[:8], lr=0.01, val_batch=4), build_rnn(PerformanceRNNConfig(hidden_size=16, layers=1))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--task", choices=("velocity", "performance"), default="velocity")
    parser.add_argument("--batch-size", type=int, default=8, help="per process")
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--steps", type=int, default=6)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    task, model = (velocity_task if args.task == "velocity" else performance_task)(args.batch_size)
    dist = distributed_from_env()
    cfg = LoopConfig(steps=args.steps, batch_size=args.batch_size, accum=args.accum, eval_every=3, checkpoint_every=2,
                     seed=0, device="cpu", clip_norm=1.0 if args.task == "performance" else None, progress=False)
    fit(task, model, cfg, args.out / "checkpoints", "synthetic", dist=dist)
    save_checkpoint(args.out / f"rank{dist.rank}.pt", {"model": model.state_dict()})
    end_process(dist)


if __name__ == "__main__":
    main()
