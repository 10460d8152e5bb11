"""Benchmark `velocity predict` on a 200,000-note file, on CPU: seconds and peak memory.

    python bench/predict.py [--model models/velocity.pt] [--zip PATH] [--notes 200000] [--threads N]

The piece is the archive's longest performance (pedals and tempo map kept), played again and again
back to back until it holds `--notes` notes, or cut to its first `--notes`. The model is `--model`
when that file exists; otherwise an untrained model of params.yaml's `model:` shape and features
with window geometry 128/64, bins learned on the piece itself, written to a temporary model file
(speed and memory do not depend on the weights; it has no calibration, so that run decodes
`averaged`, which is `pianist` without the final stretch). Prints the time of `predict_file` (read,
quantize, decode every window, stitch, write) best of `--repeat`, and the wall time and peak
resident memory of the whole `velocity predict` command in a fresh process (Python and torch
start-up and the model load included).
"""

from __future__ import annotations

import argparse
import os
import resource
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


def make_piece(zip_path: Path, n_notes: int, out: Path) -> Path:
    """The archive's longest performance repeated (or cut) to exactly `n_notes` notes, as a MIDI file."""
    with zipfile.ZipFile(zip_path) as archive:
        names = [n for n in archive.namelist() if n.endswith((".mid", ".midi"))]
        counts = {n: sum(len(t.notes) for t in symusic.Score.from_midi(archive.read(n)).tracks) for n in names}
        longest = max(names, key=counts.get)
        out.write_bytes(archive.read(longest))
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


def peak_rss_mb_of(cmd: list[str], env: dict[str, str] | None) -> tuple[float, float]:
    """Wall seconds and peak resident memory (MB) of `cmd` run in a fresh process."""
    began = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, env=env)
    seconds = time.perf_counter() - began
    return seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # Linux: KiB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "velocity.pt")
    parser.add_argument("--zip", type=Path, default=FULL_ZIP)
    parser.add_argument("--notes", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--decoding", choices=list(DECODINGS), default=DEFAULT_DECODING)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        piece = make_piece(args.zip, args.notes, Path(tmp) / "piece.mid")
        model_path, decoding = args.model, args.decoding
        if args.model.exists():
            began = time.perf_counter()
            model = load_velocity_model(args.model)
            print(f"model: {args.model} (loaded in {time.perf_counter() - began:.2f} s)")
        else:
            model_path = Path(tmp) / "untrained.pt"
            model = untrained_default_model(piece, model_path)
            decoding = "averaged" if decoding == "pianist" else decoding  # no calibration to stretch with
            print(f"model: {args.model} not found; an untrained model of params.yaml's shape and features")
        cfg = model.model.cfg
        print(f"shape: {cfg.kind}, {cfg.layers} layers, d_model {cfg.d_model}, d_ff {cfg.d_ff}, {cfg.heads} heads, "
              f"{model.model.num_params():,} parameters; windows {model.length}/{model.step}; torch threads {torch.get_num_threads()}")  # fmt: skip

        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)} if args.threads else None  # same threads as below
        cmd = [sys.executable, "-m", "velocity.pipeline", "predict", str(piece), "-o", str(Path(tmp) / "cli.mid"),
               "--model", str(model_path), "--decoding", decoding]  # fmt: skip
        seconds, peak_mb = peak_rss_mb_of(cmd, env)
        print(f"velocity predict ({decoding}, fresh process, imports and model load included): {seconds:.1f} s, "
              f"peak RSS {peak_mb:,.0f} MB")  # fmt: skip

        times = []
        for _ in range(args.repeat):
            report = predict_file(piece, Path(tmp) / "out.mid", model, Controls(decoding=decoding))
            times.append(report.seconds)
        best, median = min(times), statistics.median(times)
        print(f"predict_file ({decoding}): {report.predicted:,} notes in {best:.2f} s best, {median:.2f} s median "
              f"-> {report.predicted / best:,.0f} notes/s (best)")  # fmt: skip


if __name__ == "__main__":
    main()
