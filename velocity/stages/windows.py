"""Stage `windows`: tokenize each piece and cut it into overlapping windows of notes.

Windows of `length` notes start every `step` notes and never cross pieces. The tail: with
`tail: last` one more window ends exactly at the piece's last note (so every note is in at least
one window); with `tail: drop` notes after the last full window are left out. A piece shorter than
one window becomes one window padded with <pad> (`short: pad`) or is left out (`short: drop`).

Per split the stage writes memory-mappable int16/int32 arrays (see CONTRIBUTING.md):
`{split}_src.npy`, `{split}_tgt.npy` (token ids, 0 = pad), `{split}_features.npy` (int16
(n_windows, length, n_features): each note's feature ids from velocity/model/features.py, with the edges
in data/bins.json; 0 = pad) and `{split}_rows.npy` (row of each note in
data/notes/{split}.parquet, -1 = pad), plus `stats.json`.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from velocity import params as params_lib
from velocity.datasets.maestro import SPLITS
from velocity.io import save_npy, write_json
from velocity.model.codec import Vocab, piece_bounds, tokenize, window_rows, windowed
from velocity.model.features import feature_ids

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowsParams:
    length: int
    step: int
    tail: str
    short: str

    def __post_init__(self) -> None:
        if self.length < 1:
            raise params_lib.ParamsError(f"windows.length must be positive, got {self.length}")
        if not 1 <= self.step <= self.length:
            raise params_lib.ParamsError(
                f"windows.step must be between 1 and windows.length ({self.length}) so windows leave no gaps, got {self.step}"
            )
        if self.tail not in ("last", "drop"):
            raise params_lib.ParamsError(f"windows.tail must be 'last' or 'drop', got {self.tail!r}")
        if self.short not in ("pad", "drop"):
            raise params_lib.ParamsError(f"windows.short must be 'pad' or 'drop', got {self.short!r}")


@dataclass
class SplitWindows:
    src: np.ndarray  # (n_windows, length) int16 source token ids
    tgt: np.ndarray  # (n_windows, length) int16 target token ids
    features: np.ndarray  # (n_windows, length, n_features) int16 feature ids
    rows: np.ndarray  # (n_windows, length) int32 row in the split's notes table, -1 = pad
    pieces: int


def make_windows(notes: pd.DataFrame, bins: dict, vocab: Vocab, params: WindowsParams) -> SplitWindows:
    """Windows over every piece of one split's notes table (rows in piece order, as extract writes)."""
    src_ids, tgt_ids = tokenize(notes, bins, vocab)
    assert tgt_ids is not None  # training notes always carry velocities
    note_feature_ids = feature_ids(notes, bins.get("features") or {})  # (n_notes, n_features)
    bounds = piece_bounds(notes["piece_id"].to_numpy())
    pieces = [
        window_rows(int(end - begin), params.length, params.step, params.tail, params.short, first=int(begin))
        for begin, end in zip(bounds[:-1], bounds[1:])
    ]
    rows = np.concatenate(pieces) if pieces else np.empty((0, params.length), dtype=np.int64)
    return SplitWindows(
        src=windowed(src_ids, rows).astype(np.int16), tgt=windowed(tgt_ids, rows).astype(np.int16),
        features=windowed(note_feature_ids, rows).astype(np.int16), rows=rows.astype(np.int32), pieces=len(bounds) - 1,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notes_dir", type=Path, help="data/notes")
    parser.add_argument("bins", type=Path, help="data/bins.json")
    parser.add_argument("vocab", type=Path, help="data/vocab.json")
    parser.add_argument("out_dir", type=Path, help="data/windows")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    params = params_lib.load(WindowsParams, "windows")
    bins = json.loads(args.bins.read_text())
    vocab = Vocab.load(args.vocab)
    stats: dict = {"length": params.length, "step": params.step, "tail": params.tail, "short": params.short}
    for split in SPLITS:
        notes = pd.read_parquet(args.notes_dir / f"{split}.parquet")  # a score's table has its own columns besides
        windows = make_windows(notes, bins, vocab, params)
        for name in ("src", "tgt", "features", "rows"):
            save_npy(args.out_dir / f"{split}_{name}.npy", getattr(windows, name))
        covered = int(np.unique(windows.rows[windows.rows >= 0]).size)
        stats[split] = {"pieces": windows.pieces, "notes": len(notes), "notes_in_windows": covered, "windows": len(windows.src)}
        log.info("%s: %d windows over %d pieces (%d notes)", split, len(windows.src), windows.pieces, len(notes))
    write_json(args.out_dir / "stats.json", stats)
    log.info("wrote %s", args.out_dir)


if __name__ == "__main__":
    main()
