"""One training loop for every model here: steps, accumulation, checkpoints, resume, DDP.

A model plugs in through a `Task` (its batches, its summed loss, its validation sums, its optimizer
and learning rate); `fit` does the rest, the same for the Velocity Transformer and the Performance RNN:

- The data order is a pure function of the seed: one stream of samples, epoch after epoch, each
  epoch a seeded permutation. Every optimizer step takes the next `batch_size * accum * world_size`
  samples; process `rank` takes every `world_size`-th of them (DistributedSampler's rule), so a
  step sees the same samples whatever the number of processes.
- Each step's randomness (dropout, augmentation) comes from torch's RNG seeded by (seed, step,
  rank), so resuming needs no RNG state and matches an uninterrupted run bit for bit on CPU.
- The loss is summed over a step's items (tokens, events) on every process and divided by their
  global count, so one process with batch 2B and two with batch B take the same step.
- `last.pt` (atomic) every `checkpoint_every` steps holds weights, optimizer, step, the stream
  position, the best validation so far and the metric history; a run resumes from it with any
  number of processes. `best.pt` holds the weights of the lowest validation loss.
- With `ema` > 0 the loop keeps an exponential moving average of the weights beside them
  (`AveragedModel`); validation, `best.pt` and the result are the averaged weights. Late in a run
  the raw weights wander about as much as validation can tell apart from step to step; their average
  does not.
- Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the environment) the model is wrapped in
  DistributedDataParallel: gloo on CPU, NCCL on CUDA. Validation is summed over all processes, so
  every rank agrees on "best"; only rank 0 writes files, logs curves and shows progress.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import logging
import math
import multiprocessing
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel
from tqdm import tqdm

from velocity.model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from velocity.model.runtime import pick_device

log = logging.getLogger(__name__)

LAST, BEST = "last.pt", "best.pt"


class Task(Protocol):
    """What a model brings to the loop. Losses and validation are sums, with a count to divide by."""

    n_train: int  # training samples (windows)
    n_validation: int  # validation samples used per evaluation (0: none)

    def train_batch(self, indices: np.ndarray) -> tuple[torch.Tensor, ...]:
        """CPU tensors of the samples `indices` (may run in a DataLoader worker)."""

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...], step: int) -> tuple[torch.Tensor, int]:
        """Summed training loss of a batch already on the device, and the count of its items."""

    def validation_sums(self, model: nn.Module, indices: np.ndarray, device: torch.device) -> dict[str, float]:
        """Summed validation metrics over the samples `indices`, with their item "count"; "loss" decides best."""

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer: ...

    def lr(self, step: int) -> float | None:
        """Learning rate of optimizer step `step` (from 1), or None to leave the optimizer's own."""


def budget_steps(max_steps: int | None, epochs: float | None, n_samples: int, global_batch: int) -> int:
    """Optimizer steps of a run that stops at whichever comes first: `max_steps`, or `epochs` passes
    over `n_samples` at `global_batch` samples a step (fractions count). None leaves that bound out;
    one of them must be given. The same budget then suits a small corpus and a large one."""
    if max_steps is None and epochs is None:
        raise ValueError("a training budget needs max_steps or epochs")
    bounds = [] if max_steps is None else [max_steps]
    if epochs is not None:
        bounds.append(max(1, math.ceil(epochs * n_samples / global_batch)))
    return min(bounds)


@dataclass(frozen=True)
class LoopConfig:
    steps: int  # optimizer steps in all
    batch_size: int  # samples per micro-batch on each process
    accum: int  # micro-batches per optimizer step
    eval_every: int
    checkpoint_every: int
    seed: int
    device: str  # auto: CUDA when present, else CPU
    clip_norm: float | None = None  # gradient-norm clipping (None: off)
    compile: bool = False  # torch.compile the model
    loader_workers: int = 0  # DataLoader processes preparing the next steps' batches (0: in this one)
    progress: bool = True
    label: str = "train"  # the progress bar's
    ema: float = 0.0  # decay of the weights' moving average, at most (0: validate the raw weights)


def ema_updater(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor | int], None]:
    """AveragedModel's `multi_avg_fn` for an exponential moving average whose decay ramps up as
    (1 + n) / (10 + n) to `decay` after n updates, so the average forgets the first steps' weights
    early on and spans about 1 / (1 - decay) steps late in a long run."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], n_averaged: torch.Tensor | int) -> None:
        n = int(n_averaged)
        torch._foreach_lerp_(averaged, current, 1.0 - min(decay, (1 + n) / (10 + n)))

    return update


# ---------------------------------------------------------------------------------------------
# Processes: one, or many under torchrun


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def distributed_from_env() -> Distributed:
    """RANK / WORLD_SIZE / LOCAL_RANK as torchrun sets them; one process when absent."""
    return Distributed(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))


def setup_process(dist: Distributed, device_name: str) -> torch.device:
    """This process's device; joins the process group (NCCL on CUDA, gloo on CPU) when distributed."""
    device = pick_device(device_name)
    if not dist.active:
        return device
    _die_with_launcher()
    if device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
        torch.cuda.set_device(device)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def _die_with_launcher() -> None:
    """Linux: end this worker when its torchrun launcher dies (a kill -9 of `dvc repro`), so no
    orphan trains on beside the next run."""
    with contextlib.suppress(OSError, AttributeError):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def launch_processes(nproc_per_node: int, program: Sequence[str]) -> int:
    """Run `program` (`-m module args...` or `script args...`) as `nproc_per_node` processes on
    this machine through torchrun (torch.distributed.run --standalone); returns its exit code."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc_per_node}", *program]
    log.info("launching %d processes: %s", nproc_per_node, " ".join(command))
    return subprocess.run(command, check=False).returncode


def process_count(nproc_per_node: int, device_name: str) -> int:
    """How many processes train: `nproc_per_node`, at most one per GPU when the device is CUDA
    (NCCL refuses two processes on one GPU)."""
    if pick_device(device_name).type != "cuda":
        return nproc_per_node
    processes = min(nproc_per_node, torch.cuda.device_count())
    if processes < nproc_per_node:
        log.info("%d processes asked for, %d GPU%s here: training on %d", nproc_per_node, processes, "s" if processes > 1 else "", processes)
    return processes


def relaunch_if_wanted(nproc_per_node: int, device_name: str, module: str, argv: Sequence[str]) -> int | None:
    """When more than one process should train (`process_count`) and this is not already a
    torchrun worker, run the stage again under torchrun and return its exit code; else None
    (train in this process)."""
    if "WORLD_SIZE" in os.environ or (processes := process_count(nproc_per_node, device_name)) <= 1:
        return None
    return launch_processes(processes, ["-m", module, *argv])


def _start_worker(threads: int, log_level: int) -> None:
    torch.set_num_threads(threads)
    logging.basicConfig(level=log_level, format="%(levelname)s %(name)s: %(message)s")


def side_by_side(jobs: Sequence[Callable[[], Any]], processes: int) -> Iterator[Any]:
    """Each job's result, in job order. With `processes` > 1 the jobs run in that many fresh
    processes at a time (spawned: a job must pickle), this process's CPU threads shared out among
    them: a network this small trains about 1.3 times faster on two cores as two one-threaded
    processes than as one process with two threads (bench/train.py)."""
    if processes <= 1 or len(jobs) <= 1:
        yield from (job() for job in jobs)
        return
    processes = min(processes, len(jobs))
    threads = max(1, torch.get_num_threads() // processes)
    log.info("%d jobs, %d processes at a time with %d thread%s each", len(jobs), processes, threads, "s" if threads > 1 else "")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context, initializer=_start_worker, initargs=(threads, logging.getLogger().level)) as pool:
        futures = [pool.submit(job) for job in jobs]
        yield from (future.result() for future in futures)


def fit_members(jobs: Sequence[Callable[..., FitResult]], processes: int, log_points: Sequence[Callable[[dict[str, float]], None]]) -> list[FitResult]:
    """Train an ensemble's networks: each job (taking `log_point=`) in turn with its curves live,
    or `processes` at a time (`side_by_side`), each one's curves logged once it is done."""
    results = []
    if processes <= 1 or len(jobs) <= 1:
        for member, (job, log_point) in enumerate(zip(jobs, log_points)):
            if member:
                log.info("ensemble member %d of %d", member + 1, len(jobs))
            results.append(job(log_point=log_point))
        return results
    for result, log_point in zip(side_by_side(jobs, processes), log_points):
        for point in result.history:
            log_point(point)
        results.append(result)
    return results


def _all_sum(values: Sequence[float], dist: Distributed, device: torch.device) -> list[float]:
    """`values` summed over every process (float64)."""
    if not dist.active:
        return [float(v) for v in values]
    # NCCL reduces CUDA tensors only; gloo reduces CPU ones.
    where = device if device.type == "cuda" else torch.device("cpu")
    tensor = torch.tensor(list(values), dtype=torch.float64, device=where)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


# ---------------------------------------------------------------------------------------------
# Data order


def epoch_order(n_samples: int, seed: int, epoch: int) -> np.ndarray:
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    return torch.randperm(n_samples, generator=generator).numpy()


def stream_slice(n_samples: int, seed: int, first: int, count: int) -> np.ndarray:
    """Samples `first` .. `first + count` of the endless stream of seeded epoch permutations."""
    out = np.empty(count, dtype=np.int64)
    done = 0
    while done < count:
        epoch, offset = divmod(first + done, n_samples)
        take = min(count - done, n_samples - offset)
        out[done : done + take] = epoch_order(n_samples, seed, epoch)[offset : offset + take]
        done += take
    return out


class StepBatches(torch.utils.data.Dataset):
    """Item k: this process's `accum` micro-batches of optimizer step `first_step + k`, read from
    the stream at `first_sample`; a DataLoader's workers may prepare them ahead."""

    def __init__(self, task: Task, cfg: LoopConfig, dist: Distributed, first_step: int, first_sample: int) -> None:
        self.task, self.cfg, self.dist = task, cfg, dist
        self.first_step, self.first_sample = first_step, first_sample
        self.samples_per_step = cfg.batch_size * cfg.accum * dist.world_size

    def __len__(self) -> int:
        return max(0, self.cfg.steps - self.first_step)

    def __getitem__(self, k: int) -> list[tuple[torch.Tensor, ...]]:
        start = self.first_sample + k * self.samples_per_step
        step_samples = stream_slice(self.task.n_train, self.cfg.seed, start, self.samples_per_step)
        per_micro = self.cfg.batch_size * self.dist.world_size
        return [
            self.task.train_batch(step_samples[m * per_micro : (m + 1) * per_micro][self.dist.rank :: self.dist.world_size])
            for m in range(self.cfg.accum)
        ]


def step_seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step) * 1_009 + rank


# ---------------------------------------------------------------------------------------------
# Checkpoints


def _update(digest: "hashlib._Hash", files: Sequence[Path]) -> None:
    for path in files:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)


def file_digest(*files: Path) -> str:
    """sha256 over the bytes of `files`, in order."""
    digest = hashlib.sha256()
    _update(digest, files)
    return digest.hexdigest()


def fingerprint(*parts: Any, files: Sequence[Path] = ()) -> str:
    """sha256 over JSON-able `parts` and the bytes of `files`: what a checkpoint was trained on."""
    digest = hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode())
    _update(digest, files)
    return digest.hexdigest()


def find_resumable(checkpoint_dir: Path | str, expected_fingerprint: str) -> dict[str, Any] | None:
    """The last checkpoint in `checkpoint_dir` when it belongs to this very run, else None.

    A checkpoint of other params, data or code (a stale one) or an unreadable one is ignored, so
    the run starts over instead of continuing someone else's training.
    """
    path = Path(checkpoint_dir) / LAST
    if not path.exists():
        return None
    try:
        state = load_checkpoint(path)
    except CheckpointError as err:
        log.warning("ignoring %s", err)
        return None
    if state.get("fingerprint") != expected_fingerprint:
        log.info("%s was trained with other params, data or code: starting over", path)
        return None
    return state


def _shared_resume(checkpoint_dir: Path, run_fingerprint: str, dist: Distributed) -> dict[str, Any] | None:
    """Rank 0 reads the checkpoint and hands it to the others (on other nodes they cannot read it)."""
    state = find_resumable(checkpoint_dir, run_fingerprint) if dist.is_main else None
    if dist.active:
        box = [state]
        torch.distributed.broadcast_object_list(box, src=0)
        state = box[0]
    return state


# ---------------------------------------------------------------------------------------------
# The loop


@dataclass
class FitResult:
    start_step: int  # 0 for a fresh run, else the step it resumed from
    step: int  # optimizer steps done
    best_step: int
    best: dict[str, float]  # validation metrics at best_step
    history: list[dict[str, float]]  # one point per evaluation: step, train_loss, val_*, lr
    best_model: dict[str, torch.Tensor] | None = field(default=None, repr=False)  # rank 0 only


def _validate(task: Task, model: nn.Module, device: torch.device, dist: Distributed) -> dict[str, float]:
    """Validation means over all processes' shares of the validation samples."""
    was_training = model.training
    model.eval()
    with torch.no_grad():
        sums = task.validation_sums(model, np.arange(task.n_validation)[dist.rank :: dist.world_size], device)
    model.train(was_training)
    names = sorted(sums)
    total = dict(zip(names, _all_sum([sums[n] for n in names], dist, device)))
    count = total.pop("count")
    if count <= 0:
        raise ValueError("no items to validate on")
    return {name: value / count for name, value in total.items()}


def fit(
    task: Task,
    model: nn.Module,
    cfg: LoopConfig,
    checkpoint_dir: Path | str,
    run_fingerprint: str,
    log_point: Callable[[dict[str, float]], None] | None = None,
    dist: Distributed | None = None,
    on_step: Callable[[int], None] | None = None,
) -> FitResult:
    """Train `model` on `task` for `cfg.steps` optimizer steps, or continue a run of the same
    fingerprint from `checkpoint_dir/last.pt`. `log_point` (rank 0) receives every evaluation's
    point, the resumed run's earlier points first, so curves never repeat or lose a step;
    `on_step(step)` (every rank) is called after each optimizer step (bench/train.py times them)."""
    checkpoint_dir = Path(checkpoint_dir)
    dist = dist or distributed_from_env()
    device = setup_process(dist, cfg.device)
    model.to(device)
    optimizer = task.make_optimizer(model)
    if not 0.0 <= cfg.ema < 1.0:
        raise ValueError(f"ema must be in [0, 1), got {cfg.ema}")
    averaged = AveragedModel(model, multi_avg_fn=ema_updater(cfg.ema)) if cfg.ema else None
    validated = model if averaged is None else averaged.module  # the weights validation judges and `best.pt` keeps

    step, sample, history = 0, 0, []
    running_loss, running_count = 0.0, 0.0  # the train loss since the last evaluation
    best: dict[str, Any] = {"step": 0, "loss": math.inf}
    resume = _shared_resume(checkpoint_dir, run_fingerprint, dist)
    if resume is not None:
        model.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if averaged is not None:
            averaged.load_state_dict(resume["averaged"])
        step, sample, best, history = int(resume["step"]), int(resume["sample"]), dict(resume["best"]), list(resume["history"])
        running_loss, running_count = resume["running"]
        if dist.is_main:
            log.info("resuming from step %d of %d (%s)", step, cfg.steps, checkpoint_dir / LAST)
    elif dist.is_main:
        for name in (LAST, BEST):  # stale files of another run must not be mistaken for ours
            (checkpoint_dir / name).unlink(missing_ok=True)
    start_step = step
    if log_point is not None and dist.is_main:
        for point in history:
            log_point(point)

    net: nn.Module = model
    if dist.active:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    if dist.is_main:
        n_params = sum(p.numel() for p in model.parameters())
        log.info(
            "training %s parameters on %d x %s for %d steps; global batch %d x %d accum x %d processes = %d samples per step",
            f"{n_params:,}", dist.world_size, device, cfg.steps, cfg.batch_size, cfg.accum, dist.world_size,
            cfg.batch_size * cfg.accum * dist.world_size,
        )  # fmt: skip

    def save_last() -> None:
        if not dist.is_main:
            return
        save_checkpoint(checkpoint_dir / LAST, {
            "fingerprint": run_fingerprint, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "step": step, "sample": sample, "best": best, "history": history, "running": [running_loss, running_count],
            "world_size": dist.world_size, **({"averaged": averaged.state_dict()} if averaged is not None else {}),
        })  # fmt: skip

    batches = StepBatches(task, cfg, dist, step, sample)
    loader = torch.utils.data.DataLoader(
        batches, batch_size=None, shuffle=False, num_workers=cfg.loader_workers,
        pin_memory=device.type == "cuda",
    )  # fmt: skip
    bar = tqdm(total=cfg.steps, initial=step, desc=cfg.label, unit="step", disable=not (cfg.progress and dist.is_main), dynamic_ncols=True)
    model.train()
    for micro_batches in loader:
        torch.manual_seed(step_seed(cfg.seed, step, dist.rank))
        loss_sum, count = 0.0, 0
        for i, batch in enumerate(micro_batches):
            batch = tuple(t.to(device, non_blocking=True) for t in batch)
            # DDP averages gradients on the last micro-batch's backward only.
            sync = i == len(micro_batches) - 1 or not dist.active
            with contextlib.nullcontext() if sync else net.no_sync():
                batch_loss, batch_count = task.loss(net, batch, step)
                batch_loss.backward()
            loss_sum += batch_loss.item()
            count += batch_count
        step_loss, step_count = _all_sum([loss_sum, count], dist, device)
        # Gradients are now (sums over this process's items) averaged over processes: make them the
        # mean over every item of the step.
        scale = dist.world_size / max(step_count, 1.0)
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(scale)
        if cfg.clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_norm)
        lr = task.lr(step + 1)
        if lr is not None:
            for group in optimizer.param_groups:
                group["lr"] = lr
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if averaged is not None:
            averaged.update_parameters(model)
        step += 1
        sample += batches.samples_per_step
        if on_step is not None:
            on_step(step)
        running_loss, running_count = running_loss + step_loss, running_count + step_count
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss / max(step_count, 1.0):.3f}")

        if step % cfg.eval_every == 0 or step == cfg.steps:
            point = {"step": float(step), "train_loss": running_loss / max(running_count, 1.0)}
            if task.n_validation:
                val = _validate(task, validated, device, dist)
                point.update({f"val_{name}": value for name, value in val.items()})
            point["lr"] = float(optimizer.param_groups[0]["lr"])
            running_loss, running_count = 0.0, 0.0
            history.append(point)
            # Without validation samples the latest weights count as the best.
            val_loss = point.get("val_loss", math.nan)
            if not task.n_validation or val_loss < best["loss"]:
                best = {"step": step, **{k.removeprefix("val_"): v for k, v in point.items() if k.startswith("val_")}, "loss": val_loss}
                if dist.is_main:
                    save_checkpoint(checkpoint_dir / BEST, {"fingerprint": run_fingerprint, "model": validated.state_dict(), "best": best})
            if log_point is not None and dist.is_main:
                log_point(point)
            if dist.is_main:
                bar.write("step %d: %s" % (step, ", ".join(f"{k} {v:.4g}" for k, v in point.items() if k != "step")))
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            save_last()
    bar.close()

    best_model = None
    if dist.is_main:
        best_state = load_checkpoint(checkpoint_dir / BEST)
        if best_state.get("fingerprint") != run_fingerprint:
            raise CheckpointError(f"{checkpoint_dir / BEST}: belongs to another run")
        best_model = best_state["model"]
    if dist.active:
        torch.distributed.barrier()  # no process leaves (and tears the group down) before rank 0 is done
    best_metrics = {k: float(v) for k, v in best.items() if k != "step"}
    return FitResult(start_step, step, int(best["step"]), best_metrics, history, best_model)


def end_process(dist: Distributed) -> None:
    """Leave the process group, if any."""
    if dist.active and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
