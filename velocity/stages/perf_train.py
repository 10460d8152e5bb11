"""Stage perf_train: train the Performance RNN on event windows (teacher forcing, Adam, clipping).

The loop is the shared one of velocity/model/harness.py, the Velocity Transformer's too: every
`checkpoint_every` steps the whole training state is written atomically to
`<checkpoint_dir>/last.pt`, so a run killed at any moment (kill -9 included) resumes where that
checkpoint left off and ends with the same weights as an uninterrupted run (on CPU). The checkpoint
carries a fingerprint of the params, the training data and the training code: if any changed,
training starts over (and a finished run of the very same inputs is simply reused).
`performance_rnn.train.nproc_per_node` > 1 trains as that many processes through torchrun (one
per GPU at most), each reading its share of every step's `batch_size` windows: the same windows
and the same mean gradient as one process, so a run may resume with another process count.

Curves go to dvclive (`train_loss`, `val_loss`, nats per event); on resume the logged history is
replayed from the checkpoint, so the curves match an uninterrupted run. The model file keeps the
weights of the best validation loss and is self-contained (config, weights, init seed, sustain
setting) for `perf_evaluate` and `velocity generate`.

Usage: python -m velocity.stages.perf_train data/perf_events models/performance_rnn.pt checkpoints/perf_train dvclive/perf_train
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from velocity.model.config import ParamsError
from velocity.model.checkpoint import save_checkpoint
from velocity.model.harness import FitResult, LoopConfig, budget_steps, distributed_from_env, end_process, file_digest, fingerprint, fit, relaunch_if_wanted
from velocity.model.performance_rnn import PerformanceRNN, PerformanceRNNConfig, PerformanceTask, build_model, checkpoint_state
from velocity.model.runtime import seed_everything
from velocity.live import Curves
from velocity.params import read_params, value
from velocity.params import load_perf_params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PerfModelParams:
    hidden_size: int
    layers: int
    dropout: float

    def config(self) -> PerformanceRNNConfig:
        return PerformanceRNNConfig(hidden_size=self.hidden_size, layers=self.layers, dropout=self.dropout)


@dataclass(frozen=True)
class PerfTrainParams:
    seed: int  # init weights, data order and dropout
    epochs: float | None  # passes over the train windows; training stops at this or `steps`, whichever comes first
    steps: int | None  # optimizer steps at most
    batch_size: int  # windows per step, shared out among the processes
    lr: float  # Adam, constant
    clip_norm: float  # gradient norm clipping
    eval_every: int  # steps between validation losses (one dvclive point each)
    checkpoint_every: int  # steps between resumable checkpoints
    val_windows: int  # validation windows per evaluation (the first ones; all if fewer)
    device: str  # auto = CUDA when present
    nproc_per_node: int  # > 1: that many processes through torchrun
    ema: float  # the weights' moving average that validation judges and the model keeps (train.ema)

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "checkpoint_every", "nproc_per_node"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ParamsError(f"performance_rnn.train.{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size % self.nproc_per_node:
            raise ParamsError(f"performance_rnn.train.batch_size ({self.batch_size}) must share out evenly among nproc_per_node ({self.nproc_per_node}) processes")
        if self.epochs is not None and not self.epochs > 0:
            raise ParamsError(f"performance_rnn.train.epochs must be positive or null, got {self.epochs}")
        if self.epochs is None and self.steps is None:
            raise ParamsError("performance_rnn.train.epochs and .steps are both null: give at least one")
        if not 0.0 <= self.ema < 1.0:
            raise ParamsError(f"performance_rnn.train.ema must be in [0, 1), got {self.ema}")


def code_files() -> list[Path]:
    """Sources whose change makes an old checkpoint unusable."""
    from velocity.model import harness, performance_rnn

    return [Path(performance_rnn.__file__), Path(harness.__file__), Path(__file__)]


# Params that do not change what is learned: a run may resume with other values of them.
NOT_FINGERPRINTED = ("device", "checkpoint_every", "nproc_per_node")


def train_performance_rnn(
    train_windows: np.ndarray,
    val_windows: np.ndarray,
    model_params: PerfModelParams,
    train_params: PerfTrainParams,
    checkpoint_dir: Path,
    *,
    data_digest: str,
    live_dir: Path | None = None,
) -> tuple[PerformanceRNN, FitResult]:
    """Train (or resume training); returns the network with its best weights (on rank 0; the
    last ones elsewhere) and the loop's result (history: one point per evaluation)."""
    train = {k: v for k, v in asdict(train_params).items() if k not in NOT_FINGERPRINTED}
    run_fingerprint = fingerprint({"model": asdict(model_params), "train": train, "data": data_digest}, files=code_files())
    task = PerformanceTask(train_windows, val_windows[: train_params.val_windows], train_params.lr, train_params.batch_size)
    dist = distributed_from_env()
    if train_params.batch_size % dist.world_size:  # fewer GPUs than nproc_per_node
        raise ParamsError(f"performance_rnn.train.batch_size ({train_params.batch_size}) does not share out among {dist.world_size} processes")
    steps = budget_steps(train_params.steps, train_params.epochs, len(train_windows), train_params.batch_size)
    cfg = LoopConfig(
        steps=steps, batch_size=train_params.batch_size // dist.world_size, accum=1, eval_every=train_params.eval_every,
        checkpoint_every=train_params.checkpoint_every, seed=train_params.seed, device=train_params.device,
        clip_norm=train_params.clip_norm, ema=train_params.ema,
    )  # fmt: skip
    seed_everything(train_params.seed)  # the initial weights, as stages.perf_evaluate.untrained_model draws them
    model = build_model(model_params.config())
    try:
        with Curves(live_dir if dist.is_main else None) as curves:
            result = fit(task, model, cfg, checkpoint_dir, run_fingerprint, curves, dist)
    finally:
        end_process(dist)
    if result.best_model is not None:
        model.load_state_dict(result.best_model)
    model.eval()
    return model, result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events_dir", type=Path, help="output of perf_events")
    parser.add_argument("model_path", type=Path, help="where the trained model goes")
    parser.add_argument("checkpoint_dir", type=Path, help="resumable training state (persisted)")
    parser.add_argument("live_dir", type=Path, help="dvclive folder for the curves")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:
        model_params = load_perf_params(PerfModelParams, "model")
        train_params = load_perf_params(PerfTrainParams, "train")
    except ParamsError as err:  # one line, no traceback
        raise SystemExit(f"perf_train: {err}") from None
    exit_code = relaunch_if_wanted(train_params.nproc_per_node, train_params.device, "velocity.stages.perf_train", sys.argv[1:] if argv is None else argv)
    if exit_code is not None:  # trained by torchrun's processes
        return exit_code
    sustain = bool(value(read_params(), "extract.sustain"))
    train_path = args.events_dir / "train_windows.npy"
    val_path = args.events_dir / "validation_windows.npy"
    for path in (train_path, val_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (run the perf_events stage)")
    train_windows = np.load(train_path, mmap_mode="r")
    val_windows = np.load(val_path, mmap_mode="r")
    log.info("%d train windows, %d validation windows of %d events", len(train_windows), len(val_windows), train_windows.shape[1])

    try:
        model, result = train_performance_rnn(
            train_windows, val_windows, model_params, train_params, args.checkpoint_dir,
            data_digest=file_digest(train_path, val_path), live_dir=args.live_dir,
        )  # fmt: skip
    except ParamsError as err:
        raise SystemExit(f"perf_train: {err}") from None
    if not distributed_from_env().is_main:
        return 0
    val_loss = result.best.get("loss", float("nan"))
    extra = {"val_loss": val_loss, "best_step": result.best_step, "history": result.history}
    save_checkpoint(args.model_path, checkpoint_state(model, init_seed=train_params.seed, step=result.step, sustain=sustain, extra=extra))
    log.info("wrote %s (best validation loss %.4f nats/event at step %d)", args.model_path, val_loss, result.best_step)
    return 0


if __name__ == "__main__":
    sys.exit(main())
