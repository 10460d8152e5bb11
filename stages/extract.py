"""Extract stage: every MIDI file the MAESTRO csv lists -> one Parquet table of notes per split.

    python -m stages.extract data/raw/maestro-v3.0.0 data/notes

Writes `data/notes/{train,validation,test}.parquet` (columns and order in `NOTE_SCHEMA`, see the
contract in CONTRIBUTING.md) and `data/notes/report.json` (files read and skipped with reasons, each
kind of damage worked around and notes left out, counted, and each file's warnings). Files are read
by `stages/midi.py`, the reader `velocity predict` uses too, in tick time; ticks become float64
seconds from the file's own tempo map and resolution (symusic's own seconds are float32, whose steps
are already 6e-5 s at ten minutes).

Note semantics, the same for `velocity predict` (`piece_notes`), matching pretty_midi on intact
real files except where said:
- A note lasts from key press to key release; a velocity-0 note-on ends a note like a note-off.
- A zero-length note (press and release on one tick) is kept with duration 0; pretty_midi drops it.
- A note never released ends at its track's last event, with a warning; a file cut off mid-track
  keeps the notes before the cut, with a warning (the reader's policy, stages/midi.py).
- With `sustain=True` note ends follow the sustain pedal the way magenta note-seq's
  `apply_sustain_control_changes` does (see `apply_sustain`).
- The piano is every note on GM programs 0-7 off the drum channel, all tracks and channels merged
  into one instrument. Drum-channel notes and notes of other programs are ignored, counted, with a
  warning; a file without a piano note is skipped with a reason saying what it holds.
- Notes outside the 88 keys 21..108 are dropped and counted.
- `dstart` is the next note's start minus this note's start; the last note of a piece, which has no
  next note, gets its own duration instead (so no piece ends in a made-up gap).
- `pedal` is 1 when the sustain pedal (CC64 >= 64, any channel but the drums') is down at the note's
  onset tick (a pedal event on the onset tick counts), else 0; read whether or not `sustain` is on.
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

from model.config import ParamsError
from stages.io import atomic_path, write_json
from stages.midi import (
    DRUM_CHANNEL,
    FILES_BAD_CHUNK_LENGTH,
    FILES_BAD_EVENT,
    FILES_MISSING_TRACKS,
    FILES_TRUNCATED,
    FILES_TYPE_2,
    NOTES_CLOSED_AT_TRACK_END,
    MidiError,
    MidiFile,
    MidiWarning,
    read_midi,
    ticks_to_seconds,
    warning_counts,
)
from stages.params import load
from model.codec import PIANO_PITCHES

log = logging.getLogger(__name__)

CSV_NAME = "maestro-v3.0.0.csv"
CSV_COLUMNS = ["canonical_composer", "canonical_title", "split", "midi_filename"]
SPLITS = ("train", "validation", "test")
PIANO_PROGRAMS = range(0, 8)  # General MIDI pianos, 0-based: acoustic grand .. clavinet
PIANO_RULE = f"{PIANO_PROGRAMS.start}-{PIANO_PROGRAMS.stop - 1}"
SUSTAIN_DOWN_FROM = 64  # MAESTRO's pedal values are continuous; >= 64 reads as down (note-seq's rule)
NOTES_IGNORED_NON_PIANO_PROGRAM = "notes_ignored_non_piano_program"
# The report's counters of damage worked around and notes left out by the program rule.
WARNING_KINDS = (FILES_TRUNCATED, FILES_BAD_CHUNK_LENGTH, FILES_BAD_EVENT, FILES_MISSING_TRACKS, FILES_TYPE_2,
                 NOTES_CLOSED_AT_TRACK_END, NOTES_IGNORED_NON_PIANO_PROGRAM)  # fmt: skip

NOTE_COLUMNS = ["pitch", "start", "end", "duration", "dstart", "velocity", "pedal"]
NOTE_SCHEMA = pa.schema(
    [
        ("piece_id", pa.string()),
        ("composer", pa.string()),
        ("title", pa.string()),
        ("split", pa.string()),
        ("pitch", pa.int16()),
        ("start", pa.float64()),
        ("end", pa.float64()),
        ("duration", pa.float64()),
        ("dstart", pa.float64()),
        ("velocity", pa.int16()),
        ("pedal", pa.int8()),
    ]
)
ROW_GROUP_NOTES = 500_000  # notes buffered per split before a Parquet row group is written


class CsvError(ValueError):
    """The MAESTRO csv is missing, lacks a column, or names an unknown split or a file twice."""


@dataclass(frozen=True)
class ExtractParams:
    sustain: bool
    workers: int


# ---------------------------------------------------------------------------------------------
# One file


# Event kinds in the order note-seq processes them when they fall on the same time.
_PEDAL_DOWN, _PEDAL_UP, _NOTE_ON, _NOTE_OFF = 0, 1, 2, 3


def pedal_down_at(ticks: np.ndarray, pedal_ticks: np.ndarray, pedal_values: np.ndarray) -> np.ndarray:
    """1 where the sustain pedal's last event at or before each tick is down (>= 64), else 0."""
    last = np.searchsorted(pedal_ticks, ticks, side="right") - 1
    down = pedal_values[np.maximum(last, 0)] >= SUSTAIN_DOWN_FROM if len(pedal_ticks) else np.zeros(len(ticks), dtype=bool)
    return np.where(last >= 0, down, False).astype(np.int8)


def apply_sustain(
    start_ticks: np.ndarray,
    end_ticks: np.ndarray,
    pitch: np.ndarray,
    pedal_ticks: np.ndarray,
    pedal_values: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Note ends under the sustain pedal, as note-seq's `apply_sustain_control_changes` sets them.

    A pedal value >= 64 is down. A note released while the pedal is down sounds on until the pedal
    comes up, or until the same key is struck again while the pedal is down, whichever is first; a
    note still sounding when the events run out ends at the last event. Returns the new end ticks
    and a keep mask: of two notes of one key struck on the same tick under the pedal, the first is
    cut to zero length and dropped (note-seq does the same).
    """
    n_notes = len(start_ticks)
    times = np.concatenate([start_ticks, end_ticks, pedal_ticks]).astype(np.int64)
    kinds = np.concatenate(
        [
            np.full(n_notes, _NOTE_ON),
            np.full(n_notes, _NOTE_OFF),
            np.where(pedal_values >= SUSTAIN_DOWN_FROM, _PEDAL_DOWN, _PEDAL_UP),
        ]
    )
    ids = np.concatenate([np.arange(n_notes), np.arange(n_notes), np.arange(len(pedal_ticks))])
    order = np.lexsort((np.arange(len(times)), kinds, times))  # time, then kind, then input order

    new_end = np.asarray(end_ticks, dtype=np.int64).copy()
    keep = np.ones(n_notes, dtype=bool)
    pitches = np.asarray(pitch).tolist()
    starts = np.asarray(start_ticks).tolist()
    sounding: dict[int, list[int]] = {}  # pitch -> notes still sounding (held or sustained)
    released: set[int] = set()  # sounding notes whose key is up: only the pedal holds them
    pedal_down = False
    time = 0
    for time, kind, idx in zip(times[order].tolist(), kinds[order].tolist(), ids[order].tolist()):
        if kind == _PEDAL_DOWN:
            pedal_down = True
        elif kind == _PEDAL_UP:
            pedal_down = False
            for note in released:
                new_end[note] = time
                sounding[pitches[note]].remove(note)
            released.clear()
        elif kind == _NOTE_ON:
            notes = sounding.setdefault(pitches[idx], [])
            if pedal_down:  # striking a key again under the pedal ends its earlier notes
                for note in notes:
                    new_end[note] = time
                    released.discard(note)
                    if starts[note] == time:
                        keep[note] = False
                notes.clear()
            notes.append(idx)
        else:  # _NOTE_OFF
            notes = sounding[pitches[idx]]
            if idx in notes:  # not already ended by a strike of the same key
                if pedal_down:
                    released.add(idx)
                else:
                    notes.remove(idx)
    for notes in sounding.values():
        for note in notes:
            new_end[note] = time
    return new_end, keep


@dataclass
class PieceNotes:
    """One file's piece: its notes and what was left out of them."""

    # NOTE_COLUMNS, then `note`: each note's row in `midi.notes` (predict writes its velocity there).
    notes: pd.DataFrame
    midi: MidiFile
    dropped_out_of_range: int = 0
    dropped_sustain_duplicates: int = 0
    drum_notes_ignored: int = 0
    non_piano_notes_ignored: int = 0
    warnings: list[MidiWarning] = field(default_factory=list)  # the reader's, then the note rules'


def _timing(pitch: np.ndarray, start: np.ndarray, end: np.ndarray) -> dict[str, np.ndarray]:
    """pitch, start, end, duration, dstart of notes already sorted by start then pitch."""
    start = np.asarray(start, dtype=np.float64)
    end = np.asarray(end, dtype=np.float64)
    duration = end - start
    dstart = np.empty_like(start)
    dstart[:-1] = np.diff(start)
    dstart[-1:] = duration[-1:]  # the last note has no next start: use its own length
    pitch = np.asarray(pitch).astype(np.int16)
    return {"pitch": pitch, "start": start, "end": end, "duration": duration, "dstart": dstart}


def add_timing(notes: pd.DataFrame) -> pd.DataFrame:
    """Sort `notes` (pitch, start, end in seconds, velocity optional) by start then pitch and add
    `duration` and `dstart`; the last note's dstart is its own duration.

    Returns a new frame with a fresh index: pitch, start, end, duration, dstart[, velocity], then any
    other columns as they were (e.g. an original note number to map results back).
    """
    missing = [c for c in ("pitch", "start", "end") if c not in notes]
    if missing:
        raise ValueError(f"add_timing: notes lack column(s) {missing}")
    order = np.lexsort((notes["pitch"].to_numpy(), notes["start"].to_numpy()))  # stable on ties
    out = notes.iloc[order].reset_index(drop=True)
    columns = _timing(out["pitch"].to_numpy(), out["start"].to_numpy(), out["end"].to_numpy())
    if "velocity" in out:
        columns["velocity"] = out["velocity"].to_numpy().astype(np.int16)
    for name in out.columns:
        if name not in columns:
            columns[name] = out[name]
    return pd.DataFrame(columns)


def _unusable(midi: MidiFile, problem: str) -> MidiError:
    """One line naming the file, the problem and any damage the reader met (it may be the cause)."""
    damage = "; ".join(w.text for w in midi.warnings if w.kind.startswith("files_"))
    return MidiError(f"{midi.path}: {problem}" + (f" ({damage})" if damage else ""))


def piece_notes(midi: MidiFile, sustain: bool = False) -> PieceNotes:
    """The piece in `midi`: its notes by the rules of the module doc, with the counts and warnings of
    what was left out. Raises MidiError naming the file when no note is usable."""
    notes = midi.notes
    warnings = list(midi.warnings)
    drum = notes["channel"].to_numpy() == DRUM_CHANNEL
    program = notes["program"].to_numpy()
    foreign = ~drum & ~np.isin(program, PIANO_PROGRAMS)
    n_drum, n_foreign = int(drum.sum()), int(foreign.sum())
    if n_drum:
        warnings.append(MidiWarning("drum_notes_ignored", n_drum, f"{n_drum} drum-channel note(s) ignored"))
    programs = ", ".join(f"{count} of program {p}" for p, count in zip(*np.unique(program[foreign], return_counts=True)))
    if n_foreign:
        warnings.append(MidiWarning(
            NOTES_IGNORED_NON_PIANO_PROGRAM, n_foreign,
            f"{n_foreign} note(s) of GM programs other than the pianos ({PIANO_RULE}) ignored: {programs}",
        ))  # fmt: skip
    rows = np.flatnonzero(~drum & ~foreign)
    if len(rows) == 0:
        if not len(notes):
            raise _unusable(midi, "no notes")
        held = [f"{n_drum} on the drum channel"] * bool(n_drum) + [f"{n_foreign} of non-piano programs ({programs})"] * bool(n_foreign)
        raise _unusable(midi, f"no piano notes (GM programs {PIANO_RULE}, off the drum channel), only {' and '.join(held)}")

    start = notes["start_tick"].to_numpy()[rows]
    end = notes["end_tick"].to_numpy()[rows]
    pitch = notes["pitch"].to_numpy()[rows].astype(np.int16)
    velocity = notes["velocity"].to_numpy()[rows].astype(np.int16)
    pedal = pedal_down_at(start, midi.pedal_ticks, midi.pedal_values)

    dropped_duplicates = 0
    if sustain:
        end, keep = apply_sustain(start, end, pitch, midi.pedal_ticks, midi.pedal_values)
        dropped_duplicates = int((~keep).sum())
        start, end, pitch, velocity, pedal, rows = start[keep], end[keep], pitch[keep], velocity[keep], pedal[keep], rows[keep]

    in_range = (pitch >= PIANO_PITCHES.start) & (pitch < PIANO_PITCHES.stop)
    dropped_out_of_range = int((~in_range).sum())
    if not in_range.any():
        raise _unusable(midi, f"no notes in the piano range {PIANO_PITCHES.start}..{PIANO_PITCHES.stop - 1} ({dropped_out_of_range} outside it)")
    if dropped_out_of_range:
        warnings.append(MidiWarning("notes_dropped_out_of_range", dropped_out_of_range,
                                    f"{dropped_out_of_range} note(s) outside the piano's {PIANO_PITCHES.start}..{PIANO_PITCHES.stop - 1} left out"))  # fmt: skip
    start, end, pitch, velocity, pedal, rows = start[in_range], end[in_range], pitch[in_range], velocity[in_range], pedal[in_range], rows[in_range]

    # Sort in ticks (exact) with every column as a key, so the order never depends on track order.
    # Tick order is second order: ticks_to_seconds is increasing. Then what add_timing would add.
    order = np.lexsort((velocity, end, pitch, start))
    seconds = ticks_to_seconds(midi.tempo_map, np.concatenate([start[order], end[order]]))
    n_kept = len(order)
    columns = _timing(pitch[order], seconds[:n_kept], seconds[n_kept:])
    columns["velocity"] = velocity[order]
    columns["pedal"] = pedal[order]
    columns["note"] = rows[order]
    return PieceNotes(pd.DataFrame(columns), midi, dropped_out_of_range, dropped_duplicates, n_drum, n_foreign, warnings)


def read_piece(path: Path, sustain: bool = False) -> PieceNotes:
    """The piece in one MIDI file (see `piece_notes`); raises MidiError naming the file."""
    return piece_notes(read_midi(path), sustain)


def read_notes(path: Path, sustain: bool = False) -> pd.DataFrame:
    """Notes of one MIDI file: pitch, start, end, duration, dstart, velocity, pedal (see the module doc).

    Raises MidiError naming the file and the problem.
    """
    return read_piece(path, sustain).notes[NOTE_COLUMNS]


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
            for key in ("piece_id", "composer", "title", "split")
        }
        columns.update({name: np.concatenate([c[name] for _, c in self.pieces]) for name in NOTE_COLUMNS})
        self.writer.write_table(pa.Table.from_pydict(columns, schema=NOTE_SCHEMA))
        self.pieces, self.buffered_notes = [], 0


def extract_notes(raw_dir: Path, out_dir: Path, sustain: bool, workers: int) -> dict[str, Any]:
    """Read every MIDI file `raw_dir`'s MAESTRO csv lists into `out_dir/{split}.parquet`.

    Files are read by `workers` processes (0 = all cores); results keep csv order. A bad file is
    skipped and its reason recorded. Writes and returns the report (`out_dir/report.json`).
    """
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    csv_path = raw_dir / CSV_NAME
    table = read_csv(csv_path)
    n_workers = resolve_workers(workers)
    tasks = [(raw_dir / name, sustain) for name in table["midi_filename"]]
    log.info("extract: %d files listed in %s, reading with %d process(es)", len(tasks), csv_path, n_workers)

    split_counts = {s: {"files_listed": 0, "files_read": 0, "files_skipped": 0, "notes": 0} for s in SPLITS}
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
            if outcome.columns is None:
                counts["files_skipped"] += 1
                skipped[row.midi_filename] = str(outcome.reason)
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
                warned[row.midi_filename] = [w.text for w in outcome.warnings]
                for warning in outcome.warnings:
                    log.warning("%s: %s", row.midi_filename, warning.text)
            meta = {"piece_id": row.midi_filename, "composer": row.canonical_composer,
                    "title": row.canonical_title, "split": row.split}  # fmt: skip
            writers[row.split].add(meta, outcome.columns)
        for split_writer in writers.values():
            split_writer.flush()

    report = {
        "raw_dir": str(raw_dir),
        "sustain": sustain,
        "files_listed": len(tasks),
        "files_read": len(tasks) - len(skipped),
        "files_skipped": len(skipped),
        **totals,
        "splits": split_counts,
        "skipped": skipped,  # midi_filename -> reason
        "warnings": warned,  # midi_filename -> what was wrong with it and worked around, or left out
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    params = load(ExtractParams, "extract")
    extract_notes(args.raw_dir, args.out_dir, sustain=params.sustain, workers=params.workers)
    return 0


if __name__ == "__main__":
    sys.exit(main())
