"""Stage perf_evaluate: test-split NLL per event and perplexity of the Performance RNN.

Every test piece is read whole (LSTM state carried across chunks) and every event but its first
is predicted. The same is measured for an untrained network of the same architecture and init
seed (the weights training started from), so the metrics show what training bought; it reads a
sample of the pieces spread over the split (`untrained_pieces`), since its loss per event hardly
varies (about ln 413: nearly uniform) and reading every piece again would double the stage's time.

Usage: python -m velocity.stages.perf_evaluate models/performance_rnn.pt data/perf_events metrics/performance_rnn.json
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from velocity.model.checkpoint import load_checkpoint
from velocity.model.events import VOCAB_SIZE
from velocity.model.performance_rnn import (
    PerformanceRNN,
    PerformanceRNNConfig,
    build_model,
    model_from_state,
    nll_metrics,
    sequence_nll,
)
from velocity.model.runtime import pick_device, seed_everything
from velocity.io import write_json
from velocity.params import load_perf_params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PerfEvaluateParams:
    device: str
    batch_pieces: int  # pieces read side by side
    chunk_events: int  # events per forward call (the state carries over)
    untrained_pieces: int  # pieces the untrained network reads, spread over the split (0: all)


def spread_sample(pieces: list[np.ndarray], n: int) -> list[np.ndarray]:
    """About `n` of `pieces`, every k-th from the first (all of them when n is 0 or reaches their number)."""
    return pieces if n <= 0 else pieces[:: max(1, math.ceil(len(pieces) / n))]


def load_split(events_dir: Path, split: str) -> list[np.ndarray]:
    """The event sequence of every piece of `split`, as written by perf_events."""
    events_path, offsets_path = events_dir / f"{split}_events.npy", events_dir / f"{split}_offsets.npy"
    for path in (events_path, offsets_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path}: missing (run the perf_events stage)")
    events = np.load(events_path, mmap_mode="r")
    offsets = np.load(offsets_path)
    return [events[a:b] for a, b in zip(offsets[:-1], offsets[1:])]


def untrained_model(config: PerformanceRNNConfig, init_seed: int) -> PerformanceRNN:
    """The network perf_train started from: same config, built right after seeding with its seed."""
    seed_everything(init_seed)
    return build_model(config).eval()


def predicted_events(pieces: list[np.ndarray]) -> int:
    """Events the model predicts over `pieces`: every event but each piece's first."""
    return sum(max(len(piece) - 1, 0) for piece in pieces)


def evaluate_performance_rnn(
    model: PerformanceRNN,
    untrained: PerformanceRNN,
    pieces: list[np.ndarray],
    params: PerfEvaluateParams,
) -> dict[str, float | int]:
    """Metrics of `model` and `untrained` on `pieces` (nats per event)."""
    device = pick_device(params.device)
    n_events = predicted_events(pieces)
    if n_events == 0:
        raise ValueError("the test split has no events to predict")
    results = {}
    for name, net, read in (("trained", model, pieces), ("untrained", untrained, spread_sample(pieces, params.untrained_pieces))):
        with tqdm(total=predicted_events(read), desc=f"evaluate {name}", unit="event", leave=False) as bar:
            total, count = sequence_nll(
                net.to(device), read, device, params.batch_pieces, params.chunk_events, progress=bar.update
            )
        results[name] = {**nll_metrics(total, count), "events": count}
    return {
        "nll_per_event": results["trained"]["nll_per_event"],
        "perplexity": results["trained"]["perplexity"],
        "vocab_size": VOCAB_SIZE,
        "untrained_nll_per_event": results["untrained"]["nll_per_event"],
        "untrained_perplexity": results["untrained"]["perplexity"],
        "untrained_events": int(results["untrained"]["events"]),  # a sample of the pieces (untrained_pieces)
        "events": n_events,
        "pieces": len(pieces),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model_path", type=Path)
    parser.add_argument("events_dir", type=Path)
    parser.add_argument("metrics_path", type=Path)
    parser.add_argument("--split", default="test")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_perf_params(PerfEvaluateParams, "evaluate")

    try:
        pieces = load_split(args.events_dir, args.split)
    except FileNotFoundError as err:
        raise SystemExit(f"perf_evaluate: {err}") from None
    if predicted_events(pieces) == 0:  # one line, no traceback
        raise SystemExit(f"perf_evaluate: {args.events_dir / f'{args.split}_events.npy'}: no events to score (the {args.split} split is empty)")
    state = load_checkpoint(args.model_path)
    model = model_from_state(state, source=str(args.model_path))
    untrained = untrained_model(model.cfg, int(state["init_seed"]))
    metrics = evaluate_performance_rnn(model, untrained, pieces, params)
    write_json(args.metrics_path, metrics)
    log.info(
        "%s: %.4f nats/event (perplexity %.2f), untrained %.4f -> wrote %s",
        args.split,
        metrics["nll_per_event"],
        metrics["perplexity"],
        metrics["untrained_nll_per_event"],
        args.metrics_path,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
