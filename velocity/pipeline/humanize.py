"""Humanizing a MIDI file: its piano notes given a model's velocities, shaped by a musician's controls.

`velocity predict` (velocity/pipeline/predict.py) and the studio page (velocity/pipeline/studio.py)
both call these functions (`read_input`, `model_velocities`, `apply_controls`, `humanized_bytes`),
never a copy of them, so a page's download and the command's file are byte-identical.

A file is read by the extract stage's reader and note rules (velocity/model/midi.py, `velocity.model.notes.piece_notes`):
the same notes as training data, in the same order, the same warnings about damage and the same
rule for which notes are the piano (GM programs 0-7, off the drum channel, keys 21..108). Those
notes are quantized as the model file says (bins, note features, vocabulary), cut into the model's
windows and decoded in batches (`decoding`, default pianist: distributions averaged over windows,
blended with the score model's tree on a score, then the dynamics stretched as calibrated, a score
without dynamics markings by its own blend and stretch; velocity/model/pieces.py). Only the velocity byte of those notes' note-on messages changes: the output is the
input's bytes with those bytes replaced, so note timing in ticks, the tempo map, pedals, other tracks
and programs, controllers, meta and system-exclusive events, the drum channel and any damage the file
had stay exactly as they were.

The new velocity of each piano note: the model's prediction p, its spread around the piece's own
predicted mean m scaled by `dynamics d` and the mean moved to `loudness L` (m when not given):
q = L + d * (p - m); then blended with the original o by `strength s`: round(s * q + (1 - s) * o),
half up, kept in 1..127.

Sustain: note ends are pedal-extended only when the model file records `{"extract": {"sustain":
true}}` (the training data was extracted that way); a model file without that key means off.

Scores: `input` auto (the default) reads a file whose onsets sit on a grid of its beats, with
chords struck exactly together, as a score (velocity/model/score.py says how), and predicts it with the
score model (trained on aligned score notes: beats, meter, notated tempo, the notated dynamics
relative to the piece); anything else with the performance model. `input` score or performance
overrides the guess; the report says which was used and why.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from velocity.model.decodings import DEFAULT_DECODING, OFFERED

if TYPE_CHECKING:
    from collections.abc import Callable

    import numpy as np
    import pandas as pd
    from matplotlib.figure import Figure

    from velocity.model.decode import VelocityModel
    from velocity.model.midi import MidiFile, MidiWarning
    from velocity.model.notes import PieceNotes
    from velocity.model.score import InputKind
    from velocity.model.timing_net import TimingModel
    from velocity.pipeline.perform import PerformControls

DEFAULT_MODEL = Path("models/velocity.pt")
DEFAULT_SCORE_MODEL = Path("models/score/velocity.pt")
DEFAULT_TIMING_MODEL = Path("models/score/timing.pt")
INPUT_KINDS = ("auto", "score", "performance")
PLOT_NOTES = 2000  # notes drawn by a figure: a piano roll of a whole long piece is unreadable (and slow)


class PredictError(Exception):
    """Inputs and outputs the command cannot work with (a file's own problems are MidiError)."""


# The musician's controls and their ranges: the command's options and the studio page's controls.
CONTROL_RANGES: dict[str, tuple[float, float | None]] = {
    "strength": (0.0, 1.0), "loudness": (1.0, 127.0), "dynamics": (0.0, None),
    "timing": (0.0, 2.0),  # --perform: 0 as written, 1 the timing model's, 2 twice as far from the notation
    "tempo": (20.0, 400.0),  # --perform --tempo: quarter notes a minute (the model's own when not set)
}  # fmt: skip


def check_control(name: str, value: float) -> float:
    """`value` if it lies in `name`'s range; ValueError saying the range otherwise."""
    low, high = CONTROL_RANGES[name]
    if not (math.isfinite(value) and low <= value and (high is None or value <= high)):  # refuses NaN and infinity
        raise ValueError(f"{name} must be {'between %g and %g' % (low, high) if high is not None else 'at least %g' % low}, got {value:g}")
    return value


@dataclass(frozen=True)
class Controls:
    """What a musician asks of the new velocities (see the module doc)."""

    strength: float = 1.0
    loudness: float | None = None
    dynamics: float = 1.0
    decoding: str = DEFAULT_DECODING
    batch_windows: int | None = None  # None: the decoding's default (velocity.model.decodings.default_batch_windows)
    input: str = "auto"  # auto, score or performance
    perform: "PerformControls | None" = None  # a score: also its timing and pedal (velocity/pipeline/perform.py)

    def __post_init__(self) -> None:
        """Refuse what the command's options refuse (ValueError naming the control)."""
        check_control("strength", self.strength)
        check_control("dynamics", self.dynamics)
        if self.loudness is not None:
            check_control("loudness", self.loudness)
        if self.decoding not in OFFERED:
            raise ValueError(f"decoding must be one of {', '.join(OFFERED)}, got {self.decoding!r}")
        if self.input not in INPUT_KINDS:
            raise ValueError(f"input must be one of {', '.join(INPUT_KINDS)}, got {self.input!r}")
        if self.batch_windows is not None and self.batch_windows < 1:
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
    performed: str = ""  # with --perform: what happened to the timing, in words
    notices: list[str] = field(default_factory=list)  # what the rendering assumed, one line each


def blend_with_original(predicted: "np.ndarray", original: "np.ndarray", strength: float) -> "np.ndarray":
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
    return blend_with_original(target + controls.dynamics * (predicted - mean), original, controls.strength)


def model_sustain(model: "VelocityModel") -> bool:
    """Whether the model's training data had pedal-extended note ends (extract.sustain)."""
    return bool(model.checkpoint.get("extract", {}).get("sustain", False))


def model_input_kind(model: "VelocityModel") -> str:
    """What the model was trained to read: "score" or "performance" (files before scores: performance)."""
    return str(model.checkpoint.get("input_kind", "performance"))


class Models:
    """The performance and the score model, each loaded on first use and kept for every file."""

    def __init__(self, performance: "Path | VelocityModel | None" = DEFAULT_MODEL, score: "Path | VelocityModel | None" = DEFAULT_SCORE_MODEL,
                 timing: "Path | TimingModel | None" = DEFAULT_TIMING_MODEL) -> None:  # fmt: skip
        self._sources = {"performance": performance, "score": score}
        self._loaded: dict[str, VelocityModel] = {}
        self._timing_source = timing
        self._timing: TimingModel | None = None

    def timing(self) -> "TimingModel":
        """The timing model (`--perform`), loaded on first use; CheckpointError when it is missing."""
        from velocity.model.checkpoint import CheckpointError
        from velocity.model.timing_net import TimingModel, load_timing_model

        if self._timing is None:
            source = self._timing_source
            if isinstance(source, TimingModel):
                self._timing = source
            elif source is None or not Path(source).is_file():
                raise CheckpointError(f"{source}: no timing model file; train one with `dvc repro timing_train`, or leave out --perform")
            else:
                self._timing = load_timing_model(source)
        return self._timing

    def available(self, kind: str) -> bool:
        source = self._sources.get(kind)
        return source is not None and (not isinstance(source, Path) or source.is_file())

    def source(self, kind: str) -> str:
        return str(self._sources.get(kind))

    def __getitem__(self, kind: str) -> "VelocityModel":
        """The model for `kind`; raises CheckpointError when it is missing or is the other kind's."""
        from velocity.model.checkpoint import CheckpointError
        from velocity.model.decode import load_velocity_model

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


def write_humanized(midi: "MidiFile", velocity: "np.ndarray", out_path: Path) -> None:
    """`midi`'s bytes with every note-on's velocity byte set to `velocity`, written atomically."""
    write_bytes(humanized_bytes(midi, velocity), out_path)


def write_bytes(data: bytes, out_path: Path) -> None:
    """`data` to `out_path`, atomically."""
    from velocity.io import atomic_path

    with atomic_path(out_path) as tmp:
        tmp.write_bytes(data)


def plot_notes(piece: "PieceNotes") -> "pd.DataFrame":
    """The notes a figure draws: the first PLOT_NOTES (a piano roll of a whole long piece is unreadable)."""
    return piece.notes.iloc[:PLOT_NOTES]


def plot_title(piece: "PieceNotes", name: str) -> str:
    title = f"{name}: original vs predicted velocities"
    if len(piece.notes) > PLOT_NOTES:
        title += f" (first {PLOT_NOTES:,} of {len(piece.notes):,} notes)"
    return title


def piece_figure(piece: "PieceNotes", velocity: "np.ndarray", name: str, draw: "Callable[..., Figure]") -> "Figure":
    """`draw` (velocity.figures' piano_roll_figure or velocity_curve_figure) of the piece's first
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
    from velocity.pipeline.perform import KEPT_TIMING, performed_line

    began = time.perf_counter()
    if Path(in_path).resolve() == Path(out_path).resolve():
        raise PredictError(f"{in_path}: the output would overwrite the input")
    models = as_models(models)
    piece, model, kind = read_input(read_midi(in_path), models, controls.input)
    velocity = new_velocities(piece, model, controls)
    performed, notices = "", []
    if controls.perform is not None and kind.kind == "score":
        data, notices = performed_file(piece, velocity, models.timing(), controls.perform)
        write_bytes(data, out_path)
        performed = performed_line(controls.perform)
    else:
        if controls.perform is not None:
            performed = KEPT_TIMING
        write_humanized(piece.midi, velocity, out_path)
    if plot_path is not None:
        plot_file(piece, velocity, plot_path)
    report = report_of(piece, velocity, kind, began)
    report.performed, report.notices = performed, notices
    return report


def performed_file(piece: "PieceNotes", velocity: "np.ndarray", timing: "TimingModel", perform: "PerformControls") -> tuple[bytes, list[str]]:
    """A score's file played with the timing model's tempo, timing, articulation and pedal, and
    what the rendering had to assume about the score."""
    from velocity.pipeline.perform import performed_bytes, render_score, score_warnings

    return performed_bytes(piece, velocity, render_score(piece, timing, perform), perform), score_warnings(piece, perform)
