"""Benchmark `velocity studio` on a warm server: a 10,000-note file from upload to humanized result,
a control moved, and the audio render.

    python bench/studio.py [--model models/velocity.pt] [--zip PATH] [--notes 10000] [--repeat 3] [--threads N]

The piece is made as bench/predict.py makes it (the archive's longest performance, cut to
`--notes`); the model is `--model` when it exists, else an untrained one of params.yaml's shape
(speed does not depend on the weights). The server is the real command in its own process, on a
free port, warmed by one upload first. Each timed upload is a new file for the server, so its
prediction is not cached. Prints, best and median of `--repeat`:
- upload -> result: POST the file, POST the controls, until the JSON result (what the page waits
  for before it shows the numbers);
- upload -> figures: the same, plus both figures fetched (what the page waits for to draw it);
- control moved: new strength, same upload (the prediction is reused), result and figures;
- audio: the first request for the humanized file's audio (FluidSynth renders it as Ogg Vorbis).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from predict import FULL_ZIP, ROOT, make_piece, untrained_default_model


def post(url: str, data: bytes, content_type: str = "application/octet-stream") -> dict:
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=600) as response:
        return json.load(response)


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=600) as response:
        return response.read()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def humanize(base: str, piece: bytes, name: str, controls: dict, figures: bool) -> tuple[float, dict]:
    began = time.perf_counter()
    upload = post(f"{base}/api/files?name={name}", piece)
    result = post(f"{base}/api/files/{upload['id']}/humanize", json.dumps(controls).encode(), "application/json")
    if figures:
        get(base + result["rolls"]), get(base + result["curve"])
    return time.perf_counter() - began, {**result, "upload": upload["id"]}


def summary(times: list[float]) -> str:
    return f"{min(times):.2f} s best, {statistics.median(times):.2f} s median of {len(times)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "velocity.pt")
    parser.add_argument("--zip", type=Path, default=FULL_ZIP)
    parser.add_argument("--notes", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="the server's torch threads (default: torch's choice)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        piece_path = make_piece(args.zip, args.notes, Path(tmp) / "piece.mid")
        piece = piece_path.read_bytes()
        model, decoding = args.model, "pianist"
        if not model.exists():
            model, decoding = Path(tmp) / "untrained.pt", "averaged"  # no calibration to stretch with
            untrained_default_model(piece_path, model)
            print(f"model: {args.model} not found; an untrained model of params.yaml's shape")
        else:
            print(f"model: {model}")
        port = free_port()
        env = {**os.environ, **({"OMP_NUM_THREADS": str(args.threads)} if args.threads else {})}
        server = subprocess.Popen(
            [sys.executable, "-m", "velocity.pipeline", "studio", "--port", str(port), "--model", str(model), "--score-model", str(Path(tmp) / "none.pt")],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )  # fmt: skip
        try:
            print(server.stdout.readline().strip())  # printed before uvicorn binds: wait until it answers
            base = f"http://127.0.0.1:{port}"
            while True:
                try:
                    get(f"{base}/api/config")
                    break
                except OSError:
                    if server.poll() is not None:
                        raise SystemExit("the studio did not start") from None
                    time.sleep(0.2)
            controls = {"decoding": decoding, "strength": 1.0}
            began = time.perf_counter()
            humanize(base, piece, "warm-up.mid", controls, figures=True)  # the first request pays for lazy imports
            print(f"warm-up (first request after start): {time.perf_counter() - began:.2f} s")

            results, figures, moved, audio = [], [], [], []
            for copy in range(args.repeat):
                seconds, _ = humanize(base, piece, f"piece-{copy}.mid", controls, figures=False)
                results.append(seconds)
                seconds, result = humanize(base, piece, f"piece-{copy}-figures.mid", controls, figures=True)
                figures.append(seconds)
                began = time.perf_counter()
                again = post(f"{base}/api/files/{result['upload']}/humanize", json.dumps({**controls, "strength": 0.5}).encode(), "application/json")
                get(base + again["rolls"]), get(base + again["curve"])
                moved.append(time.perf_counter() - began)
                began = time.perf_counter()
                ogg = get(base + result["audio_humanized"])
                audio.append(time.perf_counter() - began)
            print(f"piece: {result['predicted']:,} notes predicted ({decoding})")
            print(f"upload -> result: {summary(results)}")
            print(f"upload -> result and both figures: {summary(figures)}")
            print(f"control moved -> result and both figures: {summary(moved)}")
            print(f"audio render (Ogg Vorbis, {len(ogg) / 1e6:.1f} MB): {summary(audio)}")
        finally:
            server.terminate()
            server.wait(timeout=30)


if __name__ == "__main__":
    main()
