"""Stage `align`: pair each score note with the pianist's note, so a model can learn scores.

    python -m velocity.stages.align data/raw_scores/asap-dataset data/notes data/aligned

Reads ASAP's `metadata.csv` (one row per performance: its score, both beat annotation files and the
MAESTRO recording it was cut from) and the performances' notes as the extract stage wrote them.
Writes `data/aligned/{train,validation,test}.parquet`: for every performance, every note of its
score in score order (the notes table's columns in score time at the notated tempo, the score
columns of velocity/model/score.py) with `velocity` the pianist's velocity of the paired note, -1 where none
was paired, plus `score_id` (the score's folder), `score_note` (the note's row in its score) and
`performance_start`. And `report.json`: match rates per performance and overall, and every row left
out with its reason.

How a pair is aligned:
- the i-th beat of the score's annotations is the i-th beat of the performance's, so score time
  maps to performance time through the paired beats: piecewise linear between them (made monotone),
  linear beyond the ends at the tempo of the outer beats. Performances whose beat count differs
  from their score's (a repeat played or left out) cannot be paired line by line: skipped, reported;
- where a pianist skipped a repeat, ASAP squeezes the skipped beats into a few milliseconds: a beat
  interval shorter than `align.skipped_beat` seconds in the performance is left out, and so are
  the score notes in it;
- each score note pairs with the performance note of the same pitch nearest its mapped onset,
  within `align.tolerance` seconds, one to one: all candidate pairs are taken nearest first.

A row's performance and split are the notes table's: a row with a MAESTRO recording is the piece
named through `maestro_midi_performance` (`<year>/<name>__<title>.midi` when one recording supplies
two performances, else `<year>/<name>.midi`, velocity/datasets/asap.py), an ASAP-only row the piece named by
its `midi_performance`, which the extract stage read with its piece's split (velocity/datasets/asap.py's
rule). A row whose performance is not in the notes (not in `data.source`, or skipped by extract)
is left out and counted, never guessed. The report counts the rows by `source` (`maestro`,
`asap`) and split.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from velocity.datasets.asap import MetadataError, is_asap_only, maestro_name, read_metadata
from velocity.datasets.maestro import SPLITS
from velocity.model.midi import MidiError, read_midi
from velocity.model.notes import piece_notes
from velocity.model.score import SCORE_COLUMNS, score_table
from velocity.model.timing import TIMING_TARGETS, group_pace, onset_groups, pedal_down, sustain_events, timing_targets
from velocity import params as params_lib
from velocity.io import atomic_path, write_json

log = logging.getLogger(__name__)

ALIGNED_COLUMNS = [
    "piece_id", "score_id", "composer", "title", "split", "source", "score_note",
    "pitch", "start", "end", "duration", "dstart", "velocity", "pedal", *SCORE_COLUMNS, "performance_start", "performance_end",
    *TIMING_TARGETS,
]  # fmt: skip
UNMATCHED = -1  # `velocity` of a score note no performance note was paired with
MAX_LOG_PACE = float(np.log(4.0))  # a local tempo 4 times the notated or a quarter of it, at most
MAX_DEVIATION_S = 0.5  # seconds off the clock, at most
MAX_ABS_ARTICULATION = float(np.log(100.0))  # a performed length 100 times the notated, or a hundredth, at most


@dataclass(frozen=True)
class AlignParams:
    tolerance: float  # seconds between a score note's mapped onset and its performance note, at most
    skipped_beat: float  # a performance beat interval shorter than this (seconds) was skipped

    def __post_init__(self) -> None:
        if not self.tolerance > 0:
            raise params_lib.ParamsError(f"align.tolerance must be positive seconds, got {self.tolerance}")
        if not self.skipped_beat >= 0:
            raise params_lib.ParamsError(f"align.skipped_beat must be >= 0 seconds, got {self.skipped_beat}")


class AlignError(ValueError):
    """A metadata table or annotation file that cannot be read; the message names the file."""


# ---------------------------------------------------------------------------------------------
# One score/performance pair


def read_beats(path: Path) -> np.ndarray:
    """Beat times (seconds) of an ASAP annotation file: `time<TAB>time<TAB>label` per line."""
    try:
        lines = [line.split("\t") for line in path.read_text().splitlines() if line.strip()]
        return np.array([float(fields[0]) for fields in lines], dtype=np.float64)
    except FileNotFoundError:
        raise AlignError(f"{path}: no such annotation file") from None
    except (ValueError, IndexError) as err:
        raise AlignError(f"{path}: not an ASAP annotation file ({err})") from None


@dataclass(frozen=True)
class BeatMap:
    """Score time -> performance time through paired beats."""

    score: np.ndarray  # beat times in the score, increasing
    performance: np.ndarray  # the same beats in the performance, made non-decreasing
    skipped: np.ndarray  # bool per interval (len - 1): the pianist skipped it

    def __call__(self, score_time: np.ndarray) -> np.ndarray:
        """Piecewise linear between the beats, linear beyond the ends at the outer beats' tempo."""
        s, p = self.score, self.performance
        t = np.asarray(score_time, dtype=np.float64)
        mapped = np.interp(t, s, p)
        if len(s) >= 2:
            k = min(4, len(s) - 1)  # a few beats of tempo: one beat may be off
            mapped = np.where(t < s[0], p[0] + (t - s[0]) * (p[k] - p[0]) / (s[k] - s[0]), mapped)
            mapped = np.where(t > s[-1], p[-1] + (t - s[-1]) * (p[-1] - p[-1 - k]) / (s[-1] - s[-1 - k]), mapped)
        return mapped

    def in_skipped(self, score_time: np.ndarray) -> np.ndarray:
        """True where a score time falls in a beat interval the pianist skipped."""
        interval = np.searchsorted(self.score, score_time, side="right") - 1
        inside = (interval >= 0) & (interval < len(self.skipped))
        skipped = np.append(self.skipped, False)  # beyond the last beat: never skipped
        return inside & skipped[np.where(inside, interval, len(self.skipped))]


def beat_map(score_beats: np.ndarray, performance_beats: np.ndarray, skipped_beat: float) -> BeatMap:
    """The map through equally many paired beats (the caller checks the counts)."""
    order = np.argsort(score_beats, kind="stable")
    score = np.asarray(score_beats, dtype=np.float64)[order]
    performance = np.maximum.accumulate(np.asarray(performance_beats, dtype=np.float64)[order])
    skipped = np.diff(performance) < skipped_beat
    return BeatMap(score, performance, skipped)


def match_notes(score_pitch: np.ndarray, score_onset: np.ndarray, perf_pitch: np.ndarray, perf_onset: np.ndarray,
                tolerance: float) -> np.ndarray:  # fmt: skip
    """For each score note, the index of its performance note (-1 for none): same pitch, onsets at
    most `tolerance` apart, one to one, the nearest candidate pairs taken first."""
    match = np.full(len(score_pitch), -1, dtype=np.int64)
    if len(score_pitch) == 0 or len(perf_pitch) == 0:
        return match
    # Performance notes sorted by (pitch, onset); a score note's candidates are one contiguous run.
    order = np.lexsort((perf_onset, perf_pitch))
    key_pitch, key_onset = perf_pitch[order].astype(np.float64), perf_onset[order]
    span = float(max(key_onset.max(), score_onset.max()) - min(key_onset.min(), score_onset.min())) + 4 * tolerance + 1.0
    keys = key_pitch * span + key_onset  # pitch-major: one increasing key
    lo = np.searchsorted(keys, score_pitch * span + score_onset - tolerance, side="left")
    hi = np.searchsorted(keys, score_pitch * span + score_onset + tolerance, side="right")
    counts = hi - lo
    score_index = np.repeat(np.arange(len(score_pitch)), counts)
    candidate = np.repeat(lo - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
    distance = np.abs(key_onset[candidate] - score_onset[score_index])
    taken = np.zeros(len(perf_pitch), dtype=bool)
    nearest_first = np.argsort(distance, kind="stable")
    for s, c in zip(score_index[nearest_first].tolist(), candidate[nearest_first].tolist()):
        if match[s] < 0 and not taken[c]:
            match[s] = order[c]
            taken[c] = True
    return match


def align_pair(score: pd.DataFrame, performance: pd.DataFrame, beats: BeatMap, tolerance: float) -> tuple[np.ndarray, dict[str, int]]:
    """Index into `performance` of each `score` note's pair (-1 for none), and the counts."""
    mapped = beats(score["start"].to_numpy())
    playable = ~beats.in_skipped(score["start"].to_numpy())
    match = np.full(len(score), -1, dtype=np.int64)
    rows = np.flatnonzero(playable)
    match[rows] = match_notes(score["pitch"].to_numpy()[rows], mapped[rows], performance["pitch"].to_numpy(),
                              performance["start"].to_numpy(), tolerance)  # fmt: skip
    counts = {"score_notes": len(score), "skipped_by_pianist": int((~playable).sum()), "matched": int((match >= 0).sum()),
              "performance_notes": len(performance)}  # fmt: skip
    return match, counts


# ---------------------------------------------------------------------------------------------
# The whole table


def performance_id(row: Any, known: set[str]) -> str | None:
    """The notes table's piece of a metadata row (see the module doc), None when it has none."""
    if is_asap_only(row):
        return row.midi_performance if row.midi_performance in known else None
    return maestro_name(row, known)


def note_targets(table: pd.DataFrame, pedal_times: np.ndarray, pedal_values: np.ndarray) -> dict[str, np.ndarray]:
    """The timing targets (velocity/model/timing.py) of one performance's score notes, NaN where the
    note was not played (but `log_pace`, which the clock defines everywhere): `log_pace` (log
    performance seconds per score second from the note's onset group to the next, on the
    performance's clock), `onset_deviation` (seconds off the clock),
    `articulation`, and `pedal_down` (1 when the sustain pedal is down halfway to the next onset
    group, on the clock; every note has it)."""
    start, end = table["start"].to_numpy(), table["end"].to_numpy()
    played = table["velocity"].to_numpy() >= 0
    if not played.any():
        nan = np.full(len(table), np.nan)
        return {"log_pace": nan, "onset_deviation": nan, "articulation": nan, "pedal_down": np.zeros(len(table), dtype=np.int8)}
    group = onset_groups(start)
    targets = timing_targets(start, end, table["performance_start"].to_numpy(), table["performance_end"].to_numpy(), group)
    pace = group_pace(targets.clock, start, group)
    articulation = targets.articulation
    return {
        # The clock runs through unplayed notes too. A skipped repeat squeezes its beats into
        # milliseconds (see the module doc): paces and lengths beyond a pianist's reach are none.
        "log_pace": np.where(np.abs(pace) <= MAX_LOG_PACE, pace, np.nan),
        "onset_deviation": np.where(played & (np.abs(targets.deviation) <= MAX_DEVIATION_S), targets.deviation, np.nan),
        "articulation": np.where(played & (np.abs(articulation) <= MAX_ABS_ARTICULATION), articulation, np.nan),
        "pedal_down": pedal_down(pedal_times, pedal_values, targets.clock, pedal_moments(start, group)).astype(np.int8),
    }


def pedal_moments(start: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Score time halfway from each note's onset group to the next (the last group: 0.25 s on)."""
    onsets = pd.Series(start).groupby(group).min().to_numpy()
    following = np.append(onsets[1:], onsets[-1] + 0.5)
    return ((onsets + following) / 2)[group]


def performance_pedal(piece_id: str, row: Any, scores_dir: Path, performances_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """The sustain pedal (CC64) events of a row's performance MIDI, seconds and values; none when
    the file cannot be found or read (`performances_dir`: the MAESTRO folder)."""
    path = scores_dir / row.midi_performance if is_asap_only(row) else (performances_dir / piece_id if performances_dir else None)
    if path is None or not path.is_file():
        return np.zeros(0), np.zeros(0, dtype=np.int16)
    try:
        return sustain_events(path)
    except MidiError:
        return np.zeros(0), np.zeros(0, dtype=np.int16)


def align(scores_dir: Path, notes_dir: Path, out_dir: Path, params: AlignParams, performances_dir: Path | None = None) -> dict[str, Any]:
    """Align every metadata row; write the per-split tables, `pedal.parquet` (the performances'
    sustain pedal events: piece_id, time in seconds, value) and return the report."""
    try:
        metadata = read_metadata(scores_dir / "metadata.csv")
    except MetadataError as err:
        raise AlignError(str(err)) from None
    for split in SPLITS:
        if not (notes_dir / f"{split}.parquet").is_file():
            raise AlignError(f"{notes_dir / f'{split}.parquet'}: no such file (run the extract stage)")
    notes = {split: pd.read_parquet(notes_dir / f"{split}.parquet") for split in SPLITS}
    by_piece = {pid: (split, group) for split, table in notes.items() for pid, group in table.groupby("piece_id", sort=False)}
    known = set(by_piece)
    scores: dict[str, pd.DataFrame | str] = {}  # folder -> its score table, or why it cannot be read
    parts: dict[str, list[pd.DataFrame]] = {split: [] for split in SPLITS}
    performances, skipped, pedal_parts = [], [], []
    for row in tqdm(list(metadata.itertuples(index=False)), desc="align", unit="performance"):
        piece_id = performance_id(row, known)
        where = row.performance_annotations
        if piece_id is None:
            what = f"its performance {row.midi_performance!r}" if is_asap_only(row) else f"its MAESTRO performance {row.maestro_midi_performance!r}"
            skipped.append({"performance": where, "reason": f"{what} is not in the notes (data.source, or left out by extract: data/notes/report.json)"})
            continue
        if row.midi_score not in scores:
            try:
                scores[row.midi_score] = score_table(piece_notes(read_midi(scores_dir / row.midi_score)))
            except MidiError as err:
                scores[row.midi_score] = str(err)
        score = scores[row.midi_score]
        if isinstance(score, str):
            skipped.append({"performance": where, "reason": score})
            continue
        try:
            score_beats = read_beats(scores_dir / row.midi_score_annotations)
            perf_beats = read_beats(scores_dir / row.performance_annotations)
        except AlignError as err:
            skipped.append({"performance": where, "reason": str(err)})
            continue
        if len(score_beats) != len(perf_beats) or len(score_beats) < 2:
            skipped.append({"performance": where, "reason": f"{len(perf_beats)} beats annotated in the performance, {len(score_beats)} in the score: cannot pair them"})
            continue
        split, performance = by_piece[piece_id]
        performance = performance.reset_index(drop=True)
        match, counts = align_pair(score, performance, beat_map(score_beats, perf_beats, params.skipped_beat), params.tolerance)
        paired = match >= 0
        table = score.drop(columns="note").reset_index(drop=True)
        table["velocity"] = np.where(paired, performance["velocity"].to_numpy()[np.maximum(match, 0)], UNMATCHED).astype(np.int16)
        table["performance_start"] = np.where(paired, performance["start"].to_numpy()[np.maximum(match, 0)], np.nan)
        table["performance_end"] = np.where(paired, performance["end"].to_numpy()[np.maximum(match, 0)], np.nan)
        pedal_times, pedal_values = performance_pedal(piece_id, row, scores_dir, performances_dir)
        table = table.assign(**note_targets(table, pedal_times, pedal_values))
        pedal_parts.append(pd.DataFrame({"piece_id": piece_id, "time": pedal_times, "value": pedal_values}))
        table["score_note"] = np.arange(len(table), dtype=np.int32)
        table["pedal"] = table["pedal"].astype(np.int8)
        table = table.assign(piece_id=piece_id, score_id=row.folder, composer=performance["composer"].iloc[0],
                             title=performance["title"].iloc[0], split=split, source=performance["source"].iloc[0])  # fmt: skip
        parts[split].append(table[ALIGNED_COLUMNS])
        performances.append({"piece_id": piece_id, "score": row.midi_score, "split": split, "source": table["source"].iloc[0], **counts,
                             "match_rate": round(counts["matched"] / max(1, counts["score_notes"]), 4)})  # fmt: skip

    out_dir.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        table = pd.concat(parts[split], ignore_index=True) if parts[split] else _empty()
        with atomic_path(out_dir / f"{split}.parquet") as tmp:
            pq.write_table(pa.Table.from_pandas(table, preserve_index=False), tmp)
    pedal = pd.concat(pedal_parts, ignore_index=True) if pedal_parts else pd.DataFrame({"piece_id": [], "time": [], "value": []})
    with atomic_path(out_dir / "pedal.parquet") as tmp:
        pq.write_table(pa.Table.from_pandas(pedal.astype({"piece_id": str, "time": np.float64, "value": np.int16}), preserve_index=False), tmp)
    report: dict[str, Any] = {"rows": len(metadata), "aligned": len(performances), "skipped": len(skipped)}
    for split in (*SPLITS, "all"):
        chosen = [p for p in performances if split in ("all", p["split"])]
        score_notes = sum(p["score_notes"] for p in chosen)
        matched = sum(p["matched"] for p in chosen)
        report[split] = {"performances": len(chosen), "score_notes": score_notes, "matched": matched,
                         "match_rate": round(matched / max(1, score_notes), 4)}  # fmt: skip
    report["by_source"] = {source: {split: sum(p["source"] == source and p["split"] == split for p in performances) for split in SPLITS}
                           for source in sorted({p["source"] for p in performances})}  # fmt: skip
    report["performances"] = performances
    report["skipped_rows"] = skipped
    return report


def _empty() -> pd.DataFrame:
    """An empty split with the aligned table's columns and types."""
    types = {"piece_id": str, "score_id": str, "composer": str, "title": str, "split": str, "source": str, "score_note": np.int32, "pedal_down": np.int8,
             "pitch": np.int16, "velocity": np.int16, "pedal": np.int8, "notated_velocity": np.int16}  # fmt: skip
    return pd.DataFrame({c: pd.Series(dtype=types.get(c, np.float64)) for c in ALIGNED_COLUMNS})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores_dir", type=Path, help="data/raw_scores/asap-dataset")
    parser.add_argument("notes_dir", type=Path, help="data/notes")
    parser.add_argument("out_dir", type=Path, help="data/aligned")
    parser.add_argument("--performances", type=Path, help="data/raw/maestro-v3.0.0: the MAESTRO files, read for their sustain pedal")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    try:  # bad params or inputs: one line, no traceback
        params = params_lib.load(AlignParams, "align")
        report = align(args.scores_dir, args.notes_dir, args.out_dir, params, args.performances)
    except (AlignError, params_lib.ParamsError) as err:
        raise SystemExit(f"align: {err}") from None
    write_json(args.out_dir / "report.json", report)
    for reason in report["skipped_rows"]:
        log.warning("skipped %s: %s", reason["performance"], reason["reason"])
    for split in SPLITS:
        r = report[split]
        log.info("%s: %d performances, %d of %d score notes paired (%.1f%%)", split, r["performances"], r["matched"], r["score_notes"], 100 * r["match_rate"])
    log.info("wrote %s (%d performances aligned, %d rows skipped; report.json)", args.out_dir, report["aligned"], report["skipped"])


if __name__ == "__main__":
    main()
