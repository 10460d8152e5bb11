"""Figures of velocities (piano rolls, velocity curves, prediction scatter, bin confusion) and tempo curves: what
evaluate writes, `velocity predict --plot` draws and the studio shows."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from velocity.io import atomic_path
from velocity.model.codec import bin_index, n_bins

if TYPE_CHECKING:
    from matplotlib.figure import Figure

FIGURE_DPI = 110


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def plot_predicted_vs_true(true: np.ndarray, predicted: np.ndarray, path: Path) -> None:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    hb = ax.hexbin(true, predicted, gridsize=40, extent=(0, 127, 0, 127), bins="log", mincnt=1, cmap="viridis")
    ax.plot([0, 127], [0, 127], color="grey", linewidth=0.8, linestyle="--")  # perfect prediction
    ax.set(xlabel="true velocity", ylabel="predicted velocity", title=f"test notes ({len(true):,})", xlim=(0, 127), ylim=(0, 127))
    fig.colorbar(hb, ax=ax, label="notes (log)")
    _save(fig, path)


def plot_bin_confusion(true: np.ndarray, predicted: np.ndarray, velocity_edges: list[float], path: Path) -> None:
    """Rows: true velocity bin; columns: predicted bin; cells: share of the row's notes."""
    plt = _pyplot()
    k = n_bins(velocity_edges)
    counts = np.zeros((k, k), dtype=np.int64)
    np.add.at(counts, (bin_index(true, velocity_edges), bin_index(predicted, velocity_edges)), 1)
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    labels = [f"{velocity_edges[i]:g}-{velocity_edges[i + 1]:g}" for i in range(k)]
    fig, ax = plt.subplots(figsize=(1.2 * k + 2.5, 1.1 * k + 1.8))
    im = ax.imshow(share, vmin=0, vmax=1, cmap="Blues")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{share[i, j]:.2f}\n({counts[i, j]:,})", ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), labels, rotation=45, ha="right")
    ax.set_yticks(range(k), labels)
    ax.set(xlabel="predicted velocity bin", ylabel="true velocity bin", title="velocity bins (row shares)")
    fig.colorbar(im, ax=ax)
    _save(fig, path)


def piano_roll_figure(segment: pd.DataFrame, predicted: np.ndarray, title: str) -> "Figure":
    """Original and predicted piano rolls side by side; colour = velocity on one shared scale.
    Built without pyplot's global state, so a server may draw several at once."""
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    start = segment["start"].to_numpy() - segment["start"].min()
    end = segment["end"].to_numpy() - segment["start"].min()
    pitch = segment["pitch"].to_numpy()
    boxes = [[(s, p - 0.4), (e, p - 0.4), (e, p + 0.4), (s, p + 0.4)] for s, e, p in zip(start, end, pitch)]
    fig = Figure(figsize=(12, 4))
    axes = fig.subplots(1, 2, sharey=True)
    for ax, velocity, name in zip(axes, (segment["velocity"].to_numpy(), predicted), ("original", "predicted")):
        bars = PolyCollection(boxes, array=np.asarray(velocity, dtype=float), cmap="plasma", clim=(0, 127), edgecolors="none")
        ax.add_collection(bars)
        ax.set(xlim=(0, end.max()), ylim=(pitch.min() - 2, pitch.max() + 2), xlabel="seconds", title=name)
    axes[0].set_ylabel("pitch")
    fig.suptitle(title, fontsize=9)
    fig.colorbar(bars, ax=axes, label="velocity")
    return fig


def velocity_curve_figure(segment: pd.DataFrame, predicted: np.ndarray, title: str, smooth_seconds: float = 2.0) -> "Figure":
    """Velocity over time, original beside predicted: each note a faint dot, and the mean over
    the surrounding `smooth_seconds` as a line (the dynamics a listener hears)."""
    from matplotlib.figure import Figure

    start = segment["start"].to_numpy() - segment["start"].min()
    fig = Figure(figsize=(12, 3))
    ax = fig.subplots()
    for velocity, name, colour in ((segment["velocity"].to_numpy(), "original", "tab:gray"), (np.asarray(predicted), "predicted", "tab:orange")):
        velocity = velocity.astype(float)
        # Mean of the notes within +-smooth_seconds/2 of each onset, through cumulative sums (onsets are sorted).
        lo = np.searchsorted(start, start - smooth_seconds / 2, side="left")
        hi = np.searchsorted(start, start + smooth_seconds / 2, side="right")
        total = np.concatenate([[0.0], np.cumsum(velocity)])
        ax.scatter(start, velocity, s=3, color=colour, alpha=0.25, linewidths=0)
        ax.plot(start, (total[hi] - total[lo]) / (hi - lo), color=colour, label=name, linewidth=1.5)
    ax.set(xlim=(0, max(float(start.max()), 1e-3)), ylim=(0, 127), xlabel="seconds", ylabel="velocity")
    ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


def plot_piano_rolls(segment: pd.DataFrame, predicted: np.ndarray, title: str, path: Path) -> None:
    """The piano-roll figure written to `path` (PNG)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(png_bytes(piano_roll_figure(segment, predicted, title)))


def png_bytes(fig: "Figure", dpi: int = FIGURE_DPI) -> bytes:
    """The figure as PNG bytes."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def _save(fig, path: Path) -> None:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=FIGURE_DPI, bbox_inches="tight")
    plt.close(fig)



def tempo_curves_figure(score_time: np.ndarray, curves: dict[str, np.ndarray], title: str) -> "Figure":
    """Tempo curves (velocity/model/timing.py: log performance seconds per score second, drawn as
    % of the notated tempo) over score time, one line each."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.2))
    ax = fig.subplots()
    for (name, curve), colour in zip(curves.items(), ("tab:gray", "tab:orange", "tab:blue", "tab:green")):
        ax.plot(score_time, 100.0 / np.exp(curve), label=name, color=colour, linewidth=1.5)
    ax.axhline(100.0, color="black", linewidth=0.6, linestyle=":")
    ax.set(xlabel="score seconds", ylabel="tempo, % of notated")
    ax.legend(loc="upper right", fontsize=8)
    fig.suptitle(title, fontsize=9)
    return fig


def plot_tempo_curves(test: pd.DataFrame, predicted: pd.DataFrame, path: Path) -> None:
    """The first test performance's tempo curve, the timing model's rendering of its score and
    the score as written, to `path` (PNG)."""
    from velocity.model.timing import fit_clock, onset_groups, render_performance, tempo_curve, tempo_grid

    piece_id = test["piece_id"].iloc[0]
    part = test[test["piece_id"] == piece_id]
    start, end = part["start"].to_numpy(), part["end"].to_numpy()
    grid = tempo_grid(float(start.min()), float(start.max()))
    group = onset_groups(start)
    played = render_performance(start, end, part["pitch"].to_numpy(), predicted.loc[part.index], pedal=False)
    curves = {
        "pianist": tempo_curve(fit_clock(start, part["performance_start"].to_numpy(), group), grid),
        "rendering": tempo_curve(fit_clock(start, played.onset, group), grid),
        "as written": np.zeros(len(grid)),
    }
    with atomic_path(path) as tmp:
        tmp.write_bytes(png_bytes(tempo_curves_figure(grid + 1.0, curves, f"{part['composer'].iloc[0]}: {part['title'].iloc[0]} ({piece_id})")))


def performed_roll_figure(segment: pd.DataFrame, velocity: np.ndarray, onset: np.ndarray, end: np.ndarray, title: str) -> "Figure":
    """A score's piano roll as written (its notated velocities) beside its performance: the same
    notes at `onset`..`end` (seconds, a rendering's), coloured by `velocity`; one time axis, each
    roll from its first onset. Built without pyplot's global state, as `piano_roll_figure`."""
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    pitch = segment["pitch"].to_numpy()
    rolls = {
        "as written": (segment["start"].to_numpy(), segment["end"].to_numpy(), segment["velocity"].to_numpy()),
        "performed": (np.asarray(onset, dtype=float), np.asarray(end, dtype=float), np.asarray(velocity)),
    }
    fig = Figure(figsize=(12, 4))
    axes = fig.subplots(1, 2, sharex=True, sharey=True)
    longest = 1e-3
    for ax, (name, (start, stop, shade)) in zip(axes, rolls.items()):
        start, stop = start - start.min(), stop - start.min()
        longest = max(longest, float(stop.max()))
        boxes = [[(s, p - 0.4), (e, p - 0.4), (e, p + 0.4), (s, p + 0.4)] for s, e, p in zip(start, stop, pitch)]
        bars = PolyCollection(boxes, array=np.asarray(shade, dtype=float), cmap="plasma", clim=(0, 127), edgecolors="none")
        ax.add_collection(bars)
        ax.set(xlabel="seconds", title=name)
    axes[0].set(xlim=(0, longest), ylim=(pitch.min() - 2, pitch.max() + 2), ylabel="pitch")
    fig.suptitle(title, fontsize=9)
    fig.colorbar(bars, ax=axes, label="velocity")
    return fig
