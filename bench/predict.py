"""Benchmark `velocity predict` on a 10,000-note piece, on CPU.

    python bench/predict.py [--model models/velocity.pt] [--zip PATH] [--notes 10000] [--threads N]

The piece is the first `--notes` notes of the longest performance in the shared MAESTRO archive
(pedals and tempo map kept). The model is `--model` when that file exists; otherwise an untrained
model of params.yaml's `model:` shape with window geometry 128/64 and bins learned on the piece
itself (speed does not depend on the weights). Prints the time of `predict_file` (read, quantize,
batched greedy decoding of every window, stitch, write) as notes per second, best of `--repeat`,
and the wall time of the whole `velocity predict` command in a fresh process (Python and torch
start-up included).
"""

from __future__ import annotations

import argparse
import os
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

from model.pieces import DECODINGS, VelocityModel, load_velocity_model
from pipeline.predict import DEFAULT_DECODING, predict_file
from stages.extract import read_piece
from stages.bins import BinsParams, learn_bins
from stages.params import load
from stages.train import ModelParams
from stages.vocab import build_vocab

ROOT = Path(__file__).resolve().parents[1]
FULL_ZIP = ROOT.parent / "shared" / "data" / "maestro-v3.0.0-asap-midi.zip"


def make_piece(zip_path: Path, n_notes: int, out: Path) -> Path:
    """The first `n_notes` notes of the archive's longest performance, as a MIDI file."""
    with zipfile.ZipFile(zip_path) as archive:
        names = [n for n in archive.namelist() if n.endswith((".mid", ".midi"))]
        counts = {n: sum(len(t.notes) for t in symusic.Score.from_midi(archive.read(n)).tracks) for n in names}
        longest = max(names, key=counts.get)
        if counts[longest] < n_notes:
            raise SystemExit(f"{zip_path}: the longest performance has {counts[longest]} notes, fewer than {n_notes}")
        out.write_bytes(archive.read(longest))
    midi = pretty_midi.PrettyMIDI(str(out))
    piano = midi.instruments[0]
    piano.notes = sorted(piano.notes, key=lambda note: (note.start, note.pitch))[:n_notes]
    midi.write(str(out))
    print(f"piece: first {n_notes:,} notes of {longest} ({counts[longest]:,} notes)")
    return out


def untrained_default_model(piece: Path) -> VelocityModel:
    from model.transformer import ModelConfig, build_model

    shape = load(ModelParams, "model", ROOT / "params.yaml")
    notes = read_piece(piece).notes
    bins = learn_bins(notes, BinsParams(dstart=3, duration=3, velocity=3))
    vocab = build_vocab(bins, velocity_hint=False)
    config = ModelConfig(src_vocab=len(vocab.src), tgt_vocab=len(vocab.tgt), max_len=128, **vars(shape))
    torch.manual_seed(0)
    model = build_model(config).eval()
    return VelocityModel(model, bins, vocab, length=128, step=64, checkpoint={"model_config": config.to_dict()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "velocity.pt")
    parser.add_argument("--zip", type=Path, default=FULL_ZIP)
    parser.add_argument("--notes", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    parser.add_argument("--decoding", choices=list(DECODINGS), default=DEFAULT_DECODING)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        piece = make_piece(args.zip, args.notes, Path(tmp) / "piece.mid")
        if args.model.exists():
            began = time.perf_counter()
            model = load_velocity_model(args.model)
            print(f"model: {args.model} (loaded in {time.perf_counter() - began:.2f} s)")
        else:
            model = untrained_default_model(piece)
            print(f"model: {args.model} not found; an untrained model of params.yaml's shape")
        cfg = model.model.cfg
        print(f"shape: {cfg.layers} layers, d_model {cfg.d_model}, d_ff {cfg.d_ff}, {cfg.heads} heads, "
              f"{model.model.num_params():,} parameters; windows {model.length}/{model.step}; torch threads {torch.get_num_threads()}")  # fmt: skip

        seconds = []
        for _ in range(args.repeat):
            report = predict_file(piece, Path(tmp) / "out.mid", model, decoding=args.decoding)
            seconds.append(report.seconds)
        best, median = min(seconds), statistics.median(seconds)
        print(f"predict_file ({args.decoding}): {report.predicted:,} notes in {best:.2f} s best, {median:.2f} s median "
              f"-> {report.predicted / best:,.0f} notes/s (best), {report.predicted / median:,.0f} notes/s (median)")  # fmt: skip

        if args.model.exists():
            began = time.perf_counter()
            cmd = [sys.executable, "-m", "pipeline", "predict", str(piece), "-o", str(Path(tmp) / "cli.mid"), "--model", str(args.model), "--decoding", args.decoding]
            env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)} if args.threads else None  # same threads as above
            subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT, env=env)
            print(f"velocity predict (fresh process, imports and model load included): {time.perf_counter() - began:.2f} s")


if __name__ == "__main__":
    main()
