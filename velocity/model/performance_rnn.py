"""Performance RNN (Oore et al. 2018): an LSTM over one-hot performance events, and its sampler.

The network reads event e_t as a one-hot 413-vector (as the paper does; an embedding lookup would
compute the same thing, since one_hot(e) @ W^T is just column e of W) and predicts e_{t+1}.
Training is teacher forcing: input window[:-1], target window[1:]. The seed's model is 3 LSTM
layers of 512 cells; the config default is smaller so that CPU training finishes in minutes.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from velocity.model.events import TIME_SHIFT_OFFSET, VELOCITY_OFFSET, VOCAB_SIZE, WINDOW_PAD, time_shift

LSTMState = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class PerformanceRNNConfig:
    """Shape of the network. The paper: layers=3, hidden_size=512."""

    vocab_size: int = VOCAB_SIZE
    hidden_size: int = 256
    layers: int = 2
    dropout: float = 0.0  # between LSTM layers (ignored by torch when layers == 1)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "PerformanceRNNConfig":
        return cls(**d)


class PerformanceRNN(nn.Module):
    """One-hot events -> stacked LSTM -> logits over the next event."""

    def __init__(self, cfg: PerformanceRNNConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.lstm = nn.LSTM(
            input_size=cfg.vocab_size,
            hidden_size=cfg.hidden_size,
            num_layers=cfg.layers,
            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
            batch_first=True,
        )
        self.head = nn.Linear(cfg.hidden_size, cfg.vocab_size)

    def forward(self, events: torch.Tensor, state: LSTMState | None = None) -> tuple[torch.Tensor, LSTMState]:
        """events (B, T) int64 ids -> logits (B, T, V) and the LSTM state after step T."""
        x = F.one_hot(events, self.cfg.vocab_size).float()  # (B, T, V)
        hidden, state = self.lstm(x, state)  # (B, T, H)
        return self.head(hidden), state


def build_model(cfg: PerformanceRNNConfig) -> PerformanceRNN:
    """A freshly initialised network (torch's default init, drawn from the global torch RNG)."""
    return PerformanceRNN(cfg)


def split_window(windows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher forcing: inputs are events 0..T-2, targets events 1..T-1; padding is masked."""
    inputs = windows[:, :-1].clamp(min=0)  # a pad input only ever precedes pad targets
    targets = windows[:, 1:]
    return inputs, targets


def summed_nll(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Total NLL (nats) of `targets` (B, T) under `logits` (B, T, V), and how many were not padding."""
    nll = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=WINDOW_PAD, reduction="sum"
    )
    return nll, int((targets != WINDOW_PAD).sum())


def window_nll(model: PerformanceRNN, windows: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Total NLL and number of predicted events over windows (B, T), teacher forced."""
    inputs, targets = split_window(windows)
    logits, _ = model(inputs)
    return summed_nll(logits, targets)


class PerformanceTask:
    """What the shared training loop (velocity/model/harness.py) needs of the Performance RNN: event
    windows, teacher-forced NLL summed over events, Adam at a constant rate."""

    def __init__(self, train_windows: np.ndarray, val_windows: np.ndarray, lr: float, val_batch: int) -> None:
        if len(train_windows) == 0:
            raise ValueError("no training windows: the train split has no pieces with at least two events")
        self.train_windows, self.val_windows = train_windows, val_windows
        self.n_train, self.n_validation = len(train_windows), len(val_windows)
        self.learning_rate, self.val_batch = lr, val_batch

    def train_batch(self, indices: np.ndarray) -> tuple[torch.Tensor]:
        return (torch.from_numpy(np.asarray(self.train_windows[np.sort(indices)], dtype=np.int64)),)  # sorted: kind to a memmap

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor], step: int) -> tuple[torch.Tensor, int]:
        # fp32 even on CUDA: cuDNN RNNs take bf16 only from cuDNN 9.13 (pytorch#164411), and the
        # LSTM is not the bottleneck anyway.
        return window_nll(model, batch[0])

    def validation_sums(self, model: nn.Module, indices: np.ndarray, device: torch.device) -> dict[str, float]:
        loss, count = 0.0, 0
        for first in range(0, len(indices), self.val_batch):
            rows = indices[first : first + self.val_batch]
            nll, n = window_nll(model, torch.from_numpy(np.asarray(self.val_windows[rows], dtype=np.int64)).to(device))
            loss, count = loss + float(nll), count + n
        return {"loss": loss, "count": float(count)}

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=self.learning_rate)

    def lr(self, step: int) -> None:
        return None  # constant: Adam's own


@torch.no_grad()
def sequence_nll(
    model: PerformanceRNN,
    sequences: Sequence[np.ndarray],
    device: torch.device | str = "cpu",
    batch_size: int = 16,
    chunk_events: int = 1024,
    progress: Callable[[int], None] | None = None,
) -> tuple[float, int]:
    """Total NLL (nats) and number of predicted events over whole sequences.

    Each sequence is read from its first event, carrying the LSTM state across chunks, and every
    event but the first is predicted (the first has nothing to condition on). Sequences are
    batched by length, padded and masked, so the result does not depend on `batch_size`.
    """
    model.eval()
    order = sorted(range(len(sequences)), key=lambda i: -len(sequences[i]))
    total_nll, total_events = 0.0, 0
    for first in range(0, len(order), batch_size):
        batch = [np.asarray(sequences[i], dtype=np.int64) for i in order[first : first + batch_size]]
        length = max(len(s) for s in batch)
        if length < 2:
            continue
        padded = np.full((len(batch), length), WINDOW_PAD, dtype=np.int64)
        for row, seq in enumerate(batch):
            padded[row, : len(seq)] = seq
        padded_t = torch.from_numpy(padded).to(device)
        state: LSTMState | None = None
        # Chunk c predicts targets [start+1, stop+1) from inputs [start, stop).
        for start in range(0, length - 1, chunk_events):
            stop = min(start + chunk_events, length - 1)
            inputs = padded_t[:, start:stop].clamp(min=0)
            targets = padded_t[:, start + 1 : stop + 1]
            logits, state = model(inputs, state)
            nll, count = summed_nll(logits, targets)
            total_nll += float(nll)
            total_events += count
            if progress is not None:
                progress(count)
    return total_nll, total_events


def nll_metrics(total_nll: float, n_events: int) -> dict[str, float]:
    """NLL per event (nats) and perplexity = exp(NLL per event)."""
    if n_events == 0:
        raise ValueError("no events to evaluate")
    nll = total_nll / n_events
    return {"nll_per_event": nll, "perplexity": math.exp(nll)}


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_p: float | None = None) -> torch.Tensor:
    """Logits (V,) scaled by 1/temperature, with everything outside the top-p nucleus set to -inf."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    logits = logits.float() / temperature
    if top_p is not None and top_p < 1.0:
        if not 0 < top_p:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        sorted_logits, sorted_ids = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        # Drop an event when the events ranked above it already cover top_p; the first always stays.
        drop_sorted = (cumulative - torch.softmax(sorted_logits, dim=-1)) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, sorted_ids, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


# Sampling with no primer starts from one 8 ms TIME_SHIFT: pieces start with (silent) time too.
DEFAULT_PRIMER = (time_shift(1),)


@torch.no_grad()
def sample(
    model: PerformanceRNN,
    primer: Sequence[int],
    seconds: float,
    *,
    temperature: float = 1.0,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    max_events: int | None = None,
    progress: Callable[[float], None] | None = None,
) -> list[int]:
    """Sample events after `primer` until they add up to `seconds` of time; returns the new events.

    The primer is read in one pass to set the LSTM state; then one event at a time is drawn from
    the (temperature-scaled, top-p filtered) next-event distribution with `generator`, so a seeded
    generator on CPU gives the same events every time. `max_events` (default 200 per second + 1000)
    stops a model that forgets to move time forward. `progress(seconds)` is called per TIME_SHIFT.
    """
    model.eval()
    primer = list(primer) or list(DEFAULT_PRIMER)
    if min(primer) < 0 or max(primer) >= model.cfg.vocab_size:
        raise ValueError(f"primer event ids must lie in 0..{model.cfg.vocab_size - 1}")
    target_steps = round(seconds * 125)
    if max_events is None:
        max_events = 200 * math.ceil(seconds) + 1000
    inputs = torch.tensor([primer], dtype=torch.long, device=device)
    logits, state = model(inputs)
    next_logits = logits[0, -1]
    generated: list[int] = []
    elapsed_steps = 0
    while elapsed_steps < target_steps and len(generated) < max_events:
        probs = torch.softmax(filter_logits(next_logits, temperature, top_p), dim=-1).cpu()
        event = int(torch.multinomial(probs, 1, generator=generator))
        generated.append(event)
        if TIME_SHIFT_OFFSET <= event < VELOCITY_OFFSET:
            steps = event - TIME_SHIFT_OFFSET + 1
            elapsed_steps += steps
            if progress is not None:
                progress(steps / 125)
        logits, state = model(torch.tensor([[event]], dtype=torch.long, device=device), state)
        next_logits = logits[0, -1]
    return generated


def checkpoint_state(
    model: PerformanceRNN, *, init_seed: int, step: int, sustain: bool, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """A self-contained model file: weights, config, init seed and how its data was made."""
    return {
        "kind": "performance_rnn",
        "config": model.cfg.to_dict(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "init_seed": init_seed,
        "step": step,
        "sustain": sustain,
        "codec": {"vocab_size": VOCAB_SIZE, "steps_per_second": 125, "velocity_bins": 32},
        **(extra or {}),
    }


class ModelFileError(ValueError):
    """A file that is not a Performance RNN model."""


def model_from_state(state: dict[str, Any], source: str = "model") -> PerformanceRNN:
    """Rebuild the network saved by `checkpoint_state`."""
    if state.get("kind") != "performance_rnn" or "config" not in state or "model" not in state:
        raise ModelFileError(f"{source}: not a Performance RNN model file (kind={state.get('kind')!r})")
    model = build_model(PerformanceRNNConfig.from_dict(state["config"]))
    model.load_state_dict(state["model"])
    model.eval()
    return model
