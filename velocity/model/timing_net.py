"""The timing network: a score's notes in, how a pianist times them out.

The score model's encoder (velocity/model/transformer.py: the same source tokens and score
features, plus the score's own sustain pedal marks as one more feature), with four numbers per note
instead of velocity logits (`TIMING_TARGETS`, defined in velocity/model/timing.py):

- `log_pace`: log performance seconds per score second from the note's onset group to the next
  (the tempo, its level included);
- `onset_deviation`: seconds the note sounds off the clock (chord spread, melody lead);
- `articulation`: log performed / notated length;
- `pedal_down`: a logit, the sustain pedal held after the note's onset group.

The three regression targets are standardized with the train split's mean and spread and learned
with a Huber loss; the pedal with binary cross-entropy. A note the pianist did not play has no
onset deviation or articulation (NaN), pad notes no target at all. `TimingTask` plugs it into the harness
(velocity/model/harness.py) exactly as the Velocity Transformer plugs in.

With `ensemble` > 1 the stage trains that many networks from consecutive seeds and each output is
the mean of theirs (`TimingEnsemble`; the pedal's as a logit, as overlapping windows are averaged).

Like the score model's velocities, each target is then blended with a gradient-boosted tree's
(the timing_tree stage, on `TREE_FEATURES`): `w * network + (1 - w) * tree`, one weight per target
fitted on validation (`fit_blend`), kept in the model file with the trees.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from velocity.model.checkpoint import CheckpointError, load_checkpoint
from velocity.model.config import ParamsError
from velocity.model.codec import Vocab, piece_bounds, tokenize
from velocity.model.decodings import DEFAULT_BATCH_WINDOWS
from velocity.model.features import GBT_FEATURES, SCORE_GBT_FEATURES, feature_ids, note_features
from velocity.model.midi import at_default_tempo
from velocity.model.stitching import piece_windows, plan_windows
from velocity.model.runtime import batch_map
from velocity.model.schedule import lr_at
from velocity.model.timing import (TIMING_TARGETS, Clock, clock_from_pace, fit_clock, onset_deviation, onset_groups, overall_tempo_error, pace_knots, pearson,
                                   tempo_curve, tempo_grid, tempo_shape_error)
from velocity.model.transformer import ModelConfig, NoteEncoder
from velocity.model.trees import TreeEnsemble

KIND = "velocity-timing"
REGRESSION = TIMING_TARGETS[:3]  # standardized, Huber loss
PEDAL = TIMING_TARGETS[3]  # a logit, binary cross-entropy
ONSET = TIMING_TARGETS[1]
LEVEL = "tempo_level"  # the blend of each score's mean `log_pace`: its overall tempo
# The tempo curve's scale around its mean for a score with no tempo of its own (`unstated_rows`),
# chosen on validation among `SHAPE_SCALES` (pianists play such scores, mostly Bach, nearly flat).
UNSTATED_SHAPE = "tempo_shape_unstated"
SHAPE_SCALES = (0.0, 0.25, 0.5, 0.75, 1.0)
# A tempo curve's slow part, its mean over `SLOW_SPAN` score seconds around each onset group (a
# passage's tempo, beyond what a 128-note window sees well), scaled around the score's mean by a
# factor chosen on validation; the faster bends (a phrase's end, a held chord) stay as predicted.
SLOW_SHAPE = "tempo_slow_scale"
SLOW_SPAN = 8.0
PEDAL_FEATURE_IDS = 3  # 0 pad, 1 the score's pedal up at the onset, 2 down
# The trees' features: the score tree's (the dynamics only relative to the piece) and the score's pedal.
TREE_FEATURES = GBT_FEATURES + tuple(name for name in SCORE_GBT_FEATURES if name != "notated_velocity")
BLEND_STEPS = np.linspace(0.0, 1.0, 11)  # the network's weights tried on validation


def tree_inputs(notes: pd.DataFrame) -> np.ndarray:
    """The timing trees' feature matrix: `TREE_FEATURES` and the score's pedal at each onset."""
    return np.column_stack([note_features(notes, TREE_FEATURES).to_numpy(), notes["pedal"].to_numpy(dtype=np.float64)])


def tree_predictions(trees: dict[str, TreeEnsemble], notes: pd.DataFrame) -> pd.DataFrame:
    """Each target's tree prediction for every note (the pedal a probability, clipped to 0..1)."""
    x = tree_inputs(notes)
    predicted = pd.DataFrame({name: trees[name].predict_features(x) for name in TIMING_TARGETS}, index=notes.index)
    predicted[PEDAL] = predicted[PEDAL].clip(0.0, 1.0)
    return predicted


def rendered_onset_r(deviation: np.ndarray, notes: pd.DataFrame) -> float:
    """The onset r a rendering with these per-note `deviation`s gets (velocity.model.timing.compare):
    per performance (`piece_id`), the deviations centred on each onset group's median against the
    pianist's `onset_deviation` from the group's median, Pearson r; the mean over performances."""
    rs = []
    for rows in notes.groupby("piece_id", sort=False).indices.values():
        group = onset_groups(notes["start"].to_numpy()[rows])
        truth = onset_deviation(notes["performance_start"].to_numpy()[rows], group)
        predicted = pd.Series(np.where(np.isfinite(truth), deviation[rows], np.nan))  # the notes the pianist played
        rs.append(pearson(predicted - predicted.groupby(group).transform("median"), truth))
    return float(np.mean(rs)) if rs else 0.0


def blend_error(name: str, predicted: np.ndarray, notes: pd.DataFrame) -> float:
    """Validation error of one target on `notes` (aligned, with the targets): mean absolute error;
    the pedal's Brier score; for the onset deviation 1 - `rendered_onset_r`, since a chord's spread is
    heard, and judged, by its pattern: the trees' smaller deviations win on absolute error
    (docs/experiments.md) without following the pianists more closely."""
    if name == ONSET:
        return 1.0 - rendered_onset_r(predicted, notes)
    truth = notes[name].to_numpy(dtype=np.float64)
    defined = np.isfinite(truth)
    difference = predicted[defined] - truth[defined]
    return float(np.mean(difference**2 if name == PEDAL else np.abs(difference)))


def rendered_clocks(log_pace: np.ndarray, notes: pd.DataFrame) -> Iterator[tuple[np.ndarray, Clock, Clock]]:
    """Each played performance's (`piece_id`) score onsets, its own clock and the clock these
    per-note `log_pace`s give."""
    for rows in notes.groupby("piece_id", sort=False).indices.values():
        start, played = notes["start"].to_numpy()[rows], notes["performance_start"].to_numpy()[rows]
        if not np.isfinite(played).any():
            continue
        group = onset_groups(start)
        yield start, fit_clock(start, played, group), clock_from_pace(start, log_pace[rows], group)


def rendered_level_error(log_pace: np.ndarray, notes: pd.DataFrame) -> float:
    """The overall tempo error (velocity.model.timing.overall_tempo_error) of the clocks these
    per-note `log_pace`s give, against each performance's own clock; the mean over performances."""
    errors = [overall_tempo_error(float(rendered(start.max()) - rendered(start.min())), float(truth(start.max()) - truth(start.min())))
              for start, truth, rendered in rendered_clocks(log_pace, notes)]  # fmt: skip
    return float(np.nanmean(errors)) if errors else 0.0


def with_level(log_pace: np.ndarray, level: np.ndarray, piece_id: np.ndarray) -> np.ndarray:
    """`log_pace` moved score by score (`piece_id`) to the mean of `level`: its tempo curve's shape
    with `level`'s overall tempo."""
    frame = pd.DataFrame({"pace": log_pace, "level": level, "piece": piece_id})
    means = frame.groupby("piece", sort=False)[["pace", "level"]].transform("mean")
    return (frame["pace"] - means["pace"] + means["level"]).to_numpy()


def fit_blend(network: pd.DataFrame, tree: pd.DataFrame, notes: pd.DataFrame) -> dict[str, float]:
    """Each target's network weight (`BLEND_STEPS`) with the least validation error of the blend,
    and the weight of each score's mean `log_pace` (`LEVEL`) with the least overall tempo error
    once the blended curve is moved to it: a tempo curve's shape and its level are heard, and
    judged, apart. Then the scale of the curve of a score with no tempo of its own
    (`UNSTATED_SHAPE`) with the least tempo shape error on such validation scores (1 without any),
    and last the scale of every curve's slow part (`SLOW_SHAPE`) with the least tempo shape error."""
    weights = {}
    for name in TIMING_TARGETS:
        errors = [blend_error(name, w * network[name].to_numpy() + (1 - w) * tree[name].to_numpy(), notes) for w in BLEND_STEPS]
        weights[name] = float(BLEND_STEPS[int(np.argmin(errors))])
    level_errors = [level_blend_error(network, tree, notes, weights["log_pace"], w) for w in BLEND_STEPS]
    weights[LEVEL] = float(BLEND_STEPS[int(np.argmin(level_errors))])
    log_pace = with_level(pace_blend(network, tree, weights["log_pace"]), pace_blend(network, tree, weights[LEVEL]), notes["piece_id"].to_numpy())
    unstated = unstated_rows(notes)
    weights[UNSTATED_SHAPE] = least_error_scale(lambda scale: rendered_shape_error(with_unstated_scale(log_pace, notes, scale)[unstated], notes[unstated]))
    log_pace = with_unstated_scale(log_pace, notes, weights[UNSTATED_SHAPE])
    slow = slow_pace(log_pace, notes)
    weights[SLOW_SHAPE] = least_error_scale(lambda scale: rendered_shape_error(with_slow_scale(log_pace, notes, scale, slow), notes))
    return weights


def least_error_scale(error: Callable[[float], float]) -> float:
    """The scale among `SHAPE_SCALES` of the least `error`; a tie (say no played performance to judge
    by: every error 0) keeps the curve as predicted, 1."""
    scales = SHAPE_SCALES[::-1]
    return float(scales[int(np.argmin([error(scale) for scale in scales]))])


def piece_ids(notes: pd.DataFrame) -> np.ndarray:
    """Each row's `piece_id`; a table without one is one piece."""
    return notes["piece_id"].to_numpy() if "piece_id" in notes else np.zeros(len(notes))


def unstated_rows(notes: pd.DataFrame) -> np.ndarray:
    """True for the rows of the scores whose notated `tempo` is MIDI's default throughout: no tempo of their own."""
    return notes.groupby(piece_ids(notes), sort=False)["tempo"].transform(at_default_tempo).to_numpy(dtype=bool)


def piece_mean(values: np.ndarray, notes: pd.DataFrame) -> np.ndarray:
    """Each row's mean of `values` over its score (`piece_ids`)."""
    return pd.Series(values).groupby(piece_ids(notes), sort=False).transform("mean").to_numpy()


def with_unstated_scale(log_pace: np.ndarray, notes: pd.DataFrame, scale: float) -> np.ndarray:
    """`log_pace` with the tempo curve of each score without a tempo of its own scaled by `scale` around its mean."""
    mean = piece_mean(log_pace, notes)
    return np.where(unstated_rows(notes), mean + scale * (log_pace - mean), log_pace)


def slow_pace(log_pace: np.ndarray, notes: pd.DataFrame, span: float = SLOW_SPAN) -> np.ndarray:
    """Each note's `log_pace` averaged over the onset groups within `span` / 2 score seconds either
    side of its own (each group's mean, weighted by the score time it carries to the next group, as
    the clock integrates it; the last group by the mean gap): the tempo curve's slow part. A group
    without a pace counts as played as written (0), as `clock_from_pace` plays it."""
    log_pace = np.asarray(log_pace, dtype=np.float64)
    slow = np.full(len(log_pace), np.nan)
    for rows in notes.groupby(piece_ids(notes), sort=False).indices.values():
        start = notes["start"].to_numpy()[rows]
        group = onset_groups(start)  # 0, 1, ... in score order, as the knots
        score, pace = pace_knots(start, log_pace[rows], group)
        gaps = np.diff(score)
        carried = np.append(gaps, gaps.mean() if len(gaps) else 1.0)
        time, paced = np.concatenate([[0.0], np.cumsum(carried)]), np.concatenate([[0.0], np.cumsum(carried * pace)])
        first = np.searchsorted(score, score - span / 2, side="left")
        last = np.searchsorted(score, score + span / 2, side="right")
        slow[rows] = ((paced[last] - paced[first]) / (time[last] - time[first]))[group]
    return slow


def with_slow_scale(log_pace: np.ndarray, notes: pd.DataFrame, scale: float, slow: np.ndarray | None = None) -> np.ndarray:
    """`log_pace` with each score's slow part (`slow`, by default `slow_pace`) scaled by `scale`
    around its mean over the score, so the score's mean `log_pace` stays as it is."""
    log_pace = np.asarray(log_pace, dtype=np.float64)
    if scale == 1.0:
        return log_pace
    slow = slow_pace(log_pace, notes) if slow is None else slow
    return log_pace - (1.0 - scale) * (slow - piece_mean(slow, notes))


def rendered_shape_error(log_pace: np.ndarray, notes: pd.DataFrame) -> float:
    """The tempo shape error (velocity.model.timing.tempo_shape_error) of the clocks these per-note
    `log_pace`s give, against each performance's own clock; the mean over performances."""
    errors = []
    for start, truth, rendered in rendered_clocks(log_pace, notes):
        grid = tempo_grid(float(start.min()), float(start.max()))
        errors.append(tempo_shape_error(tempo_curve(rendered, grid), tempo_curve(truth, grid)))
    return float(np.mean(errors)) if errors else 0.0


def pace_blend(network: pd.DataFrame, tree: pd.DataFrame, network_weight: float) -> np.ndarray:
    """`log_pace`, `network_weight` of the network's and the rest of the tree's."""
    return network_weight * network["log_pace"].to_numpy() + (1 - network_weight) * tree["log_pace"].to_numpy()


def level_blend_error(network: pd.DataFrame, tree: pd.DataFrame, notes: pd.DataFrame, shape_weight: float, level_weight: float) -> float:
    """`rendered_level_error` of the `log_pace` blend at `shape_weight` moved to the level blend at `level_weight`."""
    return rendered_level_error(with_level(pace_blend(network, tree, shape_weight), pace_blend(network, tree, level_weight), notes["piece_id"].to_numpy()), notes)


class TimingNet(NoteEncoder):
    """The note encoder with one linear head of `len(TIMING_TARGETS)` numbers per note."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__(cfg)
        self.generator = nn.Linear(cfg.d_model, len(TIMING_TARGETS))  # in place of the velocity logits

    def forward(self, src: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S) source ids, (B, S, F) feature ids -> (B, S, 4): three standardized targets and the pedal logit."""
        return self.generator(self.encode(src, features=features))


class TimingEnsemble(nn.Module):
    """Timing networks trained alike from different seeds: each output (the pedal's logit too) the
    mean of theirs. One network's tempo curve moves with its seed (docs/experiments.md); the mean of
    four follows the pianists more closely."""

    def __init__(self, members: list[TimingNet]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, src: torch.Tensor, features: torch.Tensor | None = None) -> torch.Tensor:
        return torch.stack([member(src, features) for member in self.members]).mean(dim=0)


def build_timing_net(cfg: ModelConfig) -> TimingNet:
    """A fresh network, Glorot-initialized like the velocity models; deterministic given torch's seed."""
    net = TimingNet(cfg)
    for p in net.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
    return net


@dataclass(frozen=True)
class Standardizer:
    """Each regression target's train mean and standard deviation."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def fit(cls, targets: np.ndarray) -> "Standardizer":
        """From (n, 4) per-note targets (NaN = none)."""
        values = targets[:, : len(REGRESSION)]
        mean = np.nanmean(values, axis=0)
        std = np.nanstd(values, axis=0)
        return cls(tuple(float(m) for m in mean), tuple(float(s) if s > 0 else 1.0 for s in std))

    def scale(self, targets: np.ndarray) -> np.ndarray:
        out = np.array(targets, dtype=np.float32, copy=True)
        out[..., : len(REGRESSION)] = (out[..., : len(REGRESSION)] - np.float32(self.mean)) / np.float32(self.std)
        return out

    def unscale(self, outputs: np.ndarray) -> np.ndarray:
        out = np.array(outputs, dtype=np.float64, copy=True)
        out[..., : len(REGRESSION)] = out[..., : len(REGRESSION)] * np.asarray(self.std) + np.asarray(self.mean)
        return out


# ---------------------------------------------------------------------------------------------
# Training


@dataclass(frozen=True)
class TimingWindows:
    """One split's windows: source ids and feature ids as the score windows stage wrote them, the
    pedal feature beside them, and the standardized targets (n_windows, length, 4), NaN = none."""

    src: np.ndarray
    features: np.ndarray
    targets: np.ndarray

    def __len__(self) -> int:
        return len(self.src)

    def batch(self, indices: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return (torch.from_numpy(self.src[indices].astype(np.int64)), torch.from_numpy(self.features[indices].astype(np.int64)),
                torch.from_numpy(self.targets[indices]))  # fmt: skip


def with_pedal_feature(features: np.ndarray, pedal: np.ndarray, pad: np.ndarray) -> np.ndarray:
    """(..., F) feature ids with the score's pedal (0/1 per note) as one more id column (0 on pad)."""
    ids = np.where(pad, 0, np.asarray(pedal, dtype=np.int16) + 1).astype(features.dtype)
    return np.concatenate([features, ids[..., None]], axis=-1)


def timing_windows(windows_dir: Path, aligned: pd.DataFrame, split: str, standardizer: Standardizer | None = None) -> tuple[TimingWindows, Standardizer]:
    """The score windows of `split` with each note's targets from `aligned` (the split's table)."""
    src = np.load(windows_dir / f"{split}_src.npy")
    features = np.load(windows_dir / f"{split}_features.npy")
    rows = np.load(windows_dir / f"{split}_rows.npy")
    pad = rows < 0
    notes = np.stack([aligned[name].to_numpy(dtype=np.float64) for name in TIMING_TARGETS], axis=1)  # (n, 4)
    standardizer = standardizer or Standardizer.fit(notes)  # NaN (unplayed notes) left out
    targets = standardizer.scale(notes)[np.maximum(rows, 0)]
    targets[pad] = np.nan
    pedal = aligned["pedal"].to_numpy()[np.maximum(rows, 0)]
    return TimingWindows(src, with_pedal_feature(features, pedal, pad), targets), standardizer


def timing_loss(outputs: torch.Tensor, targets: torch.Tensor, pedal_weight: float) -> tuple[torch.Tensor, int, dict[str, torch.Tensor]]:
    """Summed loss over every defined target of a batch, its count, and per-target sums (Huber on
    the regression targets, binary cross-entropy on the pedal, weighted by `pedal_weight`)."""
    outputs = outputs.float()
    sums = {}
    total = outputs.new_zeros(())
    count = 0
    for j, name in enumerate(TIMING_TARGETS):
        y = targets[..., j]
        defined = torch.isfinite(y)
        n = int(defined.sum())
        if n == 0:
            sums[name] = outputs.new_zeros(())
            continue
        if name == PEDAL:
            loss = pedal_weight * F.binary_cross_entropy_with_logits(outputs[..., j][defined], y[defined], reduction="sum")
        else:
            loss = F.huber_loss(outputs[..., j][defined], y[defined], reduction="sum", delta=1.0)
        sums[name] = loss.detach()
        total = total + loss
        count += n
    return total, count, sums


@dataclass(frozen=True)
class TimingTrainConfig:
    batch_size: int
    warmup: int
    lr_factor: float
    epochs: float | None  # passes over the train windows; training stops at this or max_steps, whichever comes first
    max_steps: int | None
    eval_every: int
    checkpoint_every: int
    seed: int
    device: str
    pedal_weight: float  # the pedal's cross-entropy beside the three Huber losses
    ensemble: int  # networks from seeds seed, seed + 1, ...; their outputs averaged
    member_processes: int  # networks trained at once, one process each (1: one after another)
    ema: float  # the weights' moving average that validation judges and the model keeps (train.ema)

    def __post_init__(self) -> None:
        for name in ("ensemble", "member_processes"):
            if getattr(self, name) < 1:
                raise ParamsError(f"timing_train.train.{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.ema < 1.0:
            raise ParamsError(f"timing_train.train.ema must be in [0, 1), got {self.ema}")


class TimingTask:
    """What the harness needs of the timing network: batches, the loss of a step, validation."""

    def __init__(self, model_cfg: ModelConfig, cfg: TimingTrainConfig, train: TimingWindows, validation: TimingWindows) -> None:
        if len(train) == 0 or len(validation) == 0:
            raise ValueError("the timing network needs train and validation windows (a split is empty)")
        self.model_cfg, self.cfg, self.train, self.validation = model_cfg, cfg, train, validation
        self.n_train, self.n_validation = len(train), len(validation)

    def train_batch(self, indices: np.ndarray) -> tuple[torch.Tensor, ...]:
        return self.train.batch(indices)

    def loss(self, model: nn.Module, batch: tuple[torch.Tensor, ...], step: int) -> tuple[torch.Tensor, int]:
        src, features, targets = batch
        total, count, _ = timing_loss(model(src, features), targets, self.cfg.pedal_weight)
        return total, count

    def validation_sums(self, model: nn.Module, indices: np.ndarray, device: torch.device) -> dict[str, float]:
        sums = dict.fromkeys(("loss", "count", *TIMING_TARGETS), 0.0)
        for begin in range(0, len(indices), 64):
            src, features, targets = (t.to(device) for t in self.validation.batch(indices[begin : begin + 64]))
            total, count, parts = timing_loss(model(src, features), targets, self.cfg.pedal_weight)
            sums["loss"] += float(total)
            sums["count"] += count
            for name, value in parts.items():
                sums[name] += float(value)
        return sums

    def make_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return torch.optim.Adam(model.parameters(), lr=0.0, betas=(0.9, 0.98), eps=1e-9)

    def lr(self, step: int) -> float:
        return lr_at(step, self.model_cfg.d_model, self.cfg.warmup, self.cfg.lr_factor)


# ---------------------------------------------------------------------------------------------
# Predicting whole scores


@dataclass(frozen=True)
class TimingModel:
    """A trained timing network (or ensemble of them) with what it needs to read a new score like its training data."""

    net: TimingNet | TimingEnsemble
    bins: dict[str, Any]
    vocab: Vocab
    length: int
    step: int
    standardizer: Standardizer
    checkpoint: dict[str, Any]

    @property
    def trees(self) -> dict[str, TreeEnsemble] | None:
        found = self.checkpoint.get("trees")
        return {name: TreeEnsemble.from_state(state) for name, state in found.items()} if found else None


def load_timing_model(path: Path | str, device: torch.device | str = "cpu") -> TimingModel:
    """Load `models/score/timing.pt` (weights_only)."""
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != KIND:
        raise CheckpointError(f"{path}: not a timing model (kind {ckpt.get('kind')!r}, expected {KIND!r})")
    return timing_model(ckpt, device)


def timing_model(state: dict[str, Any], device: torch.device | str = "cpu") -> TimingModel:
    """The timing model a checkpoint's state describes (the file's contents, or the stage's before it writes them)."""
    nets = []
    for weights in [state["model"], *state.get("members", [])]:
        nets.append(TimingNet(ModelConfig.from_dict(state["model_config"])))
        nets[-1].load_state_dict(weights)
    net = nets[0] if len(nets) == 1 else TimingEnsemble(nets)
    standardizer = Standardizer(tuple(state["standardizer"]["mean"]), tuple(state["standardizer"]["std"]))
    return TimingModel(net.to(device).eval(), state["bins"], Vocab.from_dict(state["vocab"]), int(state["windows"]["length"]),
                       int(state["windows"]["step"]), standardizer, state)  # fmt: skip


def predict_timing(model: TimingModel, notes: pd.DataFrame, batch_windows: int = DEFAULT_BATCH_WINDOWS, blend: bool = True) -> pd.DataFrame:
    """Every note's `TIMING_TARGETS` (the pedal as a probability) for a table of score notes
    (the score columns of velocity/model/score.py, `pedal` the score's own; rows of one
    `piece_id` contiguous, in note order). Each note takes the network's mean over the windows
    that hold it, blended with the model's trees when it carries them (unless `blend` is False)."""
    src_ids, _ = tokenize(notes, model.bins, model.vocab)
    note_features = feature_ids(notes, model.bins.get("features") or {})
    bounds = piece_bounds(notes["piece_id"].to_numpy()) if "piece_id" in notes else np.array([0, len(notes)])
    sums = np.zeros((len(notes), len(TIMING_TARGETS)))
    counts = np.zeros(len(notes))
    windows, rows = [], []
    for a, b in zip(bounds[:-1], bounds[1:]):
        plan = plan_windows(int(b - a), model.length, model.step)
        window_rows = plan.window_rows()
        pad = window_rows < 0
        features = with_pedal_feature(piece_windows(note_features[a:b], plan), notes["pedal"].to_numpy()[a:b][np.maximum(window_rows, 0)], pad)
        windows.append((piece_windows(src_ids[a:b], plan), features))
        rows.append(np.where(pad, -1, window_rows + a))
    if not windows:
        return pd.DataFrame(sums, columns=list(TIMING_TARGETS))
    src = np.concatenate([w[0] for w in windows])
    features = np.concatenate([w[1] for w in windows])
    rows = np.concatenate(rows)
    device = next(model.net.parameters()).device

    def outputs(begin: int) -> np.ndarray:
        return model.net(torch.from_numpy(src[begin : begin + batch_windows]).to(device),
                         torch.from_numpy(features[begin : begin + batch_windows]).to(device)).float().cpu().numpy()  # fmt: skip

    begins = range(0, len(src), batch_windows)
    for begin, out in zip(begins, batch_map(outputs, begins, device)):  # summed in window order, as one batch after another
        r = rows[begin : begin + batch_windows]
        real = r >= 0
        np.add.at(sums, r[real], out[real])
        np.add.at(counts, r[real], 1.0)
    mean = model.standardizer.unscale(sums / np.maximum(counts, 1)[:, None])
    mean[:, len(REGRESSION)] = 1.0 / (1.0 + np.exp(-mean[:, len(REGRESSION)]))  # the pedal logit as a probability
    network = pd.DataFrame(mean, columns=list(TIMING_TARGETS), index=notes.index)
    weights, trees = model.checkpoint.get("blend"), model.trees
    if not blend or weights is None or trees is None:
        return network
    tree = tree_predictions(trees, notes)
    blended = pd.DataFrame({name: weights[name] * network[name] + (1 - weights[name]) * tree[name] for name in TIMING_TARGETS})
    if LEVEL in weights:  # a model file from before the level's own weight: the blend's own level
        blended["log_pace"] = with_level(blended["log_pace"].to_numpy(), pace_blend(network, tree, weights[LEVEL]), piece_ids(notes))
    if UNSTATED_SHAPE in weights:  # a model file from before it: every curve as blended
        blended["log_pace"] = with_unstated_scale(blended["log_pace"].to_numpy(), notes, weights[UNSTATED_SHAPE])
    if SLOW_SHAPE in weights:  # a model file from before it: the slow part as predicted
        blended["log_pace"] = with_slow_scale(blended["log_pace"].to_numpy(), notes, weights[SLOW_SHAPE])
    return blended

