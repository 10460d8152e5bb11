"""Benchmark `velocity predict` on CPU: a 200,000-note performance, and `--perform` on a 16,000-note score.

    python bench/predict.py [--model models/velocity.pt] [--score-model models/score/velocity.pt]
        [--timing-model models/score/timing.pt] [--zip PATH] [--scores-zip PATH] [--notes 200000]
        [--score-notes 16000] [--threads N] [--repeat N] [--stand-ins DIR]

For issue 28 item 9 and issue 29's bound, with the real-data models of a trained run (e.g. /work/final):

    F=/work/final/models
    python bench/predict.py --model $F/velocity.pt --score-model $F/score/velocity.pt --timing-model $F/score/timing.pt --repeat 0

The goals, checked on the printed lines: the performance in at most 10 s and 500 MB peak resident
memory, the score with `--perform` in under 10 s, each in a fresh process on a 2-core machine.
Timings depend on what else runs: the load average is printed first, and each command's CPU
seconds (user + system) beside its wall time.

The performance is the archive's longest (pedals and tempo map kept), played again and again back
to back until it holds `--notes` notes, or cut to its first `--notes`. The score is the scores
archive's score with the most notes (Liszt's Sonata, 16,275), or a shorter one repeated bar-aligned
until it holds `--score-notes`. Without ../shared, both come from a generated demo corpus.

The models are the default files when they exist. When one is missing, all three are stand-ins:
params.yaml's defaults (shapes, ensembles, the score model's tree, the timing model's trees,
calibration) trained for 2 steps by `dvc repro train score_train timing_train` in a copy of the
project on a 10-piece demo corpus (kept in `--stand-ins DIR` for the next run when given): speed
and memory do not depend on the weights.

Prints the wall time, CPU time and peak resident memory of each `velocity predict` command in a
fresh process (Python and torch start-up and the model loads included): the performance; the score
plain and with `--perform`. Then (unless `--repeat 0`) the time of `predict_file` on the performance
in this process (read, quantize, decode every window, stitch, write), best of `--repeat`.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import pretty_midi
import symusic
import torch
import yaml

from velocity.model.decode import VelocityModel, load_velocity_model
from velocity.model.decodings import DECODINGS, DEFAULT_DECODING
from velocity.pipeline.humanize import Controls, predict_file
from velocity.model.notes import read_piece
from velocity.stages.bins import BinsParams, learn_bins
from velocity.params import load
from velocity.stages.train import ModelParams
from velocity.stages.vocab import build_vocab

ROOT = Path(__file__).resolve().parents[1]
FULL_ZIP = ROOT.parent / "shared" / "data" / "maestro-v3.0.0-asap-midi.zip"
SCORES_ZIP = ROOT.parent / "shared" / "data" / "asap-maestro-v3.0.0-scores.zip"
# What a throwaway project copy needs (as tests/conftest.py's make_project): the code and the pipeline.
PROJECT_FILES = ["dvc.yaml", "params.yaml", "pyproject.toml", "downloads.lock.json", "velocity"]
# The stand-in models: params.yaml's defaults, 2 steps each, on a 10-piece demo corpus.
STAND_IN_PARAMS = {
    "data": {"source": "demo", "scores": "demo", "demo_pieces": 10},
    "train": {"max_steps": 2, "eval_every": 2, "checkpoint_every": 2, "device": "cpu"},
    "score_train": {"train": {"max_steps": 2}},
    "timing_train": {"train": {"max_steps": 2, "eval_every": 2, "checkpoint_every": 2, "device": "cpu"}},
}


def make_piece(zip_path: Path, n_notes: int, out: Path) -> Path:
    """The archive's longest performance repeated (or cut) to exactly `n_notes` notes, as a MIDI file."""
    with zipfile.ZipFile(zip_path) as archive:
        names = [n for n in archive.namelist() if n.endswith((".mid", ".midi"))]
        return repeat_performance({n: archive.read(n) for n in names}, n_notes, out)


def note_count(data: bytes) -> int:
    return sum(len(t.notes) for t in symusic.Score.from_midi(data).tracks)


def repeat_performance(files: dict[str, bytes], n_notes: int, out: Path) -> Path:
    """The longest of `files` (name -> MIDI bytes) repeated (or cut) to exactly `n_notes` notes."""
    counts = {name: note_count(data) for name, data in files.items()}
    longest = max(counts, key=counts.get)
    out.write_bytes(files[longest])
    midi = pretty_midi.PrettyMIDI(str(out))
    piano = midi.instruments[0]
    one = sorted(piano.notes, key=lambda note: (note.start, note.pitch))
    pedal = list(piano.control_changes)
    length = max(note.end for note in one) + 1.0
    notes, controls, copy = [], [], 0
    while len(notes) < n_notes:  # the performance again after a second's pause
        shift = copy * length
        notes += [pretty_midi.Note(n.velocity, n.pitch, n.start + shift, n.end + shift) for n in one]
        controls += [pretty_midi.ControlChange(c.number, c.value, c.time + shift) for c in pedal]
        copy += 1
    piano.notes, piano.control_changes = notes[:n_notes], [c for c in controls if c.time <= notes[n_notes - 1].end]
    midi.write(str(out))
    print(f"piece: {n_notes:,} notes, {copy} pass(es) over {longest} ({counts[longest]:,} notes), "
          f"{out.stat().st_size / 1e6:.1f} MB, {notes[n_notes - 1].end / 3600:.1f} h")  # fmt: skip
    return out


def repeat_score(files: dict[str, bytes], n_notes: int, out: Path) -> Path:
    """The score of `files` (name -> MIDI bytes) with the most notes, whole; when it holds fewer than
    `n_notes`, its events played again from the next bar line of 12 beats (a 3/4 and a 4/4 bar line
    both) until it holds at least that many."""
    import mido

    counts = {name: note_count(data) for name, data in files.items()}
    name = max(counts, key=counts.get)
    song = mido.MidiFile(file=io.BytesIO(files[name]))
    copies = -(-n_notes // counts[name])
    if copies > 1:
        events = []  # (track, absolute tick, message) without the tracks' ends
        for t, track in enumerate(song.tracks):
            tick = 0
            for message in track:
                tick += message.time
                if message.type != "end_of_track":
                    events.append((t, tick, message))
        bar = 12 * song.ticks_per_beat
        length = -(-max(tick for _, tick, _ in events) // bar) * bar
        for t, track in enumerate(song.tracks):
            mine = sorted(((tick + k * length, i, m) for k in range(copies) for i, (tt, tick, m) in enumerate(events) if tt == t
                           and (k == 0 or not m.is_meta or m.type in ("set_tempo", "time_signature"))), key=lambda e: (e[0], e[1]))  # fmt: skip
            rebuilt, previous = mido.MidiTrack(), 0
            for tick, _, message in mine:
                rebuilt.append(message.copy(time=tick - previous))
                previous = tick
            rebuilt.append(mido.MetaMessage("end_of_track", time=0))
            song.tracks[t] = rebuilt
    song.save(str(out))
    print(f"score: {note_count(out.read_bytes()):,} notes, {copies} pass(es) over {name} ({counts[name]:,} notes)")
    return out


def stand_in_models(tmp: Path) -> tuple[Path, Path, Path, Path]:
    """params.yaml's default models trained for 2 steps on a 10-piece demo corpus, through `dvc repro`
    in a copy of the project under `tmp`: (the performance, score and timing model files, the project).
    A project already there with its three models (an earlier run's `--stand-ins`) is used again."""
    project = tmp / "project"
    models = project / "models/velocity.pt", project / "models/score/velocity.pt", project / "models/score/timing.pt"
    if all(path.is_file() for path in models):
        print(f"stand-in models: {project} (an earlier run's)")
        return (*models, project)
    project.mkdir(parents=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, project / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, project / name)
    params = yaml.safe_load((project / "params.yaml").read_text())
    for section, values in STAND_IN_PARAMS.items():
        for key, value in values.items():
            if isinstance(value, dict):
                params[section][key] = {**(params[section].get(key) or {}), **value}
            else:
                params[section][key] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(project),
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}  # fmt: skip
    began = time.perf_counter()
    for cmd in (["git", "init", "-q"], [sys.executable, "-m", "dvc", "init", "-q"],
                [sys.executable, "-m", "dvc", "repro", "train", "score_train", "timing_train"]):  # fmt: skip
        proc = subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    print(f"stand-in models: params.yaml's defaults, 2 steps each, on a 10-piece demo corpus (dvc repro: {time.perf_counter() - began:.0f} s)")
    return (*models, project)


def demo_files(project: Path, pattern: str) -> dict[str, bytes]:
    return {str(path.relative_to(project)): path.read_bytes() for path in sorted(project.glob(pattern))}


def untrained_default_model(piece: Path, path: Path) -> VelocityModel:
    """params.yaml's shape and features, untrained, with bins learned on `piece`; saved to `path`."""
    from velocity.model.checkpoint import save_checkpoint
    from velocity.model.features import feature_sizes, learn_feature_edges
    from velocity.model.transformer import ModelConfig, build_model

    shape = load(ModelParams, "model", ROOT / "params.yaml")
    features = yaml.safe_load((ROOT / "params.yaml").read_text())["features"] or {}
    notes = read_piece(piece).notes
    bins = learn_bins(notes, BinsParams(dstart=3, duration=3, velocity=3, fixed_edges=None))
    bins["features"] = learn_feature_edges(notes, features)
    vocab = build_vocab(bins, velocity_hint=False)
    torch.manual_seed(0)
    config = ModelConfig(src_vocab=len(vocab.src), tgt_vocab=len(vocab.tgt), max_len=128, **vars(shape),
                         features=feature_sizes(bins["features"]))  # fmt: skip
    save_checkpoint(path, {
        "kind": "velocity-transformer", "model": build_model(config).state_dict(), "model_config": config.to_dict(),
        "vocab": vocab.to_dict(), "bins": bins, "windows": {"length": 128, "step": 64}, "train": {"seed": 0},
    })  # fmt: skip
    return load_velocity_model(path)


# The bounds of issue 28 item 9 (the performance) and issue 29 (the score with --perform).
GOALS = {"performance": (10.0, 500.0), "score --perform": (10.0, None)}  # wall seconds, peak MB


# Runs the command it is given and writes its peak RSS (KiB) and CPU seconds to the file named first.
# A child's peak starts at its parent's resident memory when it forks (this bench's: torch, the model,
# the pieces), so the command is forked from this small interpreter instead.
LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as out:
    out.write(f"{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss_mb_of(cmd: list[str], env: dict[str, str] | None) -> tuple[float, float, float]:
    """Wall seconds, CPU seconds (user + system) and peak resident memory (MB) of `cmd` run in a fresh
    process (its own peak, through LAUNCHER: not this bench's memory, nor the largest of every child)."""
    began = time.perf_counter()
    with tempfile.TemporaryFile() as log, tempfile.NamedTemporaryFile("r") as figures:
        process = subprocess.run([sys.executable, "-c", LAUNCHER, figures.name, *cmd], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env)
        seconds = time.perf_counter() - began
        if process.returncode != 0:
            log.seek(0)
            raise SystemExit(f"{' '.join(cmd)} failed ({process.returncode}):\n{log.read().decode()[-3000:]}")
        peak_kib, cpu = figures.read().split()
    return seconds, float(cpu), int(peak_kib) / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "velocity.pt")
    parser.add_argument("--score-model", type=Path, default=ROOT / "models" / "score" / "velocity.pt")
    parser.add_argument("--timing-model", type=Path, default=ROOT / "models" / "score" / "timing.pt")
    parser.add_argument("--zip", type=Path, default=FULL_ZIP)
    parser.add_argument("--scores-zip", type=Path, default=SCORES_ZIP)
    parser.add_argument("--notes", type=int, default=200_000)
    parser.add_argument("--score-notes", type=int, default=16_000)
    parser.add_argument("--repeat", type=int, default=1, help="predict_file runs in this process after the commands (0: none)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--decoding", choices=list(DECODINGS), default=DEFAULT_DECODING)
    parser.add_argument("--stand-ins", type=Path, default=None, metavar="DIR",
                        help="build the stand-in models (when a model is missing) in DIR and keep them there for the next run")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        models = args.model, args.score_model, args.timing_model
        project = None
        if all(path.is_file() for path in models):
            print(f"models: {', '.join(map(str, models))}")
        else:
            print(f"models: {', '.join(str(path) for path in models if not path.is_file())} not found; stand-ins of the same shape")
            *models, project = stand_in_models(args.stand_ins or tmp)
        model_path, score_model, timing_model = models
        if args.zip.is_file():
            piece = make_piece(args.zip, args.notes, tmp / "piece.mid")
        else:
            print(f"{args.zip} not found: the demo corpus's longest performance instead")
            project = project or stand_in_models(args.stand_ins or tmp)[-1]
            piece = repeat_performance(demo_files(project, "data/raw/maestro-v3.0.0/*/*.midi"), args.notes, tmp / "piece.mid")
        if args.scores_zip.is_file():
            with zipfile.ZipFile(args.scores_zip) as archive:
                scores = {n: archive.read(n) for n in archive.namelist() if n.endswith("midi_score.mid")}
        else:
            print(f"{args.scores_zip} not found: the demo corpus's longest score instead")
            project = project or stand_in_models(args.stand_ins or tmp)[-1]
            scores = demo_files(project, "data/raw_scores/asap-dataset/**/midi_score.mid")
        score = repeat_score(scores, args.score_notes, tmp / "score.mid")

        began = time.perf_counter()
        model = load_velocity_model(model_path)
        decoding = args.decoding
        print(f"model: {model_path} (loaded in {time.perf_counter() - began:.2f} s)")
        cfg = model.model.cfg
        print(f"shape: {cfg.kind}, {cfg.layers} layers, d_model {cfg.d_model}, d_ff {cfg.d_ff}, {cfg.heads} heads, "
              f"{model.model.num_params():,} parameters; windows {model.length}/{model.step}; torch threads {torch.get_num_threads()}")  # fmt: skip

        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)} if args.threads else None  # same threads as below
        predict = [sys.executable, "-m", "velocity.pipeline", "predict"]
        runs = {
            f"performance, {args.notes:,} notes": [str(piece), "-o", str(tmp / "cli.mid"), "--model", str(model_path)],
            "score": [str(score), "-o", str(tmp / "score_cli.mid"), "--model", str(model_path), "--score-model", str(score_model)],
            "score --perform": [str(score), "-o", str(tmp / "perform_cli.mid"), "--model", str(model_path), "--score-model", str(score_model),
                                "--timing-model", str(timing_model), "--perform"],
        }  # fmt: skip
        print(f"load average before the commands: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
        for what, arguments in runs.items():
            seconds, cpu, peak_mb = peak_rss_mb_of([*predict, *arguments, "--decoding", decoding], env)
            goal = GOALS.get(what.split(",")[0])
            verdict = ""
            if goal:
                met = seconds <= goal[0] and (goal[1] is None or peak_mb <= goal[1])
                verdict = f" [goal: <= {goal[0]:g} s" + (f", <= {goal[1]:g} MB" if goal[1] else "") + f": {'met' if met else 'NOT met'}]"
            print(f"velocity predict {what} ({decoding}, fresh process, imports and model loads included): {seconds:.1f} s wall, "
                  f"{cpu:.1f} s CPU, peak RSS {peak_mb:,.0f} MB{verdict}")  # fmt: skip
        if args.repeat < 1:
            return

        times = []
        for _ in range(args.repeat):
            report = predict_file(piece, tmp / "out.mid", model, Controls(decoding=decoding))
            times.append(report.seconds)
        best, median = min(times), statistics.median(times)
        print(f"predict_file ({decoding}): {report.predicted:,} notes in {best:.2f} s best, {median:.2f} s median "
              f"-> {report.predicted / best:,.0f} notes/s (best)")  # fmt: skip


if __name__ == "__main__":
    main()
