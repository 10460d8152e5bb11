"""`velocity studio`: a page for musicians. Drop MIDI files, see and hear them humanized, download them.

One page (velocity/pipeline/studio.html) served on 127.0.0.1 by FastAPI and uvicorn (both come with
Prefect). It calls the functions `velocity predict` calls (velocity/pipeline/humanize.py: `read_input`,
`model_velocities`, `apply_controls`, `humanized_bytes`; with the perform switch,
velocity/pipeline/perform.py: `render_score`, `performed_bytes`, `score_warnings`), so page and
command give the same bytes for the same settings. What the server holds:

- uploads, in memory only: a client's file name is shown and used as the download's name, never as
  a path; uploads over `--max-upload-mb` are refused;
- the model's prediction of each upload per input kind and decoding, so that moving strength,
  loudness or dynamics reshapes it without predicting again;
- with the perform switch (`velocity predict --perform`), each score's rendering per timing and
  pedal setting (the timing model's onsets, ends, pedal and tempo), so that velocity controls do not
  render it again; a performance keeps its pianist's timing, as the command does;
- each result's MIDI bytes, its figures (the evaluate stage's piano rolls, a velocity curve and, for
  a performed score, its notes as moved and its tempo curve) and, when asked for, its audio
  (FluidSynth, velocity/pipeline/audio.py, of the file the result downloads), rendered in a
  temporary folder that is removed. A performed score downloads in both of the command's forms:
  plain and `--tempo-map` (made when first asked for).

The oldest uploads and results are dropped beyond KEEP_UPLOADS and KEEP_RESULTS; a file over
MAX_NOTES notes is refused (it would hold the model for minutes).
"""
# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request) at
# runtime, and those are imported inside create_app so that `velocity --help` stays quick.

import argparse
import io
import logging
import os
import re
import secrets
import socket
import tempfile
import threading
import time
import zipfile
from collections import OrderedDict
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from velocity.model.decodings import DEFAULT_DECODING, OFFERED
from velocity.pipeline.humanize import (
    CONTROL_RANGES, DEFAULT_MODEL, DEFAULT_SCORE_MODEL, DEFAULT_TIMING_MODEL, INPUT_KINDS, Controls, Models, PredictReport,
)  # fmt: skip
from velocity.pipeline.perform import KEPT_TIMING, PerformControls, performed_line

if TYPE_CHECKING:
    import numpy as np
    from fastapi import FastAPI
    from matplotlib.figure import Figure

    from velocity.model.midi import MidiFile
    from velocity.model.notes import PieceNotes
    from velocity.model.score import InputKind
    from velocity.model.timing import Rendering

log = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
MAX_UPLOAD_MB = 20.0
KEEP_UPLOADS = 32
KEEP_RESULTS = 64  # a result keeps its upload alive, so at most this many uploads are held
MAX_NOTES = 200_000  # a bigger file holds the model for minutes: `velocity predict` is the tool for it
AUDIO_RENDERS = 2  # FluidSynth processes at once
KEEP_RENDERED = 24  # figures and audio (a long piece's audio is megabytes)
DYNAMICS_SLIDER_MAX = 3.0  # the command takes any D >= 0; a slider needs an end
FIGURE_DPI = 80  # the page's figures: the evaluate stage's, a little smaller to fit the page
PAGE = Path(__file__).with_name("studio.html")


class StudioError(Exception):
    """A request the studio cannot serve; `status` is its HTTP status."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


def download_name(name: str, suffix: str = "-humanized") -> str:
    """A safe file name for a download: the upload's base name (letters of any script kept), other
    characters replaced."""
    stem = re.sub(r"[^\w. -]+", "_", Path(name.replace("\\", "/")).stem).strip(" .") or "file"
    return f"{stem[:100]}{suffix}.mid"


def attachment(name: str) -> dict[str, str]:
    """The Content-Disposition header of a download named `name` (RFC 6266: an ASCII fallback, then UTF-8)."""
    fallback = name.encode("ascii", "replace").decode().replace("?", "_").replace('"', "_")
    return {"Content-Disposition": f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name)}"}


def byte_range(header: str | None, size: int) -> tuple[int, int] | None:
    """The first and last byte a `Range: bytes=...` header asks of `size` bytes: None for the whole
    (no header, or not a single byte range); ValueError when it lies beyond them (416)."""
    match = re.fullmatch(r"bytes=(\d*)-(\d*)", (header or "").strip())
    if match is None or match.groups() == ("", ""):
        return None
    first, last = match.groups()
    if first == "":  # the last N bytes (none: beyond them)
        first, last = max(size - int(last), 0) if int(last) else size, size - 1
    else:
        first, last = int(first), min(int(last), size - 1) if last else size - 1
    if first >= size or last < first:
        raise ValueError(f"bytes {header} of {size}")
    return first, last


def over_limit(name: str, size: int | None, limit: int) -> "StudioError":
    """The refusal of an upload over the limit (its size when known)."""
    how_big = f"{size / 1e6:.1f} MB is " if size is not None else ""
    return StudioError(f"{name}: {how_big}over the {limit / 1e6:g} MB upload limit", 413)


@dataclass
class Upload:
    id: str
    name: str  # the client's name for it: shown, never a path
    midi: "MidiFile | None"
    error: str | None  # the reader's one-line error when the file cannot be read


@dataclass
class Prediction:
    """The model's velocities for one upload read one way (strength and the rest not yet applied)."""

    piece: "PieceNotes"
    kind: "InputKind"
    predicted: "np.ndarray"


@dataclass
class Result:
    id: str
    upload: Upload
    piece: "PieceNotes"
    velocity: "np.ndarray"  # every note of the file
    report: PredictReport
    data: bytes  # the humanized MIDI file; a performed score's plain form (the command's without --tempo-map)
    perform: PerformControls | None = None  # a performed score: how it was played (tempo_map False)
    rendering: "Rendering | None" = None  # ... and its notes' times, pedal and clock, in `piece.notes` order

    def download_name(self, tempo_map: bool = False, number: int = 1) -> str:
        suffix = ("-performed" if self.rendering is not None else "-humanized") + ("-tempo-map" if tempo_map else "")
        return download_name(self.upload.name, suffix + (f"-{number}" if number > 1 else ""))


class Studio:
    """What the page's requests do, without HTTP (the app below only translates)."""

    def __init__(self, models: Models, max_upload_bytes: int = int(MAX_UPLOAD_MB * 1e6)) -> None:
        self.models = models
        self.max_upload_bytes = max_upload_bytes
        self._predicting = threading.Lock()  # one prediction at a time: torch has the cores
        self._rendering = threading.Semaphore(AUDIO_RENDERS)
        self._storing = threading.Lock()  # the stores below change one request at a time
        self._uploads: OrderedDict[str, Upload] = OrderedDict()
        self._predictions: OrderedDict[tuple, Prediction] = OrderedDict()
        self._renderings: OrderedDict[tuple, "Rendering"] = OrderedDict()
        self._results: OrderedDict[str, Result] = OrderedDict()
        self._rendered: OrderedDict[tuple[str, str], bytes] = OrderedDict()  # (result or upload, what): made when first asked for

    def _keep(self, store: OrderedDict, key: Any, value: Any, keep: int) -> Any:
        """Store `value` as the newest in `store`, dropping the oldest beyond `keep`; return it."""
        with self._storing:
            store[key] = value
            store.move_to_end(key)
            while len(store) > keep:
                store.popitem(last=False)
        return value

    def config(self) -> dict[str, Any]:
        """The controls with `velocity predict`'s defaults and ranges, and what the server can do
        (audio, the perform switch): None, or the one line saying why not."""
        from velocity.model.checkpoint import CheckpointError
        from velocity.pipeline.audio import AudioUnavailable, find_renderer

        defaults, perform_defaults = Controls(), PerformControls()
        try:
            find_renderer()
            audio = None
        except AudioUnavailable as err:
            audio = str(err)
        try:
            self.models.timing()
            perform = None
        except CheckpointError as err:
            perform = str(err)
        ranges = {name: {"min": low, "max": DYNAMICS_SLIDER_MAX if high is None else high,
                         "default": getattr(perform_defaults if name in ("timing", "tempo") else defaults, name)}
                  for name, (low, high) in CONTROL_RANGES.items()}  # fmt: skip
        return {
            "controls": ranges, "decodings": list(OFFERED), "decoding": DEFAULT_DECODING, "inputs": list(INPUT_KINDS),
            "input": defaults.input, "max_upload_bytes": self.max_upload_bytes, "audio_unavailable": audio,
            "pedal": perform_defaults.pedal, "perform_unavailable": perform,
        }  # fmt: skip

    def add(self, name: str, data: bytes) -> Upload:
        """Keep an upload; a file the reader refuses is kept with its error."""
        from velocity.model.midi import MidiError, parse_midi

        if len(data) > self.max_upload_bytes:
            raise over_limit(name, len(data), self.max_upload_bytes)
        try:
            midi, error = parse_midi(data, name), None
        except MidiError as err:
            midi, error = None, str(err)
        if midi is not None and len(midi.notes) > MAX_NOTES:
            midi, error = None, f"{name}: {len(midi.notes):,} notes, over the page's {MAX_NOTES:,}: humanize it with `velocity predict`"
        upload = Upload(secrets.token_hex(8), name, midi, error)
        return self._keep(self._uploads, upload.id, upload, KEEP_UPLOADS)

    def upload(self, upload_id: str) -> Upload:
        if (upload := self._uploads.get(upload_id)) is None:
            raise StudioError("the server no longer holds this file: add it again", 404)
        return upload

    def humanize(self, upload_id: str, controls: Controls) -> Result:
        """The upload humanized with `controls`, as `velocity predict` would write it (with
        `controls.perform`: `velocity predict --perform`, a score played by the timing model)."""
        from velocity.model.checkpoint import CheckpointError
        from velocity.model.midi import MidiError
        from velocity.pipeline.humanize import apply_controls, humanized_bytes, model_velocities, read_input, report_of
        from velocity.pipeline.perform import performed_bytes, score_warnings

        upload = self.upload(upload_id)
        if upload.error is not None:
            raise StudioError(upload.error)
        key = (upload_id, controls.input, controls.decoding)
        began = time.perf_counter()
        if (prediction := self._predictions.get(key)) is None:  # a moved slider needs no lock: only the last step
            with self._predicting:
                if (prediction := self._predictions.get(key)) is None:
                    began = time.perf_counter()  # the work, not the wait for another file's
                    try:
                        piece, model, kind = read_input(upload.midi, self.models, controls.input)
                        prediction = Prediction(piece, kind, model_velocities(piece, model, controls))
                    except (MidiError, CheckpointError) as err:
                        raise StudioError(str(err)) from None
                    self._keep(self._predictions, key, prediction, KEEP_RESULTS)
        piece = prediction.piece
        velocity = apply_controls(piece, prediction.predicted, controls)
        perform, rendering, performed, notices = None, None, "", []
        if controls.perform is not None and prediction.kind.kind == "score":
            perform = replace(controls.perform, tempo_map=False)  # the plain form; the tempo map is a download of its own
            rendering = self._render(upload_id, controls.input, piece, perform)
            try:
                data = performed_bytes(piece, velocity, rendering, perform)
            except MidiError as err:
                raise StudioError(str(err)) from None
            performed = performed_line(perform)
            notices = score_warnings(piece, perform)
        else:
            performed = KEPT_TIMING if controls.perform is not None else ""
            data = humanized_bytes(upload.midi, velocity)
        report = report_of(piece, velocity, prediction.kind, began)
        report.performed, report.notices = performed, notices
        result = Result(secrets.token_hex(8), upload, piece, velocity, report, data, perform, rendering)
        return self._keep(self._results, result.id, result, KEEP_RESULTS)

    def _render(self, upload_id: str, input_kind: str, piece: "PieceNotes", perform: PerformControls) -> "Rendering":
        """The score `piece` played by the timing model under `perform` (velocity/pipeline/perform.py's
        `render_score`, as the command renders it), kept per upload, input kind, timing, pedal and tempo."""
        from velocity.model.checkpoint import CheckpointError
        from velocity.pipeline.perform import render_score

        key = (upload_id, input_kind, perform.timing, perform.pedal, perform.tempo)
        if (rendering := self._renderings.get(key)) is None:
            with self._predicting:  # the timing network wants the cores too
                if (rendering := self._renderings.get(key)) is None:
                    try:
                        rendering = self._keep(self._renderings, key, render_score(piece, self.models.timing(), perform), KEEP_RESULTS)
                    except CheckpointError as err:
                        raise StudioError(str(err)) from None
        return rendering

    def result(self, result_id: str) -> Result:
        if (result := self._results.get(result_id)) is None:
            raise StudioError("the server no longer holds this result: change a control to make it again", 404)
        return result

    def figure(self, result_id: str, which: str) -> bytes:
        """The result's piano rolls (`rolls`), velocity curve (`curve`) or, for a performed score,
        tempo curve (`tempo`) as PNG: the first PLOT_NOTES notes, as `velocity predict --plot`
        draws them; a performed score's rolls show its notes as written and as played."""
        from velocity.figures import piano_roll_figure, png_bytes, velocity_curve_figure
        from velocity.pipeline.humanize import piece_figure

        if which not in ("rolls", "curve", "tempo"):
            raise StudioError(f"no figure named {which!r}", 404)
        result = self.result(result_id)
        if which == "tempo" and result.rendering is None:
            raise StudioError("a tempo curve is drawn for a performed score only (the perform switch)", 404)
        if (png := self._rendered.get((result_id, which))) is None:
            if which == "curve" or result.rendering is None:
                draw = {"rolls": piano_roll_figure, "curve": velocity_curve_figure}[which]
                figure = piece_figure(result.piece, result.velocity, result.upload.name, draw)
            else:
                figure = (performed_rolls if which == "rolls" else tempo_figure)(result)
            png = png_bytes(figure, dpi=FIGURE_DPI)
        return self._keep(self._rendered, (result_id, which), png, KEEP_RENDERED)

    def midi(self, result_id: str, tempo_map: bool = False) -> tuple[bytes, str]:
        """The result's file and its download name; `tempo_map`: a performed score in the form of
        `velocity predict --perform --tempo-map` (the tempo in the file's tempo map)."""
        from velocity.model.midi import MidiError
        from velocity.pipeline.perform import performed_bytes

        result = self.result(result_id)
        if not tempo_map:
            return result.data, result.download_name()
        if result.rendering is None:
            raise StudioError("a tempo map is written for a performed score only (the perform switch)", 404)
        if (data := self._rendered.get((result_id, "tempo-map"))) is None:
            try:
                data = performed_bytes(result.piece, result.velocity, result.rendering, replace(result.perform, tempo_map=True))
            except MidiError as err:
                raise StudioError(str(err)) from None
        return self._keep(self._rendered, (result_id, "tempo-map"), data, KEEP_RENDERED), result.download_name(tempo_map=True)

    def audio(self, result_id: str, which: str) -> bytes:
        """The `original` or `humanized` file (a performed score: the performed file, plain form)
        rendered by FluidSynth as Ogg Vorbis (AudioUnavailable without FluidSynth or a soundfont)."""
        from velocity.pipeline.audio import render_audio

        if which not in ("original", "humanized"):
            raise StudioError(f"no audio named {which!r}", 404)
        result = self.result(result_id)
        key = (result_id, which) if which == "humanized" else (result.upload.id, which)  # the original is the upload's
        if (audio := self._rendered.get(key)) is None:
            midi = result.data if which == "humanized" else result.upload.midi.data
            with self._rendering, tempfile.TemporaryDirectory(prefix="velocity-studio-") as scratch:
                out = Path(scratch) / "audio.ogg"
                render_audio(midi, out)
                audio = out.read_bytes()
        return self._keep(self._rendered, key, audio, KEEP_RENDERED)

    def zip(self, result_ids: list[str]) -> bytes:
        """Several results as one zip, each under its upload's name (numbered when names repeat)."""
        buffer = io.BytesIO()
        names: set[str] = set()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for result_id in result_ids:
                result = self.result(result_id)
                name, count = result.download_name(), 1
                while name in names:
                    count += 1
                    name = result.download_name(number=count)
                names.add(name)
                archive.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), result.data, compress_type=zipfile.ZIP_DEFLATED)
        return buffer.getvalue()


def controls_from(values: dict[str, Any]) -> Controls:
    """The page's controls as `Controls`; one not sent keeps the command's default. ValueError (or
    TypeError) naming what is wrong, as the command's options would refuse it. `perform` is null
    (off, the default) or `{"timing": 0..2, "pedal": true/false, "tempo": null or 20..400}`
    (`--perform --timing T [--no-pedal] [--tempo QPM]`)."""
    numbers, choices = ("strength", "loudness", "dynamics"), ("decoding", "input")
    if unknown := sorted(set(values) - set(numbers) - set(choices) - {"perform"}):
        raise ValueError(f"no control named {', '.join(unknown)}")
    given = {name: None if values[name] is None and name == "loudness" else float(values[name]) for name in numbers if name in values}
    return Controls(**given, **{name: str(values[name]) for name in choices if name in values}, perform=perform_from(values.get("perform")))


def perform_from(values: dict[str, Any] | None) -> PerformControls | None:
    """The perform switch's controls: None when off; else the timing, pedal and tempo (null: the
    model's own; the tempo map is a download, not a control)."""
    if values is None:
        return None
    if not isinstance(values, dict):
        raise ValueError(f"perform must be null or {{timing, pedal, tempo}}, got {values!r}")
    if unknown := sorted(set(values) - {"timing", "pedal", "tempo"}):
        raise ValueError(f"no perform control named {', '.join(unknown)}")
    pedal = values.get("pedal", PerformControls.pedal)
    if not isinstance(pedal, bool):
        raise ValueError(f"pedal must be true or false, got {pedal!r}")
    tempo = values.get("tempo")
    return PerformControls(float(values.get("timing", PerformControls.timing)), pedal, tempo=None if tempo is None else float(tempo))


def performed_rolls(result: Result) -> "Figure":
    """A performed score's first PLOT_NOTES notes as written and as played (the rendered onsets
    and ends), coloured by their velocities."""
    from velocity.figures import performed_roll_figure
    from velocity.pipeline.humanize import PLOT_NOTES, plot_notes

    shown = plot_notes(result.piece)
    rows = shown["note"].to_numpy()
    title = f"{result.upload.name}: as written vs played at timing {result.perform.timing:g}"
    if len(result.piece.notes) > PLOT_NOTES:
        title += f" (first {PLOT_NOTES:,} of {len(result.piece.notes):,} notes)"
    count = len(shown)
    return performed_roll_figure(shown, result.velocity[rows], result.rendering.onset[:count], result.rendering.end[:count], title)


def tempo_figure(result: Result) -> "Figure":
    """A performed score's tempo curve (its rendering's clock, velocity/model/timing.py) against the
    notated tempo, over the score's time."""
    import numpy as np

    from velocity.figures import tempo_curves_figure
    from velocity.model.timing import TEMPO_WINDOW, tempo_curve, tempo_grid

    start = result.piece.notes["start"].to_numpy()
    grid = tempo_grid(float(start.min()), float(start.max()))
    curves = {"as written": np.zeros(len(grid)), "performed": tempo_curve(result.rendering.clock, grid)}
    title = f"{result.upload.name}: tempo played at timing {result.perform.timing:g}, against the notated tempo"
    return tempo_curves_figure(grid + TEMPO_WINDOW / 2, curves, title)  # each value at its window's centre


def result_json(result: Result) -> dict[str, Any]:
    """What the page shows of a result, and where to fetch the rest (a performed score's tempo
    curve and tempo-map download: null for any other result)."""
    report = asdict(result.report)
    report["warnings"] = [warning.text for warning in result.report.warnings]
    base = f"/api/results/{result.id}"
    performed = result.rendering is not None
    return {
        "result": result.id, "name": result.upload.name, "download_name": result.download_name(), **report,
        "midi": f"{base}/midi", "rolls": f"{base}/rolls.png", "curve": f"{base}/curve.png",
        "audio_original": f"{base}/audio/original.ogg", "audio_humanized": f"{base}/audio/humanized.ogg",
        "tempo": f"{base}/tempo.png" if performed else None, "midi_tempo_map": f"{base}/midi?tempo_map=true" if performed else None,
        "download_name_tempo_map": result.download_name(tempo_map=True) if performed else None,
    }  # fmt: skip


def create_app(studio: Studio, host: str = DEFAULT_HOST) -> "FastAPI":
    """The HTTP face of `studio`: the page and its JSON API, answering only requests addressed to
    `host` or this machine's names (so a web page elsewhere cannot reach it by DNS rebinding)."""
    from fastapi import FastAPI, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.middleware.trustedhost import TrustedHostMiddleware
    from fastapi.responses import HTMLResponse, JSONResponse, Response

    from velocity.pipeline.audio import AudioError, AudioUnavailable

    app = FastAPI(title="velocity studio", docs_url=None, redoc_url=None, openapi_url=None)
    if host not in ("0.0.0.0", "::"):  # bound to every address: any name may reach it
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=sorted({"127.0.0.1", "localhost", "[::1]", host}))

    @app.exception_handler(StudioError)
    async def studio_error(request: Request, err: StudioError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return PAGE.read_text(encoding="utf-8")

    @app.get("/api/config")
    def config() -> dict[str, Any]:
        return studio.config()

    @app.post("/api/files")
    async def upload(request: Request, name: str = "upload.mid") -> dict[str, Any]:
        # The body is the file itself, read up to the limit (never a multipart form spooled to disk).
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > studio.max_upload_bytes:
            raise over_limit(name, int(declared), studio.max_upload_bytes)
        data = bytearray()
        async for chunk in request.stream():
            data += chunk
            if len(data) > studio.max_upload_bytes:
                raise over_limit(name, None, studio.max_upload_bytes)
        added = await run_in_threadpool(studio.add, name, bytes(data))
        return {"id": added.id, "name": added.name, "error": added.error}

    @app.post("/api/files/{upload_id}/humanize")
    async def humanize(upload_id: str, request: Request) -> dict[str, Any]:
        try:
            controls = controls_from(await request.json())
        except (ValueError, TypeError, AttributeError) as err:
            raise StudioError(f"bad controls: {err}") from None
        return result_json(await run_in_threadpool(studio.humanize, upload_id, controls))

    @app.get("/api/results/{result_id}/midi")
    def midi(result_id: str, tempo_map: bool = False) -> Response:
        data, name = studio.midi(result_id, tempo_map)
        return Response(data, media_type="audio/midi", headers=attachment(name))

    @app.get("/api/results/{result_id}/{which}.png")
    def figure(result_id: str, which: str) -> Response:
        return Response(studio.figure(result_id, which), media_type="image/png")

    @app.get("/api/results/{result_id}/audio/{which}.ogg")
    def audio(result_id: str, which: str, request: Request) -> Response:
        try:
            data = studio.audio(result_id, which)
        except AudioUnavailable as err:
            raise StudioError(str(err), 503) from None
        except AudioError as err:
            raise StudioError(str(err), 500) from None
        # Byte ranges: a browser reads an Ogg file's true length from its last page (without them
        # it estimates the duration from the bitrate, seconds off for a long piece) and seeks.
        try:
            span = byte_range(request.headers.get("range"), len(data))
        except ValueError:
            return Response(status_code=416, headers={"Content-Range": f"bytes */{len(data)}"})
        if span is None:
            return Response(data, media_type="audio/ogg", headers={"Accept-Ranges": "bytes"})
        first, last = span
        return Response(data[first : last + 1], status_code=206, media_type="audio/ogg",
                        headers={"Accept-Ranges": "bytes", "Content-Range": f"bytes {first}-{last}/{len(data)}"})  # fmt: skip

    @app.get("/api/zip")
    def zip_results(results: str) -> Response:
        ids = [result_id for result_id in results.split(",") if result_id]
        if not ids:
            raise StudioError("no results to download")
        return Response(studio.zip(ids), media_type="application/zip", headers=attachment("humanized.zip"))

    return app


# ---------------------------------------------------------------------------------------------
# The command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to serve on (default: {DEFAULT_PORT})")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default: {DEFAULT_HOST}, this machine only)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"model for performances (default: {DEFAULT_MODEL})")
    parser.add_argument("--score-model", type=Path, default=DEFAULT_SCORE_MODEL, help=f"model for scores (default: {DEFAULT_SCORE_MODEL})")
    parser.add_argument(
        "--timing-model", type=Path, default=DEFAULT_TIMING_MODEL,
        help=f"the page's perform switch, as `velocity predict --perform` (default: {DEFAULT_TIMING_MODEL}; without it the switch is off)",
    )  # fmt: skip
    parser.add_argument("--max-upload-mb", type=float, default=MAX_UPLOAD_MB, help=f"largest file accepted, in MB (default: {MAX_UPLOAD_MB:g})")


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from velocity.model.checkpoint import CheckpointError

    models = Models(args.model, args.score_model, args.timing_model)
    try:  # load now: the first upload should not wait for it, and a missing model is said at once
        models["performance"]
        if models.available("score"):
            models["score"]
        if args.timing_model.is_file():
            models.timing()
    except CheckpointError as err:
        log.error("%s", err)
        return 2
    try:  # a taken port is one line, before the address is printed
        with socket.create_server((args.host, args.port)):
            pass
    except OSError as err:
        why = os.strerror(err.errno) if err.errno else str(err)
        log.error("cannot serve on %s:%d (%s): choose another with --port", args.host, args.port, why)
        return 2
    studio = Studio(models, int(args.max_upload_mb * 1e6))
    if not models.available("score"):
        log.warning("no score model (%s): scores are read by the performance model; `dvc repro score_train` trains one", args.score_model)
    if not args.timing_model.is_file():
        log.warning("no timing model (%s): the page's perform switch is off; `dvc repro timing_train` trains one", args.timing_model)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: anyone who can reach this machine there can upload files (no login)", args.host)
    print(f"velocity studio: http://{args.host}:{args.port} (Ctrl+C to stop)", flush=True)
    uvicorn.run(create_app(studio, args.host), host=args.host, port=args.port, log_level="warning")
    return 0
