"""Stage perf_train: train the Performance RNN on event windows (teacher forcing, Adam, clipping).

Every `checkpoint_every` steps the whole training state (weights, Adam, step, data-order and
dropout RNG states, loss history) is written atomically to `<checkpoint_dir>/last.pt`, so a run
killed at any moment (kill -9 included) resumes where that checkpoint left off and ends with the
same weights as an uninterrupted run (on CPU). The checkpoint carries a fingerprint of the params
the training data and the training code: if any changed, training starts over (and a finished run
of the very same inputs is simply reused).

Curves go to dvclive (`train/loss`, `val/loss`, nats per event); on resume the logged history is
replayed from the checkpoint, so the curves match an uninterrupted run. The final model file is
self-contained (config, weights, init seed, sustain setting) for `perf_evaluate` and
`velocity generate`.

Usage: python -m stages.perf_train data/perf_events models/performance_rnn.pt checkpoints/perf_train dvclive/perf_train
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from model.performance_rnn import (
    PerformanceRNN,
    PerformanceRNNConfig,
    build_model,
    checkpoint_state,
    window_loss,
    window_nll,
)
from model.runtime import pick_device, seed_everything
from stages.live import open_live
from stages.params import read_params
from stages.perf_events import load_perf_params

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"


@dataclass(frozen=True)
class PerfModelParams:
    hidden_size: int = 256
    layers: int = 2
    dropout: float = 0.0

    def config(self) -> PerformanceRNNConfig:
        return PerformanceRNNConfig(hidden_size=self.hidden_size, layers=self.layers, dropout=self.dropout)


@dataclass(frozen=True)
class PerfTrainParams:
    seed: int = 0  # init weights, data order and dropout
    steps: int = 1000  # optimizer steps in all
    batch_size: int = 32  # windows per step
    lr: float = 0.001  # Adam, constant
    clip_norm: float = 3.0  # gradient norm clipping
    eval_every: int = 100  # steps between validation losses (one dvclive point each)
    checkpoint_every: int = 50  # steps between resumable checkpoints
    val_windows: int = 256  # validation windows per evaluation (the first ones; all if fewer)
    device: str = "auto"  # auto = CUDA when present

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"performance_rnn.train.{name} must be >= 1, got {getattr(self, name)}")


def code_files() -> list[Path]:
    """Sources whose change makes an old checkpoint unusable."""
    import model.performance_rnn

    return [Path(model.performance_rnn.__file__), Path(__file__)]


def fingerprint(model_params: PerfModelParams, train_params: PerfTrainParams, data_digest: str) -> str:
    """What a checkpoint must match to be resumed: the params that change the result, data and code."""
    # device: the same run elsewhere; checkpoint_every: when to save, not what is learned.
    ignored = {"device", "checkpoint_every"}
    train = {k: v for k, v in asdict(train_params).items() if k not in ignored}
    blob = json.dumps(
        {"model": asdict(model_params), "train": train, "data": data_digest, "code": file_digest(*code_files())},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()


def file_digest(*paths: Path) -> str:
    """sha256 over the bytes of `paths`, in order."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


@torch.no_grad()
def windows_loss(model: PerformanceRNN, windows: np.ndarray, device: torch.device, batch_size: int) -> float:
    """Mean NLL (nats per predicted event) over `windows`, pads excluded."""
    model.eval()
    total, count = 0.0, 0
    for first in range(0, len(windows), batch_size):
        batch = torch.from_numpy(np.asarray(windows[first : first + batch_size], dtype=np.int64)).to(device)
        nll, n = window_nll(model, batch)
        total, count = total + float(nll), count + n
    model.train()
    return total / count if count else float("nan")


class _Curves:
    """dvclive logging, rebuilt from the checkpoint's history on resume (no duplicate or lost points)."""

    def __init__(self, live_dir: Path | None, history: list[dict[str, float]]) -> None:
        self.live = None
        if live_dir is None:
            return
        # resume=False: start the folder clean, then replay what the checkpoint remembers.
        self.live = open_live(live_dir, resume=False)
        for point in history:
            self.log(point)

    def log(self, point: dict[str, float]) -> None:
        if self.live is None:
            return
        self.live.step = int(point["step"])
        for name, value in point.items():
            if name != "step" and np.isfinite(value):
                self.live.log_metric(name, value)
        self.live.make_summary()

    def close(self) -> None:
        if self.live is not None:
            self.live.end()


def _batch(windows: np.ndarray, generator: torch.Generator, batch_size: int) -> torch.Tensor:
    """`batch_size` windows drawn uniformly with replacement (sorted reads are kinder to a memmap)."""
    picks = torch.randint(len(windows), (batch_size,), generator=generator).numpy()
    return torch.from_numpy(np.asarray(windows[np.sort(picks)], dtype=np.int64))


def train_performance_rnn(
    train_windows: np.ndarray,
    val_windows: np.ndarray,
    model_params: PerfModelParams,
    train_params: PerfTrainParams,
    checkpoint_dir: Path,
    *,
    data_digest: str,
    live_dir: Path | None = None,
    stop_after: int | None = None,
) -> tuple[PerformanceRNN, list[dict[str, float]], bool]:
    """Train (or resume training) and return the model, its loss history and whether it finished.

    `stop_after` ends the run right after the checkpoint of that step, as a kill would (for tests).
    """
    if len(train_windows) == 0:
        raise ValueError("no training windows: the train split has no pieces with at least two events")
    device = pick_device(train_params.device)
    generator = seed_everything(train_params.seed)
    model = build_model(model_params.config()).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=train_params.lr)
    expected = fingerprint(model_params, train_params, data_digest)

    step, history, running = 0, [], [0.0, 0]  # running: loss sum and steps since the last log point
    checkpoint_path = checkpoint_dir / CHECKPOINT_NAME
    if checkpoint_path.is_file():
        try:
            saved = load_checkpoint(checkpoint_path)
        except CheckpointError as err:
            log.warning("ignoring unreadable checkpoint, starting over: %s", err)
            saved = {}
        if saved.get("fingerprint") != expected:
            log.info("%s: params, data or code changed since this checkpoint, starting over", checkpoint_path)
        else:
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            generator.set_state(saved["generator"])
            torch.set_rng_state(saved["torch_rng"])
            if device.type == "cuda" and "cuda_rng" in saved:
                torch.cuda.set_rng_state(saved["cuda_rng"], device)
            step, history, running = saved["step"], list(saved["history"]), list(saved["running"])
            log.info("resuming from %s at step %d of %d", checkpoint_path, step, train_params.steps)

    def save(finished: bool) -> None:
        state: dict[str, Any] = {
            "fingerprint": expected,
            "finished": finished,
            "step": step,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "generator": generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "history": history,
            "running": running,
        }
        if device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(device)
        save_checkpoint(checkpoint_path, state)

    curves = _Curves(live_dir, history)
    model.train()
    # LSTM in fp32 even on CUDA: cuDNN RNNs take bf16 only from cuDNN 9.13 (pytorch#164411), so
    # runtime.autocast would fail there on older stacks; the LSTM is not the bottleneck anyway.
    with tqdm(total=train_params.steps, initial=step, desc="perf_train", unit="step") as bar:
        while step < train_params.steps:
            batch = _batch(train_windows, generator, train_params.batch_size).to(device)
            loss = window_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), train_params.clip_norm)
            optimizer.step()
            step += 1
            running[0] += loss.item()
            running[1] += 1
            bar.update(1)
            if step % train_params.eval_every == 0 or step == train_params.steps:
                point = {"step": float(step), "train/loss": running[0] / running[1]}
                if len(val_windows):
                    vw = val_windows[: train_params.val_windows]
                    point["val/loss"] = windows_loss(model, vw, device, train_params.batch_size)
                history.append(point)
                running = [0.0, 0]
                curves.log(point)
                bar.set_postfix({k: f"{v:.3f}" for k, v in point.items() if k != "step"})
            if step % train_params.checkpoint_every == 0 or step == train_params.steps:
                save(finished=step == train_params.steps)
                if stop_after is not None and step >= stop_after and step < train_params.steps:
                    curves.close()
                    return model, history, False
    curves.close()
    model.eval()
    return model, history, True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("events_dir", type=Path, help="output of perf_events")
    parser.add_argument("model_path", type=Path, help="where the trained model goes")
    parser.add_argument("checkpoint_dir", type=Path, help="resumable training state (persisted)")
    parser.add_argument("live_dir", type=Path, help="dvclive folder for the curves")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    model_params = load_perf_params(PerfModelParams, "model")
    train_params = load_perf_params(PerfTrainParams, "train")
    sustain = bool((read_params().get("extract") or {}).get("sustain", False))
    train_path = args.events_dir / "train_windows.npy"
    val_path = args.events_dir / "validation_windows.npy"
    for path in (train_path, val_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (run the perf_events stage)")
    train_windows = np.load(train_path, mmap_mode="r")
    val_windows = np.load(val_path, mmap_mode="r")
    log.info("%d train windows, %d validation windows of %d events", len(train_windows), len(val_windows), train_windows.shape[1])

    model, history, _ = train_performance_rnn(
        train_windows,
        val_windows,
        model_params,
        train_params,
        args.checkpoint_dir,
        data_digest=file_digest(train_path, val_path),
        live_dir=args.live_dir,
    )
    last = history[-1] if history else {}
    save_checkpoint(
        args.model_path,
        checkpoint_state(
            model,
            init_seed=train_params.seed,
            step=train_params.steps,
            sustain=sustain,
            extra={"val_loss": last.get("val/loss", float("nan")), "history": history},
        ),
    )
    log.info("wrote %s (validation loss %.4f nats/event)", args.model_path, last.get("val/loss", float("nan")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
