"""Stage perf_events: notes -> Performance RNN event sequences and fixed-length training windows.

Writes, per split, into the output folder (all .npy, memory-mappable with np.load(mmap_mode="r")):
- `{split}_events.npy`  int16 (n_events,): every piece's events, pieces one after another
- `{split}_offsets.npy` int64 (n_pieces + 1,): piece i is events[offsets[i]:offsets[i + 1]]
- `{split}_windows.npy` int16 (n_windows, window): windows of `window` events, -1 = padding.
  Train windows start every `step` events, validation and test windows every `window` events;
  a last window ends at the piece's last event; a piece shorter than a window is one padded window.
plus `stats.json` (pieces, notes, events, windows, seconds per split).

Usage: python -m velocity.stages.perf_events data/notes data/perf_events
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from velocity.datasets.maestro import SPLITS
from velocity.io import save_npy, write_json
from velocity.model.codec import window_rows, windowed
from velocity.model.config import ParamsError
from velocity.model.events import ENCODED_COLUMNS, WINDOW_PAD, EventCodecError, encode_frame, shift_steps
from velocity.params import load_perf_params

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PerfEventsParams:
    window: int  # events per training window
    step: int  # hop between train window starts

    def __post_init__(self) -> None:
        if self.window < 2:
            raise ParamsError(f"performance_rnn.events.window must be >= 2, got {self.window}")
        if not 1 <= self.step:
            raise ParamsError(f"performance_rnn.events.step must be >= 1, got {self.step}")


def make_windows(events: np.ndarray, offsets: np.ndarray, window: int, step: int) -> np.ndarray:
    """int16 (n_windows, window) cut from each piece, padded with -1."""
    pieces = [
        window_rows(int(last - first), window, step, first=int(first))
        for first, last in zip(offsets[:-1], offsets[1:])
        if last - first >= 2  # fewer events: nothing to predict
    ]
    rows = np.concatenate(pieces) if pieces else np.zeros((0, window), dtype=np.int64)
    return windowed(np.asarray(events, dtype=np.int16), rows, WINDOW_PAD)


def encode_split(notes: pd.DataFrame, split: str) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Events of every piece in `notes` (parquet order), their offsets, and counts.

    A piece the codec rejects is skipped; its reason is logged and counted.
    """
    pieces: list[np.ndarray] = []
    skipped: dict[str, str] = {}
    groups = notes.groupby("piece_id", sort=False) if len(notes) else []
    for piece_id, piece in tqdm(groups, desc=f"events {split}", unit="piece", leave=False):
        try:
            pieces.append(encode_frame(piece, source=f"{split}/{piece_id}"))
        except EventCodecError as err:
            log.warning("skipping %s", err)
            skipped[str(piece_id)] = str(err)
    lengths = np.array([len(p) for p in pieces], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    events = np.concatenate(pieces).astype(np.int16) if pieces else np.zeros(0, dtype=np.int16)
    counts = {
        "pieces": len(pieces),
        "notes": int(len(notes)),
        "events": int(len(events)),
        "skipped": len(skipped),
        "skipped_reasons": skipped,
    }
    return events, offsets, counts


def build_perf_events(notes_dir: Path, out_dir: Path, params: PerfEventsParams) -> dict[str, dict]:
    """Encode every split of `notes_dir` into `out_dir`; returns the stats written to stats.json."""
    stats: dict[str, dict] = {}
    for split in SPLITS:
        path = notes_dir / f"{split}.parquet"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no notes for split '{split}' (run the extract stage)")
        notes = pd.read_parquet(path, columns=["piece_id", *ENCODED_COLUMNS])
        events, offsets, counts = encode_split(notes, split)
        step = params.step if split == "train" else params.window  # validation: only the tail window overlaps
        windows = make_windows(events, offsets, params.window, step)
        for name, array in (("events", events), ("offsets", offsets), ("windows", windows)):
            save_npy(out_dir / f"{split}_{name}.npy", array)
        stats[split] = counts | {
            "windows": int(len(windows)),
            "seconds": float(shift_steps(events).sum()) / 125,
        }
        log.info("%s: %d pieces, %d events, %d windows", split, counts["pieces"], len(events), len(windows))
    stats["params"] = {"window": params.window, "step": params.step}
    write_json(out_dir / "stats.json", stats)
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notes_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load_perf_params(PerfEventsParams, "events")
    build_perf_events(args.notes_dir, args.out_dir, params)
    log.info("wrote event sequences and windows to %s", args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
