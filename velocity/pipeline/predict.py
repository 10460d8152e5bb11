"""`velocity predict IN... -o OUT`: give every piano note of MIDI files the model's velocity.

A file is read by the extract stage's reader and note rules (velocity/model/midi.py, `velocity.model.notes.piece_notes`):
the same notes as training data, in the same order, the same warnings about damage and the same
rule for which notes are the piano (GM programs 0-7, off the drum channel, keys 21..108). Those
notes are quantized as the model file says (bins, note features, vocabulary), cut into the model's
windows and decoded in batches (`--decoding`, default pianist: distributions averaged over windows,
blended with the score model's tree on a score, then the dynamics stretched as calibrated;
velocity/model/pieces.py). Only the velocity byte of those notes' note-on messages changes: the output is the
input's bytes with those bytes replaced, so note timing in ticks, the tempo map, pedals, other tracks
and programs, controllers, meta and system-exclusive events, the drum channel and any damage the file
had stay exactly as they were.

The new velocity of each piano note: the model's prediction p, its spread around the piece's own
predicted mean m scaled by `--dynamics d` and the mean moved to `--loudness L` (m when not given):
q = L + d * (p - m); then blended with the original o by `--strength s`: round(s * q + (1 - s) * o),
half up, kept in 1..127.

Several files, or folders (every *.mid / *.midi inside, recursively, the layout mirrored), go to an
output folder with one model load; a file that fails is reported and the others still processed.

Sustain: note ends are pedal-extended only when the model file records `{"extract": {"sustain":
true}}` (the training data was extracted that way); a model file without that key means off.

Scores: `--input auto` (the default) reads a file whose onsets sit on a grid of its beats, with
chords struck exactly together, as a score (velocity/model/score.py says how), and predicts it with the
score model (`--score-model`, trained on aligned score notes: beats, meter, notated tempo, the
notated dynamics relative to the piece); anything else with the performance model (`--model`).
`--input score|performance` overrides the guess. Each file's log says which it used and why.

`--audio` renders each written file with FluidSynth (velocity/pipeline/audio.py). The studio page
(velocity/pipeline/studio.py) humanizes through this module's functions, never a copy of them.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure

    from velocity.model.midi import MidiFile, MidiWarning
    from velocity.model.notes import PieceNotes
    from velocity.model.pieces import VelocityModel
    from velocity.model.score import InputKind

log = logging.getLogger(__name__)

# model.pieces.DEFAULT_DECODING (a test keeps them equal), named here so `--help` needs no torch: the
# distributions averaged over windows, stretched to a pianist's range (README, Results).
DEFAULT_DECODING = "pianist"
DEFAULT_MODEL = Path("models/velocity.pt")
DEFAULT_SCORE_MODEL = Path("models/score/velocity.pt")
INPUT_KINDS = ("auto", "score", "performance")
MIDI_SUFFIXES = (".mid", ".midi")
PLOT_NOTES = 2000  # notes drawn by --plot: a piano roll of a whole long piece is unreadable (and slow)


class PredictError(Exception):
    """Inputs and outputs the command cannot work with (a file's own problems are MidiError)."""


# The musician's controls and their ranges: the command's options and the studio page's controls.
CONTROL_RANGES: dict[str, tuple[float, float | None]] = {"strength": (0.0, 1.0), "loudness": (1.0, 127.0), "dynamics": (0.0, None)}
DECODINGS = ("pianist", "averaged", "notes-only", "median", "greedy")


def check_control(name: str, value: float) -> float:
    """`value` if it lies in `name`'s range; ValueError saying the range otherwise."""
    low, high = CONTROL_RANGES[name]
    if not (math.isfinite(value) and low <= value and (high is None or value <= high)):  # refuses NaN and infinity
        raise ValueError(f"{name} must be {'between %g and %g' % (low, high) if high is not None else 'at least %g' % low}, got {value:g}")
    return value


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
        "--decoding", choices=DECODINGS, default=DEFAULT_DECODING,
        help="pianist (default): the median of each note's velocity distribution averaged over every window "
        "holding it (the score model: blended with its tree), stretched to a pianist's range of dynamics as "
        "calibrated on validation; averaged: the networks alone, unstretched (least absolute error, flatter); "
        "notes-only: the median from the window centred nearest the note; median: medians fed back note by "
        "note; greedy: the likeliest velocity fed back (the seed's)",
    )  # fmt: skip
    parser.add_argument("--batch-windows", type=int, default=256, help="windows decoded at once (default: 256)")
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


# ---------------------------------------------------------------------------------------------
# Predicting and writing


@dataclass(frozen=True)
class Controls:
    """What a musician asks of the new velocities (see the module doc)."""

    strength: float = 1.0
    loudness: float | None = None
    dynamics: float = 1.0
    decoding: str = DEFAULT_DECODING
    batch_windows: int = 256
    input: str = "auto"  # auto, score or performance

    def __post_init__(self) -> None:
        """Refuse what the command's options refuse (ValueError naming the control)."""
        check_control("strength", self.strength)
        check_control("dynamics", self.dynamics)
        if self.loudness is not None:
            check_control("loudness", self.loudness)
        if self.decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {', '.join(DECODINGS)}, got {self.decoding!r}")
        if self.input not in INPUT_KINDS:
            raise ValueError(f"input must be one of {', '.join(INPUT_KINDS)}, got {self.input!r}")
        if self.batch_windows < 1:
            raise ValueError(f"batch windows must be positive, got {self.batch_windows}")


@dataclass
class PredictReport:
    notes: int  # notes in the file, every channel and program
    predicted: int  # notes that got the model's velocity
    kept: int  # notes that kept theirs (drums, other programs, outside 21..108, sustain duplicates)
    mean_abs_change: float  # mean |new - original| over the predicted notes
    seconds: float  # reading, predicting and writing
    warnings: list["MidiWarning"] = field(default_factory=list)
    input_kind: str = "performance"  # how the file was read: score or performance
    input_reason: str = ""  # why, in words


def blend(predicted: "np.ndarray", original: "np.ndarray", strength: float) -> "np.ndarray":
    """round(s * predicted + (1 - s) * original), kept in 1..127 (a note-on of 0 is a note-off)."""
    import numpy as np

    mixed = strength * np.asarray(predicted, dtype=np.float64) + (1.0 - strength) * np.asarray(original, dtype=np.float64)
    return np.clip(np.floor(mixed + 0.5), 1, 127).astype(np.int64)  # round half up


def shape_dynamics(predicted: "np.ndarray", original: "np.ndarray", controls: Controls) -> "np.ndarray":
    """A piece's new velocities: the prediction's spread around its mean scaled by `dynamics`, the
    mean moved to `loudness`, then blended with the original by `strength`, in 1..127."""
    import numpy as np

    predicted = np.asarray(predicted, dtype=np.float64)
    mean = float(predicted.mean()) if len(predicted) else 0.0
    target = mean if controls.loudness is None else controls.loudness
    return blend(target + controls.dynamics * (predicted - mean), original, controls.strength)


def model_sustain(model: "VelocityModel") -> bool:
    """Whether the model's training data had pedal-extended note ends (extract.sustain)."""
    return bool(model.checkpoint.get("extract", {}).get("sustain", False))


def model_input_kind(model: "VelocityModel") -> str:
    """What the model was trained to read: "score" or "performance" (files before scores: performance)."""
    return str(model.checkpoint.get("input_kind", "performance"))


class Models:
    """The performance and the score model, each loaded on first use and kept for every file."""

    def __init__(self, performance: "Path | VelocityModel | None" = DEFAULT_MODEL, score: "Path | VelocityModel | None" = DEFAULT_SCORE_MODEL) -> None:
        self._sources = {"performance": performance, "score": score}
        self._loaded: dict[str, VelocityModel] = {}

    def available(self, kind: str) -> bool:
        source = self._sources.get(kind)
        return source is not None and (not isinstance(source, Path) or source.is_file())

    def source(self, kind: str) -> str:
        return str(self._sources.get(kind))

    def __getitem__(self, kind: str) -> "VelocityModel":
        """The model for `kind`; raises CheckpointError when it is missing or is the other kind's."""
        from velocity.model.checkpoint import CheckpointError
        from velocity.model.pieces import load_velocity_model

        if kind not in self._loaded:
            source = self._sources[kind]
            if source is None:
                raise CheckpointError(f"no {kind} model given")
            if isinstance(source, Path):
                if not source.is_file():
                    stage = "score_train" if kind == "score" else "train"
                    raise CheckpointError(f"{source}: no {kind} model file; train one with `dvc repro {stage}`"
                                          + (", or read the file as a performance with --input performance" if kind == "score" else ""))  # fmt: skip
                model = load_velocity_model(source)
            else:
                model = source
            if model_input_kind(model) != kind:
                raise CheckpointError(f"{source if isinstance(source, Path) else 'the model'}: trained on {model_input_kind(model)}s, "
                                      f"not {kind}s: give the {kind} model (--{'score-model' if kind == 'score' else 'model'})")  # fmt: skip
            self._loaded[kind] = model
        return self._loaded[kind]


def read_input(midi: "MidiFile", models: Models, wanted: str) -> tuple["PieceNotes", "VelocityModel", "InputKind"]:
    """The piece of `midi` as its model reads it, that model, and the input kind with the reason."""
    from velocity.model.notes import piece_notes
    from velocity.model.score import InputKind, detect_input_kind

    piece = piece_notes(midi)  # without the pedal: what detection reads, and most models too
    if wanted == "auto":
        kind = detect_input_kind(piece)
        if kind.kind == "score" and not models.available("score"):  # an older setup: still humanize it
            kind = InputKind("performance", f"looks like a score ({kind.reason}), but there is no score model "
                             f"({models.source('score')}; `dvc repro score_train` trains one), so the performance model reads it")  # fmt: skip
    else:
        kind = InputKind(wanted, f"--input {wanted}")
    model = models[kind.kind]
    return (piece_notes(midi, sustain=True) if model_sustain(model) else piece), model, kind


def model_velocities(piece: "PieceNotes", model: "VelocityModel", controls: Controls) -> "np.ndarray":
    """The model's velocity for each note of `piece.notes` (before strength, loudness, dynamics);
    a score model reads the piece with its score columns (beats, meter, the notated velocities)."""
    from velocity.model.pieces import predict_notes
    from velocity.model.score import score_table

    notes = score_table(piece) if model_input_kind(model) == "score" else piece.notes
    return predict_notes(model, notes, batch_windows=controls.batch_windows, decoding=controls.decoding)


def apply_controls(piece: "PieceNotes", predicted: "np.ndarray", controls: Controls) -> "np.ndarray":
    """The new velocity of every note of `piece.midi`: the piece's notes shaped from `predicted`,
    every other note (drums, other programs, ...) as it was."""
    velocity = piece.midi.notes["velocity"].to_numpy().copy()
    rows = piece.notes["note"].to_numpy()
    velocity[rows] = shape_dynamics(predicted, velocity[rows], controls)
    return velocity


def new_velocities(piece: "PieceNotes", model: "VelocityModel", controls: Controls) -> "np.ndarray":
    """The new velocity of every note of `piece.midi` (the piece's notes predicted, the rest kept)."""
    return apply_controls(piece, model_velocities(piece, model, controls), controls)


def humanized_bytes(midi: "MidiFile", velocity: "np.ndarray") -> bytes:
    """`midi`'s bytes with every note-on's velocity byte set to `velocity`."""
    import numpy as np

    data = np.frombuffer(midi.data, dtype=np.uint8).copy()
    data[midi.notes["offset"].to_numpy()] = velocity
    return data.tobytes()


def write_midi(midi: "MidiFile", velocity: "np.ndarray", out_path: Path) -> None:
    """`midi`'s bytes with every note-on's velocity byte set to `velocity`, written atomically."""
    from velocity.io import atomic_path

    with atomic_path(out_path) as tmp:
        tmp.write_bytes(humanized_bytes(midi, velocity))


def plot_notes(piece: "PieceNotes") -> "pd.DataFrame":
    """The notes a figure draws: the first PLOT_NOTES (a piano roll of a whole long piece is unreadable)."""
    return piece.notes.iloc[:PLOT_NOTES]


def plot_title(piece: "PieceNotes", name: str) -> str:
    title = f"{name}: original vs predicted velocities"
    if len(piece.notes) > PLOT_NOTES:
        title += f" (first {PLOT_NOTES:,} of {len(piece.notes):,} notes)"
    return title


def piece_figure(piece: "PieceNotes", velocity: "np.ndarray", name: str, draw: "Callable[..., Figure]") -> "Figure":
    """`draw` (the evaluate stage's piano_roll_figure or velocity_curve_figure) of the piece's first
    PLOT_NOTES notes, original against `velocity` (every note of the file)."""
    shown = plot_notes(piece)
    return draw(shown, velocity[shown["note"].to_numpy()], plot_title(piece, name))


def plot_file(piece: "PieceNotes", velocity: "np.ndarray", path: Path) -> None:
    """The evaluate stage's piano-roll figure of the piece's first PLOT_NOTES notes, as a PNG file."""
    from velocity.figures import piano_roll_figure, png_bytes
    from velocity.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_bytes(png_bytes(piece_figure(piece, velocity, piece.midi.path.name, piano_roll_figure)))


def report_of(piece: "PieceNotes", velocity: "np.ndarray", kind: "InputKind", began: float) -> PredictReport:
    """What was done to one file, for the log (and the studio page)."""
    import numpy as np

    rows = piece.notes["note"].to_numpy()
    original = piece.midi.notes["velocity"].to_numpy()
    return PredictReport(
        notes=len(piece.midi.notes), predicted=len(rows), kept=len(piece.midi.notes) - len(rows),
        mean_abs_change=float(np.abs(velocity[rows] - original[rows]).mean()), seconds=time.perf_counter() - began,
        warnings=piece.warnings, input_kind=kind.kind, input_reason=kind.reason,
    )  # fmt: skip


def as_models(models: "Models | VelocityModel") -> Models:
    """`models` itself, or one model alone serving the kind it was trained on."""
    if isinstance(models, Models):
        return models
    return Models(**{"performance": None, "score": None, model_input_kind(models): models})


def predict_file(
    in_path: Path, out_path: Path, models: "Models | VelocityModel", controls: Controls = Controls(),
    plot_path: Path | None = None,
) -> PredictReport:
    """Read `in_path`, predict with the model for its input kind (`controls.input`; one model given
    alone serves its own kind), write `out_path` (and the `plot_path` figure); raises MidiError
    naming the file (nothing written) when it holds no usable piano note, PredictError when
    `out_path` is `in_path`, CheckpointError when the model its kind needs is missing."""
    from velocity.model.midi import read_midi

    began = time.perf_counter()
    if Path(in_path).resolve() == Path(out_path).resolve():
        raise PredictError(f"{in_path}: the output would overwrite the input")
    piece, model, kind = read_input(read_midi(in_path), as_models(models), controls.input)
    velocity = new_velocities(piece, model, controls)
    write_midi(piece.midi, velocity, out_path)
    if plot_path is not None:
        plot_file(piece, velocity, plot_path)
    return report_of(piece, velocity, kind, began)


def _log_report(job: Job, report: PredictReport, controls: Controls) -> None:
    for warning in report.warnings:
        # Damage is written back as it was: say so rather than repair the user's file silently.
        kept = "; the output keeps this damage, only velocities are rewritten" if warning.kind.startswith("files_") else ""
        log.warning("%s: %s%s", job.source, warning.text, kept)
    log.info("%s: read as a %s (%s)", job.source, report.input_kind, report.input_reason)
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

    if args.batch_windows < 1:
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
    models = Models(args.model, args.score_model)  # each loaded once, when a file first needs it
    controls = Controls(args.strength, args.loudness, args.dynamics, args.decoding, args.batch_windows, args.input)
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
