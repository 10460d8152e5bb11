"""Extract stage: every MIDI file the MAESTRO csv lists -> one Parquet table of notes per split.

    python -m velocity.stages.extract data/raw/maestro-v3.0.0 data/notes --scores data/raw_scores/asap-dataset

With `--scores`, the ASAP-only performances of ASAP's metadata.csv (those with no MAESTRO
recording: their MIDI file is in the ASAP folder) are read too, through the same reader and note
rules, with the split of their piece (velocity/datasets/asap.py: a piece with MAESTRO performances keeps their
split, a piece without any goes to train). Their `piece_id` is the metadata's `midi_performance`
and their `source` is `asap`; MAESTRO's files have `source` `maestro`.

Writes `data/notes/{train,validation,test}.parquet` (columns and order in `NOTE_SCHEMA`, see the
contract in CONTRIBUTING.md) and `data/notes/report.json` (files read and skipped with reasons, each
kind of damage worked around and notes left out, counted, and each file's warnings). Files are read
by `velocity/model/midi.py`, the reader `velocity predict` uses too, in tick time; ticks become float64
seconds from the file's own tempo map and resolution (symusic's own seconds are float32, whose steps
are already 6e-5 s at ten minutes).

Which notes a file's piece is made of (the piano, the pedal, `dstart`, damaged files) is the
note rules' business: velocity/model/notes.py, shared with the align stage and `velocity predict`.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from velocity.model.config import ParamsError
from velocity.io import atomic_path, write_json
from velocity.model.midi import (
    FILES_BAD_CHUNK_LENGTH,
    FILES_BAD_EVENT,
    FILES_MISSING_TRACKS,
    FILES_TRUNCATED,
    FILES_TYPE_2,
    NOTES_CLOSED_AT_TRACK_END,
    MidiError,
    MidiWarning,
    warning_counts,
)
from velocity.datasets.asap import ASAP_ONLY, MAESTRO, MetadataError, asap_only_splits, is_asap_only, maestro_name, read_metadata
from velocity.datasets.maestro import CSV_NAME, SPLITS
from velocity.model.notes import NOTE_COLUMNS, NOTES_IGNORED_NON_PIANO_PROGRAM, read_piece
from velocity.params import load

log = logging.getLogger(__name__)

CSV_COLUMNS = ["canonical_composer", "canonical_title", "split", "midi_filename"]
# The report's counters of damage worked around and notes left out by the program rule.
WARNING_KINDS = (FILES_TRUNCATED, FILES_BAD_CHUNK_LENGTH, FILES_BAD_EVENT, FILES_MISSING_TRACKS, FILES_TYPE_2,
                 NOTES_CLOSED_AT_TRACK_END, NOTES_IGNORED_NON_PIANO_PROGRAM)  # fmt: skip

NOTE_SCHEMA = pa.schema(
    [
        ("piece_id", pa.string()),
        ("composer", pa.string()),
        ("title", pa.string()),
        ("split", pa.string()),
        ("source", pa.string()),
        ("pitch", pa.int16()),
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("duration", pa.float64()),
        ("dstart", pa.float64()),
        ("velocity", pa.int16()),
        ("pedal", pa.int8()),
    ]
)
LISTING_COLUMNS = ["piece_id", "composer", "title", "split", "source", "path"]  # what `listing` gives per file
_EMPTY_LISTING = pd.DataFrame(columns=LISTING_COLUMNS)
ROW_GROUP_NOTES = 500_000  # notes buffered per split before a Parquet row group is written


class CsvError(ValueError):
    """The MAESTRO csv is missing, lacks a column, or names an unknown split or a file twice."""


@dataclass(frozen=True)
class ExtractParams:
    sustain: bool
    workers: int


# ---------------------------------------------------------------------------------------------
# One file


# ---------------------------------------------------------------------------------------------
# The whole dataset


@dataclass
class _Outcome:
    """What reading one listed file came to: its notes and counts, or the reason it was skipped."""

    # NOTE_COLUMNS as plain arrays: much cheaper than a DataFrame to send back from a worker.
    columns: dict[str, np.ndarray] | None = None
    dropped_out_of_range: int = 0
    dropped_sustain_duplicates: int = 0
    drum_notes_ignored: int = 0
    warnings: list[MidiWarning] = field(default_factory=list)
    reason: str | None = None


def _read_or_reason(task: tuple[Path, bool]) -> _Outcome:
    """The per-file loop body (runs in a worker process): the only place MidiError is caught."""
    path, sustain = task
    try:
        piece = read_piece(path, sustain)
    except MidiError as err:
        return _Outcome(reason=str(err))
    return _Outcome(
        columns={c: piece.notes[c].to_numpy() for c in NOTE_COLUMNS},
        dropped_out_of_range=piece.dropped_out_of_range,
        dropped_sustain_duplicates=piece.dropped_sustain_duplicates,
        drum_notes_ignored=piece.drum_notes_ignored,
        warnings=piece.warnings,
    )


def read_csv(csv_path: Path) -> pd.DataFrame:
    """The MAESTRO table, checked: the columns extract needs, known splits, no file listed twice."""
    if not csv_path.is_file():
        raise CsvError(f"{csv_path}: no such file (expected the MAESTRO csv)")
    table = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    missing = [c for c in CSV_COLUMNS if c not in table.columns]
    if missing:
        raise CsvError(f"{csv_path}: missing column(s) {missing}")
    unknown = sorted(set(table["split"]) - set(SPLITS))
    if unknown:
        raise CsvError(f"{csv_path}: unknown split(s) {unknown}; expected {list(SPLITS)}")
    twice = table["midi_filename"][table["midi_filename"].duplicated()]
    if len(twice):
        raise CsvError(f"{csv_path}: midi_filename listed more than once: {twice.iloc[0]}")
    return table


def resolve_workers(workers: int) -> int:
    """Processes to use: `workers`, or every core this process may run on when it is 0."""
    if workers < 0:
        raise ParamsError(f"extract.workers must be >= 0 (0 = all cores), got {workers}")
    if workers:
        return workers
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def _read_all(tasks: list[tuple[Path, bool]], workers: int) -> Iterator[Iterator[_Outcome]]:
    """Outcomes in the order of `tasks`, read by `workers` processes (in this one when 1)."""
    if workers <= 1 or len(tasks) <= 1:
        yield map(_read_or_reason, tasks)
        return
    # A few chunks per worker: little pickling overhead, and long files still spread evenly.
    chunksize = max(1, len(tasks) // (workers * 8))
    # Linux's default fork start costs ~0.1 s where spawn re-imports pandas and co. (~2 s); the
    # pool forks here, at map(), before the progress bar starts any thread.
    with ProcessPoolExecutor(max_workers=workers) as pool:
        try:
            yield pool.map(_read_or_reason, tasks, chunksize=chunksize)
        except BaseException:
            pool.shutdown(cancel_futures=True)  # a failed run stops, rather than reading on
            raise


@dataclass
class _SplitWriter:
    """Buffers one split's pieces and writes them as Parquet row groups."""

    writer: pq.ParquetWriter
    pieces: list[tuple[dict[str, str], dict[str, np.ndarray]]] = field(default_factory=list)
    buffered_notes: int = 0

    def add(self, meta: dict[str, str], columns: dict[str, np.ndarray]) -> None:
        self.pieces.append((meta, columns))
        self.buffered_notes += len(columns["pitch"])
        if self.buffered_notes >= ROW_GROUP_NOTES:
            self.flush()

    def flush(self) -> None:
        if not self.pieces:
            return
        piece_of_note = pa.array(np.repeat(np.arange(len(self.pieces)), [len(c["pitch"]) for _, c in self.pieces]))
        columns: dict[str, Any] = {
            key: pa.array([m[key] for m, _ in self.pieces], type=pa.string()).take(piece_of_note)
            for key in ("piece_id", "composer", "title", "split", "source")
        }
        columns.update({name: np.concatenate([c[name] for _, c in self.pieces]) for name in NOTE_COLUMNS})
        self.writer.write_table(pa.Table.from_pydict(columns, schema=NOTE_SCHEMA))
        self.pieces, self.buffered_notes = [], 0


def asap_only_performances(scores_dir: Path, maestro: pd.DataFrame) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """ASAP-only rows of `scores_dir`'s metadata.csv as a listing (see `listing`), and the rows
    left out with their reason. Scores that share no recording with the MAESTRO table (the demo
    scores beside a real corpus, say) are not this corpus's: none of their rows is read."""
    metadata = read_metadata(scores_dir / "metadata.csv")
    maestro_split = dict(zip(maestro["midi_filename"], maestro["split"]))
    rows, left_out = asap_only_splits(metadata, maestro_split)
    maestro_rows = [row for row in metadata.itertuples(index=False) if not is_asap_only(row)]
    if maestro_rows and all(maestro_name(row, maestro_split) is None for row in maestro_rows):
        reason = f"{scores_dir}: none of its MAESTRO performances is in the MAESTRO table: these scores are not data.source's"
        return _EMPTY_LISTING, left_out + [{"performance": name, "reason": reason} for name in rows["midi_performance"]]
    root = scores_dir.resolve()
    inside = [(root / name).resolve().is_relative_to(root) for name in rows["midi_performance"]]
    left_out += [{"performance": name, "reason": "its path leaves the scores folder"} for name, ok in zip(rows["midi_performance"], inside) if not ok]
    rows = rows[inside].reset_index(drop=True)
    return pd.DataFrame({
        "piece_id": rows["midi_performance"], "composer": rows["composer"], "title": rows["title"], "split": rows["split"],
        "source": ASAP_ONLY, "path": [scores_dir / name for name in rows["midi_performance"]],
    }), left_out  # fmt: skip


def listing(raw_dir: Path, scores_dir: Path | None) -> tuple[pd.DataFrame, list[dict[str, str]]]:
    """Every performance to read: `piece_id`, `composer`, `title`, `split`, `source` and `path`,
    MAESTRO's csv rows first (csv order), then the ASAP-only ones (metadata order); and the ASAP
    rows left out with their reason."""
    table = read_csv(raw_dir / CSV_NAME)
    maestro = pd.DataFrame({
        "piece_id": table["midi_filename"], "composer": table["canonical_composer"], "title": table["canonical_title"],
        "split": table["split"], "source": MAESTRO, "path": [raw_dir / name for name in table["midi_filename"]],
    })  # fmt: skip
    if scores_dir is None:
        return maestro, []
    asap, left_out = asap_only_performances(Path(scores_dir), table)
    return pd.concat([maestro, asap], ignore_index=True), left_out


def extract_notes(raw_dir: Path, out_dir: Path, sustain: bool, workers: int, scores_dir: Path | None = None) -> dict[str, Any]:
    """Read every MIDI file `raw_dir`'s MAESTRO csv lists, and with `scores_dir` the ASAP-only
    performances of its metadata.csv, into `out_dir/{split}.parquet`.

    Files are read by `workers` processes (0 = all cores); results keep the listing's order. A bad
    file is skipped and its reason recorded. Writes and returns the report (`out_dir/report.json`).
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    table, asap_left_out = listing(raw_dir, scores_dir)
    for row in asap_left_out:
        log.warning("left out %s: %s", row["performance"], row["reason"])
    n_workers = resolve_workers(workers)
    tasks = [(path, sustain) for path in table["path"]]
    log.info("extract: %d files listed (%d ASAP-only), reading with %d process(es)", len(tasks),
             int((table["source"] == ASAP_ONLY).sum()), n_workers)  # fmt: skip

    split_counts = {s: {"files_listed": 0, "files_read": 0, "files_skipped": 0, "notes": 0} for s in SPLITS}
    by_source = {source: dict.fromkeys(SPLITS, 0) for source in (MAESTRO, ASAP_ONLY)}  # files listed
    skipped: dict[str, str] = {}
    warned: dict[str, list[str]] = {}
    totals = dict(notes_read=0, notes_written=0, notes_dropped_out_of_range=0,
                  notes_dropped_sustain_duplicates=0, drum_notes_ignored=0)  # fmt: skip
    totals.update(dict.fromkeys(WARNING_KINDS, 0))
    out_paths = {s: out_dir / f"{s}.parquet" for s in SPLITS}
    with contextlib.ExitStack() as stack:
        writers = {}
        for split, path in out_paths.items():
            tmp = stack.enter_context(atomic_path(path))
            writer = pq.ParquetWriter(tmp, NOTE_SCHEMA)
            stack.callback(writer.close)  # runs before the rename: the footer is written first
            writers[split] = _SplitWriter(writer)
        rows = table.itertuples(index=False)
        outcomes = stack.enter_context(_read_all(tasks, n_workers))
        for row, outcome in tqdm(zip(rows, outcomes), total=len(tasks), desc="extract", unit="file"):
            counts = split_counts[row.split]
            counts["files_listed"] += 1
            by_source[row.source][row.split] += 1
            if outcome.columns is None:
                counts["files_skipped"] += 1
                skipped[row.piece_id] = str(outcome.reason)
                log.warning("skipped %s", outcome.reason)
                continue
            n_notes = len(outcome.columns["pitch"])
            counts["files_read"] += 1
            counts["notes"] += n_notes
            totals["notes_written"] += n_notes
            totals["notes_read"] += n_notes + outcome.dropped_out_of_range + outcome.dropped_sustain_duplicates
            totals["notes_dropped_out_of_range"] += outcome.dropped_out_of_range
            totals["notes_dropped_sustain_duplicates"] += outcome.dropped_sustain_duplicates
            totals["drum_notes_ignored"] += outcome.drum_notes_ignored
            for kind, count in warning_counts(outcome.warnings).items():
                if kind in WARNING_KINDS:  # the other kinds have their own counters above
                    totals[kind] += count
            if outcome.warnings:
                warned[row.piece_id] = [w.text for w in outcome.warnings]
                for warning in outcome.warnings:
                    log.warning("%s: %s", row.piece_id, warning.text)
            meta = {"piece_id": row.piece_id, "composer": row.composer, "title": row.title, "split": row.split, "source": row.source}
            writers[row.split].add(meta, outcome.columns)
        for split_writer in writers.values():
            split_writer.flush()

    report = {
        "raw_dir": str(raw_dir),
        "scores_dir": None if scores_dir is None else str(scores_dir),
        "sustain": sustain,
        "files_listed": len(tasks),
        "files_read": len(tasks) - len(skipped),
        "files_skipped": len(skipped),
        **totals,
        "splits": split_counts,
        "files_listed_by_source": by_source,
        "skipped": skipped,  # piece_id -> reason
        "asap_rows_left_out": asap_left_out,
        "warnings": warned,  # piece_id -> what was wrong with it and worked around, or left out
    }
    write_json(out_dir / "report.json", report)
    log.info(
        "extract: %d notes from %d of %d files -> %s; %d files skipped, %d read with warnings, %d notes out of range dropped; report %s",
        report["notes_written"], report["files_read"], report["files_listed"],
        ", ".join(str(p) for p in out_paths.values()), report["files_skipped"], len(warned),
        report["notes_dropped_out_of_range"], out_dir / "report.json",
    )  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("raw_dir", type=Path, help="folder holding maestro-v3.0.0.csv and the MIDI files")
    parser.add_argument("out_dir", type=Path, help="folder for {train,validation,test}.parquet and report.json")
    parser.add_argument("--scores", type=Path, help="data/raw_scores/asap-dataset: also read its ASAP-only performances")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load(ExtractParams, "extract")
    try:  # a bad csv or metadata table: one line, no traceback
        extract_notes(args.raw_dir, args.out_dir, sustain=params.sustain, workers=params.workers, scores_dir=args.scores)
    except (CsvError, MetadataError) as err:
        raise SystemExit(f"extract: {err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
