"""ASAP's metadata.csv: its rows' performances, their MAESTRO recordings, and the split rule.

ASAP (../shared/data/README.md) lists one row per performance: its piece (`composer`, `title`),
its score folder, and either the MAESTRO recording it was cut from (`maestro_midi_performance`,
`{maestro}/<year>/<name>.midi`) or nothing, when ASAP took the performance straight from the
e-Piano Competition. Such an ASAP-only performance has its MIDI file in the ASAP folder itself
(`midi_performance`).

The split rule, one per piece (a piece is `composer` + `title`: ASAP's `_no_repeat` score folders
belong to their piece):
- a performance with a MAESTRO recording has that recording's split;
- an ASAP-only performance takes the split of its piece's MAESTRO performances;
- a piece without any MAESTRO performance goes to train.
So no piece is ever in two splits. A piece whose MAESTRO performances are not in the MAESTRO table
at hand, or fall in two splits, has no well-defined split: its ASAP-only rows are left out with
that reason, never guessed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

MAESTRO_PREFIX = "{maestro}/"  # how ASAP's metadata names a file of the MAESTRO archive
METADATA_COLUMNS = ["composer", "title", "folder", "midi_score", "midi_performance", "performance_annotations",
                    "midi_score_annotations", "maestro_midi_performance"]  # fmt: skip
MAESTRO, ASAP_ONLY = "maestro", "asap"  # the `source` of a performance in data/notes and data/aligned
PIECE_WITHOUT_MAESTRO_SPLIT = "train"


class MetadataError(ValueError):
    """ASAP's metadata.csv is missing or lacks a column this project reads; the message names the file."""


def read_metadata(path: Path) -> pd.DataFrame:
    """ASAP's metadata.csv as strings (empty cells ""), checked for the columns this project reads."""
    if not path.is_file():
        raise MetadataError(f"{path}: no such file (expected ASAP's metadata.csv; run the scores stage)")
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in METADATA_COLUMNS if c not in table.columns]
    if missing:
        raise MetadataError(f"{path}: missing column(s) {missing}")
    return table


def piece_key(row: Any) -> str:
    """The piece a metadata row performs: `composer/title`."""
    return f"{row.composer}/{row.title}"


def maestro_name(row: Any, known: set[str] | dict[str, Any]) -> str | None:
    """The MAESTRO table's `midi_filename` of a row's recording, or None when the row has none or
    it is not in `known`. When one recording supplies two performances the name carries
    `__<title>` before `.midi`: that name is tried first. Never split a name on `__` (MAESTRO's
    own 2013 names contain it)."""
    name = row.maestro_midi_performance
    if not name.startswith(MAESTRO_PREFIX):
        return None
    name = name[len(MAESTRO_PREFIX) :]
    stem, dot, suffix = name.rpartition(".")
    for candidate in (f"{stem}__{row.title}{dot}{suffix}", name):
        if candidate in known:
            return candidate
    return None


def is_asap_only(row: Any) -> bool:
    """True when ASAP took this performance straight from the competition, not through MAESTRO."""
    return not row.maestro_midi_performance.strip()


def asap_only_splits(metadata: pd.DataFrame, maestro_split: dict[str, str]) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """The ASAP-only rows of `metadata` with the `split` the rule gives them, and the rows left out
    with their reason (`{"performance": ..., "reason": ...}`).

    `maestro_split` maps the MAESTRO table's `midi_filename` to its split.
    """
    piece_splits: dict[str, set[str]] = {}
    piece_has_maestro: set[str] = set()
    for row in metadata.itertuples(index=False):
        if is_asap_only(row):
            continue
        piece = piece_key(row)
        piece_has_maestro.add(piece)
        name = maestro_name(row, maestro_split)
        if name is not None:
            piece_splits.setdefault(piece, set()).add(maestro_split[name])

    kept, left_out = [], []
    for index, row in enumerate(metadata.itertuples(index=False)):
        if not is_asap_only(row):
            continue
        piece = piece_key(row)
        splits = piece_splits.get(piece, set())
        if len(splits) == 1:
            kept.append((index, next(iter(splits))))
        elif piece not in piece_has_maestro:
            kept.append((index, PIECE_WITHOUT_MAESTRO_SPLIT))
        elif not splits:
            left_out.append({"performance": row.midi_performance,
                             "reason": f"its piece {piece!r} has MAESTRO performances, none of them in the MAESTRO table (data.source): its split is unknown"})  # fmt: skip
        else:
            left_out.append({"performance": row.midi_performance,
                             "reason": f"its piece {piece!r} has MAESTRO performances in {len(splits)} splits ({', '.join(sorted(splits))})"})  # fmt: skip
    rows = metadata.iloc[[i for i, _ in kept]].copy()
    rows["split"] = [split for _, split in kept]
    return rows.reset_index(drop=True), left_out
