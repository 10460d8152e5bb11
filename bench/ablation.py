"""Ablation of the Velocity Transformer: one short training per change, same seed and steps, scored
on the test split by the decodings that need no feedback (notes-only, averaged, pianist).

Run after `dvc repro windows gbt` (any data.source), from the project root:

    python bench/ablation.py --steps 3000 --variant default --variant seed-inputs ...
    python bench/ablation.py --list

Each variant is params.yaml with a few sections overridden (VARIANTS below). Variants that change
the features or the window geometry rebuild their windows in memory from data/notes with the
stage functions. Every result is printed and appended as one JSON line to --out, beside the tree
baseline's test MAE from data/gbt/report.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from dataclasses import fields
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from velocity.model.codec import Vocab  # noqa: E402
from velocity.model.features import learn_feature_edges  # noqa: E402
from velocity.model.decode import load_velocity_model  # noqa: E402
from velocity.model.pieces import predict_notes  # noqa: E402
from velocity.model.training import TrainConfig  # noqa: E402
from velocity import params as params_lib  # noqa: E402
from velocity.metrics import dynamics_scores  # noqa: E402
from velocity.io import save_npy, write_json  # noqa: E402
from velocity.stages.train import ModelParams, run_training  # noqa: E402
from velocity.stages.windows import WindowsParams, make_windows  # noqa: E402

DECODINGS = ("notes-only", "averaged", "pianist")

# name -> overrides of params.yaml's sections, one change each: a key set to None is removed, a
# section given as {} is replaced whole.
VARIANTS: dict[str, dict] = {
    "default": {},
    "seed-inputs": {"features": {}},  # the seed's 795 tokens only
    "no-pedal": {"features": {"pedal": None}},
    "encoder-decoder": {"model": {"kind": "encoder-decoder"}},
    "encoder": {"model": {"kind": "encoder"}},
    "crps": {"train": {"loss": "crps"}},
    "transpose-3": {"train": {"transpose": 3}},
    "context-512": {"windows": {"length": 512, "step": 256}, "train": {"batch_size": 4}},  # the same notes per step
    "wider": {"model": {"d_model": 192, "d_ff": 768, "heads": 6}},
    "deeper": {"model": {"layers": 4}},
    "dropout-0.3": {"model": {"dropout": 0.3}},
}


def merged_params(base: dict, overrides: dict) -> dict:
    params = copy.deepcopy(base)
    for section, values in overrides.items():
        if values == {}:
            params[section] = {}
            continue
        for key, value in values.items():
            if value is None:
                params[section].pop(key, None)
            else:
                params.setdefault(section, {})[key] = value
    return params


def build_windows(data: Path, params: dict, out: Path) -> tuple[Path, Path, Path]:
    """Windows, bins and vocab for `params` (features and window geometry) under `out`."""
    bins = json.loads((data / "bins.json").read_text())
    train_notes = pd.read_parquet(data / "notes/train.parquet")
    bins["features"] = learn_feature_edges(train_notes, params.get("features") or {})
    vocab = Vocab.load(data / "vocab.json")
    windows_params = params_lib.section(WindowsParams, "windows", params)
    stats = {"length": windows_params.length, "step": windows_params.step, "tail": windows_params.tail, "short": windows_params.short}
    for split in ("train", "validation"):
        notes = train_notes if split == "train" else pd.read_parquet(data / f"notes/{split}.parquet")
        windows = make_windows(notes, bins, vocab, windows_params)
        for name in ("src", "tgt", "features"):
            save_npy(out / f"windows/{split}_{name}.npy", getattr(windows, name))
    write_json(out / "windows/stats.json", stats)
    write_json(out / "bins.json", bins)
    write_json(out / "vocab.json", vocab.to_dict())
    return out / "windows", out / "bins.json", out / "vocab.json"


def run_variant(name: str, data: Path, base: dict, steps: int, out_dir: Path) -> dict:
    params = merged_params(base, VARIANTS[name])
    # One network per variant (ensemble 1): a change is compared network against network.
    params["train"].update({"epochs": None, "max_steps": steps, "eval_every": max(1, steps // 6), "checkpoint_every": steps, "eval_windows": 512,
                            "ensemble": 1})
    train_cfg = TrainConfig(**{k: v for k, v in params["train"].items() if k in {f.name for f in fields(TrainConfig)}})
    model_params = params_lib.section(ModelParams, "model", params)
    work = out_dir / name
    began = time.perf_counter()
    windows_dir, bins_path, vocab_path = build_windows(data, params, work)
    result = run_training(windows_dir, vocab_path, bins_path, work / "models", model_params, train_cfg, live_dir=None,
                          calibration_notes=data / "notes/validation.parquet")  # fmt: skip
    trained_s = time.perf_counter() - began
    model = load_velocity_model(work / "models/velocity.pt")
    test = pd.read_parquet(data / "notes/test.parquet")
    row = {"variant": name, "overrides": VARIANTS[name], "steps": steps, "train_minutes": round(trained_s / 60, 1),
           "parameters": model.model.num_params(), "best_step": result.best_step, "calibration": model.checkpoint.get("calibration")}  # fmt: skip
    for decoding in DECODINGS:
        predicted = predict_notes(model, test, decoding=decoding)
        scores = dynamics_scores(predicted, test["velocity"].to_numpy(), test["piece_id"].to_numpy(), "x")
        row[decoding] = {key.removeprefix("velocity_").removesuffix("_x"): round(v, 4) for key, v in scores.items()}
    gbt_report = data / "gbt/report.json"
    if gbt_report.exists():
        row["gbt_test_mae"] = json.loads(gbt_report.read_text()).get("test_mae")
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data"), help="the pipeline's data folder (notes, bins, vocab, gbt)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--variant", action="append", default=[], help="a name from --list (repeatable)")
    parser.add_argument("--steps", type=int, default=3000, help="optimizer steps of every variant")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--work", type=Path, help="where models go (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=Path("ablation.jsonl"), help="results, one JSON line per variant")
    parser.add_argument("--list", action="store_true", help="print the variants and exit")
    args = parser.parse_args(argv)
    if args.list or not args.variant:
        for name, overrides in VARIANTS.items():
            print(f"{name:16s} {json.dumps(overrides)}")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    base = params_lib.read_params(args.params)
    work = args.work or Path(tempfile.mkdtemp(prefix="ablation-"))
    for name in args.variant:
        if name not in VARIANTS:
            raise SystemExit(f"unknown variant {name!r}: see --list")
        row = run_variant(name, args.data, base, args.steps, work)
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{name}: " + ", ".join(f"{d} MAE {row[d]['mae']:.2f} r {row[d]['r']:.3f} std {row[d]['std_ratio']:.2f}" for d in DECODINGS)
              + f" (tree {row.get('gbt_test_mae')}); models in {work / name}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
