"""Benchmark the extract stage on the full shared MAESTRO archive.

    python bench/extract.py [--zip PATH] [--workers N]

Prints notes per second of extract's reader (velocity/model/midi.py in ticks + float64 seconds, one process)
against pretty_midi reading the same files, then the wall time of the whole stage function
(`extract_notes`, all cores unless --workers says otherwise), without and with sustain.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import pretty_midi
import symusic

from velocity.model.notes import read_piece
from velocity.stages.extract import CSV_NAME, extract_notes, read_csv, resolve_workers

FULL_ZIP = Path(__file__).resolve().parents[2] / "shared" / "data" / "maestro-v3.0.0-asap-midi.zip"


def time_symusic_parse(paths: list[Path]) -> tuple[float, int]:
    """symusic parsing alone (no seconds, no table): a C++ reference beside extract's Python reader."""
    t0 = time.perf_counter()
    n_notes = 0
    for path in paths:
        score = symusic.Score(str(path), ttype="tick")
        n_notes += sum(len(track.notes) for track in score.tracks)
    return time.perf_counter() - t0, n_notes


def time_extract_reader(paths: list[Path]) -> tuple[float, int]:
    """extract's reader: velocity/model/midi.py in ticks, float64 seconds from the tempo map, sorted table."""
    t0 = time.perf_counter()
    n_notes = sum(len(read_piece(path).notes) for path in paths)
    return time.perf_counter() - t0, n_notes


def time_pretty_midi(paths: list[Path]) -> tuple[float, int]:
    """pretty_midi reading the same files, with the notes gathered into arrays."""
    t0 = time.perf_counter()
    n_notes = 0
    for path in paths:
        pm = pretty_midi.PrettyMIDI(str(path))
        notes = [n for inst in pm.instruments if not inst.is_drum for n in inst.notes]
        start = np.array([n.start for n in notes])
        n_notes += len(start)
    return time.perf_counter() - t0, n_notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zip", type=Path, default=FULL_ZIP, help="MAESTRO-layout archive (default: the full one)")
    parser.add_argument("--workers", type=int, default=0, help="processes for the stage run (0 = all cores)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as tmp:
        with zipfile.ZipFile(args.zip) as archive:
            archive.extractall(tmp)
        raw = Path(tmp) / "maestro-v3.0.0"
        paths = [raw / name for name in read_csv(raw / CSV_NAME)["midi_filename"]]
        print(f"archive: {args.zip.name}, {len(paths)} files")

        print("\none process, reading every file (notes per second):")
        rows = [("symusic parse only", *time_symusic_parse(paths)),
                ("extract reader (velocity/model/midi.py + seconds)", *time_extract_reader(paths)),
                ("pretty_midi", *time_pretty_midi(paths))]  # fmt: skip
        for name, seconds, n_notes in rows:
            print(f"  {name:44s} {n_notes:>10,d} notes {seconds:8.2f} s {n_notes / seconds:>12,.0f} notes/s")
        print(f"  extract reader vs pretty_midi: {rows[2][1] / rows[1][1]:.1f}x faster")

        workers = resolve_workers(args.workers)
        print(f"\nwhole stage, extract_notes with {workers} worker process(es):")
        for sustain in (False, True):
            t0 = time.perf_counter()
            report = extract_notes(raw, Path(tmp) / f"notes_{sustain}", sustain=sustain, workers=args.workers)
            seconds = time.perf_counter() - t0
            print(
                f"  sustain={sustain!s:5s} {seconds:6.2f} s wall, {report['notes_written']:,d} notes from "
                f"{report['files_read']} files ({report['files_skipped']} skipped), "
                f"{report['notes_written'] / seconds:,.0f} notes/s"
            )


if __name__ == "__main__":
    main()
