"""Training throughput of the Velocity Transformer: tokens per second, and on CUDA also model FLOPs
utilization and the time of one epoch over the given windows.

    python bench/train.py                                   # default config, synthetic windows, CPU/auto
    python bench/train.py --preset seed --device cuda --windows data/windows
    python bench/train.py --windows data/windows --epoch     # actually time a whole epoch

A "token" is one note: a (source, target) position that is not padding. FLOPs per token are
estimated as 6 * (non-embedding parameters) for the matmuls, forward and backward, plus the
attention scores and weighted sums: 12 * T * d_model per encoder layer (self-attention) and
24 * T * d_model per decoder layer (self- and cross-attention), T = window length.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.runtime import pick_device, seed_everything  # noqa: E402
from model.training import SEED_PRESET, TrainConfig, Windows, make_optimizer, train_step  # noqa: E402
from model.transformer import ModelConfig, build_model  # noqa: E402
from stages import params as params_lib  # noqa: E402

# Dense bf16 tensor-core peaks (TFLOP/s) for MFU; --peak-tflops overrides.
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10": 125.0, "V100": 125.0, "T4": 65.0}


def preset_params(preset: str, params_file: Path) -> tuple[dict, dict]:
    """(model, train) sections: params.yaml's, with the seed's values laid over them for `seed`."""
    params = params_lib.read_params(params_file)
    model, train = dict(params["model"]), dict(params["train"])
    if preset == "seed":
        model.update(SEED_PRESET["model"])
        train.update(SEED_PRESET["train"])
    return model, train


def synthetic_windows(n: int, length: int, src_vocab: int, seed: int = 0) -> Windows:
    rng = np.random.default_rng(seed)
    src = rng.integers(3, src_vocab, size=(n, length), dtype=np.int64).astype(np.int16)
    tgt = rng.integers(3 + 30, 3 + 100, size=(n, length), dtype=np.int64).astype(np.int16)
    return Windows(src, tgt, name="synthetic")


def flops_per_token(model: torch.nn.Module, cfg: ModelConfig, length: int) -> float:
    embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    matmul = 6 * (sum(p.numel() for p in model.parameters()) - sum(e.weight.numel() for e in embeddings))
    attention = cfg.layers * (12 + (24 if cfg.kind == "encoder-decoder" else 0)) * length * cfg.d_model
    return float(matmul + attention)


def peak_flops(device: torch.device, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    parser.add_argument("--preset", choices=("default", "seed"), default="default", help="params.yaml's model, or the seed's")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--windows", type=Path, help="a data/windows folder (train split); default: synthetic windows")
    parser.add_argument("--synthetic", type=int, default=2048, help="synthetic windows when --windows is not given")
    parser.add_argument("--length", type=int, default=128, help="synthetic window length")
    parser.add_argument("--src-vocab", type=int, default=795, help="synthetic source vocabulary (the seed's: 795)")
    parser.add_argument("--batch-size", type=int, help="override the preset's batch size")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed steps first")
    parser.add_argument("--epoch", action="store_true", help="also time one whole epoch over the windows")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--peak-tflops", type=float, help="peak FLOP/s of the device for MFU, in TFLOP/s")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    device = pick_device(args.device)
    model_params, train_params = preset_params(args.preset, args.params)
    batch_size = args.batch_size or int(train_params["batch_size"])
    accum = int(train_params["accum"])
    if args.windows:
        windows = Windows.load(args.windows, "train")
        vocab_path = args.windows.parent / "vocab.json"
        src_vocab = len(json.loads(vocab_path.read_text())["src"]) if vocab_path.exists() else args.src_vocab
        # Feature vocabularies from the windows' own ids (the largest id + 1 per feature).
        features = tuple(int(n) + 1 for n in np.asarray(windows.features[:2048]).reshape(-1, windows.n_features).max(axis=0)) if windows.n_features else ()
    else:
        windows = synthetic_windows(args.synthetic, args.length, args.src_vocab)
        src_vocab, features = args.src_vocab, ()
    if args.preset == "seed":
        windows = Windows(windows.src, windows.tgt, name=windows.name)  # the seed's model reads no features
        features = ()
    seed_everything(0)
    cfg = ModelConfig(src_vocab=src_vocab, tgt_vocab=131, max_len=windows.length, features=features, **model_params)
    train_cfg = TrainConfig(**{k: v for k, v in train_params.items() if k in {f.name for f in fields(TrainConfig)}})
    model = build_model(cfg).to(device)
    optimizer = make_optimizer(model)
    fpt = flops_per_token(model, cfg, windows.length)

    rng = np.random.default_rng(0)

    def step() -> int:
        batches = [windows.batch(rng.integers(0, len(windows), batch_size), device) for _ in range(accum)]
        _, n_tokens = train_step(model, optimizer, batches, 1e-4, train_cfg, device)
        return n_tokens

    print(f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else f', {torch.get_num_threads()} threads'}; "
          f"autocast {'bf16' if device.type == 'cuda' else 'off (fp32)'}")
    print(f"preset {args.preset}: {cfg.kind}, {len(cfg.features)} note features, layers {cfg.layers}, heads {cfg.heads}, d_model {cfg.d_model}, d_ff {cfg.d_ff}; "
          f"{model.num_params():,} parameters; batch {batch_size} x accum {accum} windows of {windows.length}")
    print(f"data: {windows.name}, {len(windows):,} windows")
    for _ in range(args.warmup_steps):
        step()
    sync(device)
    start, tokens = time.perf_counter(), 0
    for _ in range(args.steps):
        tokens += step()
    sync(device)
    seconds = time.perf_counter() - start
    tokens_per_s = tokens / seconds
    step_s = seconds / args.steps
    print(f"{args.steps} optimizer steps in {seconds:.2f} s: {step_s * 1000:.1f} ms/step, {tokens_per_s:,.0f} tokens/s (notes, padding excluded)")
    achieved = tokens_per_s * fpt
    print(f"model FLOPs: {fpt / 1e6:.1f} MFLOP/token -> {achieved / 1e12:.3f} TFLOP/s achieved")
    peak = peak_flops(device, args.peak_tflops)
    if peak:
        print(f"MFU {100 * achieved / peak:.1f}% of {peak / 1e12:.0f} TFLOP/s peak")
    steps_per_epoch = math.ceil(len(windows) / batch_size) / accum
    print(f"one epoch over {len(windows):,} windows: {steps_per_epoch:,.0f} steps, estimated {steps_per_epoch * step_s / 60:.1f} min")

    if args.epoch:
        order = np.random.default_rng(1).permutation(len(windows))
        sync(device)
        start = time.perf_counter()
        for first in range(0, len(order), batch_size * accum):
            chunk = order[first : first + batch_size * accum]
            batches = [windows.batch(chunk[i : i + batch_size], device) for i in range(0, len(chunk), batch_size)]
            train_step(model, optimizer, batches, 1e-4, train_cfg, device)
        sync(device)
        print(f"one epoch measured: {(time.perf_counter() - start) / 60:.2f} min")


if __name__ == "__main__":
    main()
