"""`velocity predict IN... -o OUT`: give every piano note of MIDI files the model's velocity.

The command-line front of velocity/pipeline/humanize.py, which says how a file is read, which
model reads it (`--input`, `--model`, `--score-model`), and how `--strength`, `--loudness` and
`--dynamics` shape the new velocities. Only the velocity bytes of the piano notes change.

Several files, or folders (every *.mid / *.midi inside, recursively, the layout mirrored), go to an
output folder with one model load; a file that fails is reported and the others still processed.

`--audio` renders each written file with FluidSynth (velocity/pipeline/audio.py).
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from velocity.model.decodings import DEFAULT_BATCH_WINDOWS, DEFAULT_DECODING, OFFERED, STEPWISE_BATCH_WINDOWS
from velocity.pipeline.humanize import (
    DEFAULT_MODEL, DEFAULT_SCORE_MODEL, DEFAULT_TIMING_MODEL, INPUT_KINDS, PLOT_NOTES, Controls, Models, PredictError, PredictReport,
    check_control, predict_file,
)  # fmt: skip
from velocity.pipeline.perform import PerformControls

log = logging.getLogger(__name__)

MIDI_SUFFIXES = (".mid", ".midi")


def _number(name: str):
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} must be a number, got {text}") from None
        try:
            return check_control(name, value)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return parse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs", type=Path, nargs="+", metavar="IN",
        help="MIDI file(s) or folder(s); a folder means every *.mid and *.midi inside it, recursively",
    )  # fmt: skip
    parser.add_argument(
        "-o", "--output", type=Path, required=True, metavar="OUT",
        help="for one input file: the MIDI file to write; else a folder (created if needed), each input "
        "file written under its name and each input folder's files under their path inside it",
    )  # fmt: skip
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"model for performances (default: {DEFAULT_MODEL})")
    parser.add_argument("--score-model", type=Path, default=DEFAULT_SCORE_MODEL, help=f"model for scores (default: {DEFAULT_SCORE_MODEL})")
    parser.add_argument(
        "--input", choices=INPUT_KINDS, default="auto",
        help="auto (default): a file with its onsets on a grid of its beats and chords exactly together is a score "
        "(a notation export, a quantized part), anything else a performance; score or performance: read it so",
    )  # fmt: skip
    parser.add_argument(
        "--strength", type=_number("strength"), default=1.0, metavar="0..1",
        help="1: the model's velocities (default); 0: the original ones; in between: a blend",
    )  # fmt: skip
    parser.add_argument(
        "--loudness", type=_number("loudness"), default=None, metavar="1..127",
        help="the mean velocity of each piece's prediction (default: the model's own); applied before --strength",
    )  # fmt: skip
    parser.add_argument(
        "--dynamics", type=_number("dynamics"), default=1.0, metavar="D",
        help="scale each predicted velocity's distance from the piece's mean by D: 1 as predicted (default), "
        "0 flat, 1.5 more contrast; applied before --strength",
    )  # fmt: skip
    parser.add_argument(
        "--decoding", choices=OFFERED, default=DEFAULT_DECODING,
        help="pianist (default): the median of each note's velocity distribution averaged over every window "
        "holding it (the score model: blended with its tree), stretched to a pianist's range of dynamics as "
        "calibrated on validation; averaged: the networks alone, unstretched (least absolute error, flatter); "
        "notes-only: the median from the window centred nearest the note; median: medians fed back note by "
        "note; greedy: the likeliest velocity fed back (the seed's)",
    )  # fmt: skip
    parser.add_argument("--batch-windows", type=int, default=None, help=f"windows decoded at once (default: {DEFAULT_BATCH_WINDOWS} "
                        f"for pianist and averaged, {STEPWISE_BATCH_WINDOWS} for the others)")  # fmt: skip
    parser.add_argument(
        "--perform", action="store_true",
        help="a score is also played like a pianist: tempo, chord spread, articulation and sustain pedal from the timing "
        "model (--timing-model); a performance keeps its pianist's timing",
    )  # fmt: skip
    parser.add_argument("--timing-model", type=Path, default=DEFAULT_TIMING_MODEL, help=f"with --perform (default: {DEFAULT_TIMING_MODEL})")
    parser.add_argument(
        "--timing", type=_number("timing"), default=1.0, metavar="0..2",
        help="with --perform: scale every timing deviation from the notation: 0 as written, 1 the model's (default), up to 2",
    )  # fmt: skip
    parser.add_argument(
        "--tempo", type=_number("tempo"), default=None, metavar="QPM",
        help="with --perform: play at QPM quarter notes a minute on average, the model's tempo curve around it "
        "(default: the model's own tempo, read from the score's; a score at 120 throughout, most often a notation default, warns)",
    )  # fmt: skip
    parser.add_argument("--no-pedal", action="store_true", help="with --perform: no sustain pedal rendered (the file's own kept)")
    parser.add_argument(
        "--tempo-map", action="store_true",
        help="with --perform: the tempo goes into the file's tempo map, so in a DAW the notes stay on their bars and beats "
        "(only the chords' spread and the articulation leave the grid)",
    )  # fmt: skip
    parser.add_argument(
        "--plot", type=Path, default=None, metavar="PNG",
        help=f"also draw the original and predicted piano rolls (the evaluate stage's figure, the first {PLOT_NOTES} "
        "notes): a PNG file for one input file, else a folder of PNGs laid out like the output",
    )  # fmt: skip
    parser.add_argument(
        "--audio", type=Path, default=None, metavar="WAV",
        help="also render the humanized file to audio with FluidSynth and a General MIDI soundfont (.wav, or .flac / .ogg): "
        "a file for one input file, else a folder of WAVs laid out like the output",
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Which files go where


@dataclass(frozen=True)
class Job:
    source: Path
    target: Path
    plot: Path | None = None
    audio: Path | None = None


def plan_jobs(inputs: list[Path], output: Path, plot: Path | None = None, audio: Path | None = None) -> list[Job]:
    """Input and output paths: one file to one file, else everything into the folder `output`.

    Raises PredictError when two inputs would be written to one output path.
    """
    one_file = len(inputs) == 1 and not inputs[0].is_dir() and not output.is_dir() and not str(output).endswith(os.sep)
    if one_file:
        return [Job(inputs[0], output, plot, audio)]
    jobs = []
    for item in inputs:
        if item.is_dir():
            inside = output.resolve()
            files = sorted(
                path for path in item.rglob("*")
                if path.suffix.lower() in MIDI_SUFFIXES and path.is_file() and inside not in path.resolve().parents
            )  # fmt: skip  (files already written into an output folder inside the input are not inputs)
            relative = [path.relative_to(item) for path in files]
        else:
            files, relative = [item], [Path(item.name)]
        jobs += [
            Job(path, output / rel, plot / rel.with_suffix(".png") if plot else None, audio / rel.with_suffix(".wav") if audio else None)
            for path, rel in zip(files, relative)
        ]
    seen: dict[Path, Path] = {}
    for job in jobs:
        for written in (job.target, job.plot, job.audio):
            if written is None:
                continue
            if written in seen:
                raise PredictError(f"{seen[written]} and {job.source} would both be written to {written}")
            seen[written] = job.source
    return jobs


def _log_report(job: Job, report: PredictReport, controls: Controls) -> None:
    for warning in report.warnings:
        # Damage is written back as it was: say so rather than repair the user's file silently.
        kept = "; the output keeps this damage, only velocities are rewritten" if warning.kind.startswith("files_") else ""
        log.warning("%s: %s%s", job.source, warning.text, kept)
    log.info("%s: read as a %s (%s)", job.source, report.input_kind, report.input_reason)
    for notice in report.notices:
        log.warning("%s", notice)
    if report.performed:
        log.info("%s: %s", job.source, report.performed)
    log.info(
        "wrote %s: %d notes given the model's velocities at strength %g (mean change %.1f), %d kept theirs, in %.2f s",
        job.target, report.predicted, controls.strength, report.mean_abs_change, report.kept, report.seconds,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    from velocity.model.checkpoint import CheckpointError
    from velocity.model.midi import MidiError
    from velocity.pipeline.audio import FILE_TYPES as AUDIO_TYPES, AudioError, AudioUnavailable, find_renderer, render_audio

    if args.batch_windows is not None and args.batch_windows < 1:
        log.error("--batch-windows must be positive, got %d", args.batch_windows)
        return 2
    try:
        jobs = plan_jobs(args.inputs, args.output, args.plot, args.audio)
    except PredictError as err:
        log.error("%s", err)
        return 2
    if not jobs:
        log.error("no *.mid or *.midi files in %s", ", ".join(map(str, args.inputs)))
        return 1
    audio = args.audio is not None
    if audio and jobs[0].audio.suffix.lower() not in AUDIO_TYPES:
        log.error("--audio %s: audio is written as %s", args.audio, ", ".join(AUDIO_TYPES))
        return 2
    if audio:
        try:
            find_renderer()
        except AudioUnavailable as err:  # everything else still works: say how to get audio, once
            log.warning("no audio: %s", err)
            audio = False
    if not args.perform and (args.timing != 1.0 or args.no_pedal or args.tempo_map or args.tempo is not None):
        log.error("--timing, --tempo, --no-pedal and --tempo-map shape --perform: add --perform")
        return 2
    models = Models(args.model, args.score_model, args.timing_model)  # each loaded once, when a file first needs it
    perform = PerformControls(args.timing, not args.no_pedal, args.tempo_map, args.tempo) if args.perform else None
    controls = Controls(args.strength, args.loudness, args.dynamics, args.decoding, args.batch_windows, args.input, perform)
    failed = 0
    with logging_redirect_tqdm():
        for job in tqdm(jobs, desc="predict", unit="file", disable=len(jobs) == 1):
            try:
                report = predict_file(job.source, job.target, models, controls, job.plot)
            except (MidiError, PredictError, CheckpointError) as err:
                log.error("%s", err)
                failed += 1
                continue
            except OSError as err:  # an output cannot be written (read-only folder, disk full, ...)
                log.error("%s: cannot write output (%s)", err.filename or job.target, err.strerror or err)
                failed += 1
                continue
            _log_report(job, report, controls)
            if audio:
                try:
                    render_audio(job.target, job.audio)
                    log.info("rendered %s", job.audio)
                except (AudioError, AudioUnavailable) as err:
                    log.error("%s", err)
                    failed += 1
    log.info("%d file%s written, %d failed%s", len(jobs) - failed, "" if len(jobs) - failed == 1 else "s", failed,
             f" (output: {args.output})" if len(jobs) > 1 else "")  # fmt: skip
    return 1 if failed else 0
