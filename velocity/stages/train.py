"""Stage `train`: fit the Velocity Transformer on the windows, keep the best model by validation loss.

Outputs: `{out_dir}/velocity.pt`, self-contained for `velocity predict` (weights, ModelConfig,
vocab, bins, window stats, train params, step, best validation loss), and `{out_dir}/checkpoints/`
(`last.pt` to resume from, `best.pt`), which dvc.yaml marks `persist: true` so an interrupted
`dvc repro` continues where it stopped. Metrics go to dvclive (`dvclive/train`), one row per evaluation.

`train.nproc_per_node` > 1 makes the stage run itself again under torchrun with that many processes
(DistributedDataParallel, velocity/model/harness.py); started by torchrun already, it trains as one of them.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

from velocity import params as params_lib
from velocity.live import Curves

log = logging.getLogger(__name__)

LIVE_DIR = Path("dvclive/train")


@dataclass(frozen=True)
class ModelParams:
    """The `model:` section of params.yaml; vocabulary sizes and max_len come from the data."""

    layers: int
    heads: int
    d_model: int
    d_ff: int
    dropout: float
    aligned: bool  # decoder input t also carries note t's encoder state (see velocity/model/transformer.py)
    kind: str  # or "encoder": bidirectional, every velocity in one pass


def code_files() -> list[Path]:
    """Sources whose change makes an old checkpoint unusable (other engineers' model/ files excluded)."""
    from velocity.model import harness, loss, schedule, training, transformer

    modules = (transformer, loss, schedule, training, harness)
    return [Path(m.__file__) for m in modules] + [Path(__file__)]


def run_training(
    windows_dir: Path,
    vocab_path: Path,
    bins_path: Path,
    out_dir: Path,
    model_params: ModelParams,
    train_params: Any,
    live_dir: Path | None = LIVE_DIR,
    calibration_notes: Path | None = None,
    sustain: bool = False,
    input_kind: str = "performance",
    init_from: Path | None = None,
    blend_tree: Path | None = None,
) -> Any:
    """Train (or resume) and export `out_dir/velocity.pt`; returns the loop's `FitResult`. With
    `calibration_notes` (data/notes/validation.parquet) the `pianist` decoding's stretch is fitted
    on them and saved in the model file, as is `sustain` (extract.sustain: how the notes were read, so
`velocity predict` reads a new file the same way), and `input_kind`: what the model reads, a
performance or a score (velocity predict picks the model by it). With `init_from` (a trained
velocity.pt) training starts from its weights wherever they mean the same (model.training.warm_start).
With `blend_tree` (a tree stage's tree.pt) the model carries that tree, and calibration also fits
how much of the network's velocity the `pianist` decoding keeps against the tree's.
Under torchrun every process trains; rank 0 writes."""
    from velocity.model.features import feature_sizes, flat_notation_ids
    from velocity.model.harness import distributed_from_env, end_process, fingerprint, fit_members
    from velocity.model.checkpoint import CheckpointError, load_checkpoint
    from velocity.model.trees import TreeEnsemble
    from velocity.model.training import NOT_FINGERPRINTED, Windows, WindowsError, export_model, train_from_folder, warm_start
    from velocity.model.transformer import ModelConfig, build_model

    vocab = json.loads(vocab_path.read_text())
    bins = json.loads(bins_path.read_text())
    windows_stats = json.loads((windows_dir / "stats.json").read_text())  # length and step: new pieces are cut the same way
    train_windows = Windows.load(windows_dir, "train")
    features = feature_sizes(bins.get("features") or {})
    if train_windows.n_features != len(features):
        raise WindowsError(f"{train_windows.name}: {train_windows.n_features} note features per note, but {bins_path} names {len(features)}: rerun the windows stage")
    model_cfg = ModelConfig(
        src_vocab=len(vocab["src"]), tgt_vocab=len(vocab["tgt"]), max_len=train_windows.length, features=features, **asdict(model_params)
    )

    checkpoint_dir = out_dir / "checkpoints"
    data_files = [path for s in ("train", "validation") for k in ("src", "tgt", "features") if (path := windows_dir / f"{s}_{k}.npy").exists()]
    init_state = None
    if init_from is not None:
        data_files.append(init_from)
        source = load_checkpoint(init_from)
        init_state = warm_start(build_model(model_cfg), source["model"], bins.get("features") or {}, source.get("bins", {}).get("features") or {})
        log.info("starting from %d of the weights of %s", len(init_state), init_from)
    tree_state = None
    if blend_tree is not None:  # read before training, so a bad file fails at once
        if calibration_notes is None:
            raise params_lib.ParamsError("a blend tree needs validation notes to fit its weight on (--calibrate-on)")
        stored = load_checkpoint(blend_tree)
        try:
            tree_state = TreeEnsemble.from_state(stored).to_state()
        except CheckpointError as err:
            raise CheckpointError(f"{blend_tree}: {err}") from None
    if train_params.ensemble > 1 and model_cfg.kind != "encoder":
        raise params_lib.ParamsError(f"train.ensemble: {train_params.ensemble} networks average their distributions in one pass, which needs model.kind: encoder")

    dist = distributed_from_env()
    # Member i trains from seed + i in its own checkpoint folder; its fingerprint leaves out the
    # member count, so a larger ensemble keeps the members already trained.
    jobs = []
    for member in range(train_params.ensemble):
        member_params = replace(train_params, seed=train_params.seed + member)
        resumable_params = {k: v for k, v in asdict(member_params).items() if k not in NOT_FINGERPRINTED}
        run_fingerprint = fingerprint(model_cfg.to_dict(), resumable_params, vocab, bins, files=data_files + code_files())
        member_dir = checkpoint_dir / f"member_{member}" if member else checkpoint_dir
        jobs.append(partial(train_from_folder, windows_dir, model_cfg, member_params, member_dir, run_fingerprint, dist=dist,
                            flat_notation=flat_notation_ids(bins.get("features") or {}), init_state=init_state,
                            label=f"train member {member}" if train_params.ensemble > 1 else "train"))  # fmt: skip
    try:
        with Curves(live_dir if dist.is_main else None) as curves:
            log_points = [curves] + [curves.member(member) for member in range(1, len(jobs))]
            results = fit_members(jobs, 1 if dist.active else train_params.member_processes, log_points)
    finally:
        end_process(dist)
    result = results[0]
    if not dist.is_main:
        return result

    extra = {"vocab": vocab, "bins": bins, "windows": windows_stats, "extract": {"sustain": sustain}, "input_kind": input_kind}
    states = [r.best_model for r in results]
    if tree_state is not None:
        extra["tree"] = tree_state
    if calibration_notes is not None:
        extra.update(calibrate(states, model_cfg, extra, calibration_notes, train_params))
    out_path = out_dir / "velocity.pt"
    export_model(out_path, result, model_cfg, train_params, members=states[1:], **extra)
    for r in results:
        log.info("best of %d steps at step %d: val loss %.4f, val MAE %.2f", r.step, r.best_step, r.best["loss"], r.best["mae"])
    log.info("wrote %s (%d network%s); checkpoints in %s", out_path, len(states), "s" if len(states) > 1 else "", checkpoint_dir)
    return result


def calibrate(states: list[dict], model_cfg: Any, extra: dict, notes_path: Path, train_params: Any) -> dict[str, dict[str, float]]:
    """Fit the `pianist` decoding's stretch on the notes at `notes_path` with the trained weights
    (one state dict per ensemble member) decoded as the model file will be (`train_params`:
    TrainConfig), after the blend with `extra["tree"]` when there is one. Returns the model file's
    "calibration", and for scores also "calibration_unmarked": the blend and stretch fitted on the
    same notes read without their dynamics markings (every notated velocity one value)."""
    import pandas as pd

    from velocity.model.codec import Vocab
    from velocity.model.decode import assemble
    from velocity.model.decode import VelocityModel

    net = assemble(model_cfg, states)
    length = model_cfg.max_len
    model = VelocityModel(net.eval(), extra["bins"], Vocab.from_dict(extra["vocab"]), length, int(extra["windows"]["step"]), {"train": asdict(train_params)})
    notes = pd.read_parquet(notes_path)
    if not (notes["velocity"].to_numpy() >= 0).any():  # an aligned score's notes no pianist played have -1
        raise SystemExit(f"{notes_path}: no notes to calibrate the dynamics on (the validation split is empty)")
    fitted = {"calibration": fit_pianist(model, notes, extra.get("tree"), train_params.min_std_ratio)}
    log.info("dynamics calibrated on %d notes of %s: %s", len(notes), notes_path, fitted["calibration"])
    if "notated_velocity" in notes:
        fitted["calibration_unmarked"] = fit_pianist(model, notes.assign(notated_velocity=64), extra.get("tree"),
                                                     train_params.min_std_ratio_unmarked)  # fmt: skip
        log.info("... and read without their dynamics markings: %s", fitted["calibration_unmarked"])
    return {name: asdict(calibration) for name, calibration in fitted.items()}


def fit_pianist(model: Any, notes: Any, tree_state: dict | None, min_std_ratio: float) -> Any:
    """The `pianist` decoding's `Calibration` of least error on the played `notes` (velocity >= 0):
    the networks' share against the tree (`tree_state`, if any), then the stretch."""
    from velocity.model.calibration import blend_with_tree, fit_calibration, fit_network_weight
    from velocity.model.pieces import predict_notes
    from velocity.model.trees import TreeEnsemble

    played = notes["velocity"].to_numpy() >= 0
    predicted = predict_notes(model, notes, decoding="averaged")
    true = notes["velocity"].to_numpy()[played]
    network_weight = 1.0
    if tree_state is not None:
        tree_velocity = TreeEnsemble.from_state(tree_state).predict(notes)
        network_weight = fit_network_weight(predicted[played], tree_velocity[played], true)
        predicted = blend_with_tree(predicted, tree_velocity, network_weight)
    calibration = fit_calibration(predicted[played], true, notes["piece_id"].to_numpy()[played], min_std_ratio)
    return replace(calibration, network_weight=network_weight)


def with_overrides(params: dict[str, Any], section: str | None) -> dict[str, Any]:
    """`params` with the `model:` and `train:` keys of section `section` (if any) put over theirs."""
    if section is None:
        return params
    overrides = params_lib.value(params, section)
    if not isinstance(overrides, dict) or set(overrides) - {"model", "train"}:
        raise params_lib.ParamsError(f"params.yaml: {section} may hold only `model:` and `train:` overrides, got {overrides!r}")
    merged = dict(params)
    for name, values in overrides.items():
        unknown = sorted(set(values or {}) - set(params.get(name) or {}))
        if unknown:
            raise params_lib.ParamsError(f"params.yaml: unknown key '{section}.{name}.{unknown[0]}' (not in `{name}:`)")
        merged[name] = {**params[name], **(values or {})}
    return merged


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("windows_dir", type=Path, help="data/windows")
    parser.add_argument("vocab", type=Path, help="data/vocab.json")
    parser.add_argument("bins", type=Path, help="data/bins.json")
    parser.add_argument("out_dir", type=Path, help="models")
    parser.add_argument("--params", type=Path, default=params_lib.PARAMS_FILE, help="params file (default: params.yaml)")
    parser.add_argument("--calibrate-on", type=Path, help="data/notes/validation.parquet: fit the pianist decoding's stretch on it")
    parser.add_argument("--live-dir", type=Path, default=LIVE_DIR, help="dvclive folder for the curves (default: %(default)s)")
    parser.add_argument("--overrides", help="a params.yaml section whose `model:` and `train:` keys replace those sections' "
                                                 "values (score_train: what the score model trains with differently)")
    parser.add_argument("--init-from", type=Path, help="a trained velocity.pt to start from (the score model starts from the performance model's weights)")
    parser.add_argument("--blend-tree", type=Path, help="a tree stage's tree.pt (data/score_tree/tree.pt): the model carries it "
                                                        "and the pianist decoding blends with it, by a weight fitted on --calibrate-on")
    parser.add_argument("--input", choices=("performance", "score"), default="performance",
                        help="what the windows were cut from, recorded in the model for velocity predict (default: %(default)s)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from velocity.model.checkpoint import CheckpointError
    from velocity.model.harness import relaunch_if_wanted
    from velocity.model.training import TrainConfig, WindowsError

    try:
        params = with_overrides(params_lib.read_params(args.params), args.overrides)
        model_params = params_lib.section(ModelParams, "model", params)
        train_params = params_lib.section(TrainConfig, "train", params)
        sustain = bool(params_lib.value(params, "extract.sustain"))
        exit_code = relaunch_if_wanted(train_params.nproc_per_node, train_params.device, "velocity.stages.train", sys.argv[1:] if argv is None else argv)
        if exit_code is not None:  # trained by torchrun's processes
            return exit_code
        run_training(args.windows_dir, args.vocab, args.bins, args.out_dir, model_params, train_params, live_dir=args.live_dir,
                     calibration_notes=args.calibrate_on, sustain=sustain, input_kind=args.input, init_from=args.init_from,
                     blend_tree=args.blend_tree)
    except (params_lib.ParamsError, WindowsError, CheckpointError) as err:  # bad params, empty data or a bad --init-from: one line
        raise SystemExit(f"train: {err}") from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
