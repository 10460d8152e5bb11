"""Training throughput of the Velocity Transformer through the real training loop (velocity/model/harness.py):
tokens per second for 1 or more processes (DistributedDataParallel through torchrun), and on
CUDA also model FLOPs utilization.

    python bench/train.py                                   # default config, synthetic windows, 1 process
    python bench/train.py --processes 2                        # 2 processes (gloo on CPU, NCCL on CUDA)
    python bench/train.py --preset seed --device cuda --windows data/windows

A "token" is one note: a (source, target) position that is not padding. FLOPs per token are
estimated as 6 * (non-embedding parameters) for the matmuls, forward and backward, plus the
attention scores and weighted sums: 12 * T * d_model per encoder layer (self-attention) and
24 * T * d_model per decoder layer (self- and cross-attention), T = window length. The timed steps
follow untimed warm-up steps; one validation pass and one checkpoint write come after them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from velocity.model.harness import LoopConfig, distributed_from_env, fit, launch_processes  # noqa: E402
from velocity.model.runtime import seed_everything  # noqa: E402
from velocity.model.training import SEED_PRESET, TrainConfig, VelocityTask, Windows  # noqa: E402
from velocity.model.transformer import ModelConfig, build_model  # noqa: E402
from velocity import params as params_lib  # noqa: E402

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
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--processes", type=int, default=1, help="processes on this machine (torchrun; default 1)")
    parser.add_argument("--preset", choices=("default", "seed"), default="default", help="params.yaml's model, or the seed's")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--windows", type=Path, help="a data/windows folder (train split); default: synthetic windows")
    parser.add_argument("--synthetic", type=int, default=2048, help="synthetic windows when --windows is not given")
    parser.add_argument("--length", type=int, default=128, help="synthetic window length")
    parser.add_argument("--src-vocab", type=int, default=795, help="synthetic source vocabulary (the seed's: 795)")
    parser.add_argument("--batch-size", type=int, help="override the preset's batch size (per process)")
    parser.add_argument("--steps", type=int, default=20, help="timed optimizer steps")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed steps first")
    parser.add_argument("--compile", action="store_true", help="torch.compile the network")
    parser.add_argument("--loader-workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--peak-tflops", type=float, help="peak FLOP/s of the device for MFU, in TFLOP/s")
    args = parser.parse_args(argv)
    if args.processes > 1 and "WORLD_SIZE" not in os.environ:
        sys.exit(launch_processes(args.processes, [__file__, *(sys.argv[1:] if argv is None else argv)]))

    dist = distributed_from_env()
    model_params, train_params = preset_params(args.preset, args.params)
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
    known = {f.name for f in fields(TrainConfig)}
    train_cfg = TrainConfig(**{**{k: v for k, v in train_params.items() if k in known}, "device": args.device, "eval_windows": 16,
                               **({"batch_size": args.batch_size} if args.batch_size else {})})
    seed_everything(0)
    cfg = ModelConfig(src_vocab=src_vocab, tgt_vocab=131, max_len=windows.length, features=features, **model_params)
    model = build_model(cfg)
    task = VelocityTask(cfg, train_cfg, windows, windows)
    total = args.warmup_steps + args.steps
    loop = LoopConfig(steps=total, batch_size=train_cfg.batch_size, accum=train_cfg.accum, eval_every=total, checkpoint_every=total,
                      seed=0, device=args.device, compile=args.compile, loader_workers=args.loader_workers, progress=False,
                      ema=train_cfg.ema)  # the weights' moving average is part of a training step
    marks: dict[int, float] = {}

    def on_step(step: int) -> None:
        if step in (args.warmup_steps, total):
            sync(next(model.parameters()).device)  # where fit put the model
            marks[step] = time.perf_counter()

    with tempfile.TemporaryDirectory() as checkpoints:
        fit(task, model, loop, checkpoints, "bench", dist=dist, on_step=on_step)
    if not dist.is_main:
        return
    device = next(model.parameters()).device
    seconds = marks[total] - marks[args.warmup_steps]
    notes_per_window = float((np.asarray(windows.tgt[:4096]) != 0).sum(axis=1).mean())
    tokens = args.steps * loop.batch_size * loop.accum * dist.world_size * notes_per_window
    tokens_per_s = tokens / seconds
    fpt = flops_per_token(model, cfg, windows.length)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads each"
    print(f"{dist.world_size} process(es) on {device.type} ({where}); autocast {'bf16' if device.type == 'cuda' else 'off (fp32)'}"
          f"{'; torch.compile' if args.compile else ''}")
    print(f"preset {args.preset}: {cfg.kind}, {len(cfg.features)} note features, layers {cfg.layers}, heads {cfg.heads}, d_model {cfg.d_model}, "
          f"d_ff {cfg.d_ff}; {model.num_params():,} parameters; global batch {loop.batch_size} x accum {loop.accum} x {dist.world_size} "
          f"processes windows of {windows.length}; data {windows.name}, {len(windows):,} windows")
    print(f"{args.steps} optimizer steps in {seconds:.2f} s: {seconds / args.steps * 1000:.1f} ms/step, {tokens_per_s:,.0f} tokens/s (notes, padding excluded)")
    achieved = tokens_per_s * fpt
    print(f"model FLOPs: {fpt / 1e6:.1f} MFLOP/token -> {achieved / 1e12:.3f} TFLOP/s achieved")
    peak = peak_flops(device, args.peak_tflops)
    if peak:
        print(f"MFU {100 * achieved / peak:.1f}% of {peak / 1e12:.0f} TFLOP/s peak ({dist.world_size} device(s): {100 * achieved / peak / dist.world_size:.1f}% each)")


if __name__ == "__main__":
    main()
