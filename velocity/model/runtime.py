"""Where and how a model runs: device choice, seeding, mixed precision, batches side by side."""

from __future__ import annotations

import contextlib
import random
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch


def pick_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA when present, else CPU; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU generator for data order."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; a no-op on CPU, where fp32 keeps results deterministic."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


T = TypeVar("T")
R = TypeVar("R")


def batch_map(function: Callable[[T], R], items: Iterable[T], device: torch.device) -> Iterator[R]:
    """`function(item)` of each item, in order, under `torch.inference_mode` (the caller's mode is
    per thread). On a CPU with several intra-op threads the items run side by side, one per thread,
    each single-threaded, a few ahead of the consumer: every core busy on its own batch instead of
    all of them meeting at OpenMP's barrier after every op (which on a busy 2-core machine made two
    threads slower than one). The intra-op threads are restored afterwards. Results are the same:
    a batch's ops give the same numbers on one thread as on several."""

    def run(item: T) -> R:
        with torch.inference_mode():
            return function(item)

    threads = torch.get_num_threads()
    if device.type != "cpu" or threads < 2:
        yield from map(run, items)
        return
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads, thread_name_prefix="batch") as pool:
            pending: deque = deque()
            for item in items:
                pending.append(pool.submit(run, item))
                if len(pending) > threads:  # `threads` running, one queued: memory stays a few batches'
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
    finally:
        torch.set_num_threads(threads)
