"""Per-note features computed from a notes table: what the seed's 3x3 bins throw away.

One row per note, pieces one after another (as the extract stage writes them, sorted by start then
pitch within a piece). Every feature looks only at the note's own piece. Two consumers:

- the gradient-boosted tree baseline (velocity/stages/gbt.py) reads `GBT_FEATURES`, 46 numeric columns,
  NaN where a neighbour does not exist (the tree handles missing values natively);
- the Velocity Transformer reads the `EMBEDDED` features, each quantized into its own small
  vocabulary (`feature_ids`) and embedded beside the seed's 795 source tokens.

Definitions (times in seconds):
- `dprev`: this onset minus the previous note's onset; the first note of a piece has no previous
  note and takes its own duration, as the last note's `dstart` does;
- a chord is a run of notes whose onsets follow each other within `CHORD_GAP` (30 ms);
  `chord_size` counts its notes, `chord_rank` is 0 for its highest pitch, `chord_asynchrony` is
  this onset minus the chord's first onset, `chord_span` its highest minus its lowest pitch;
- `density_k`: notes per second over the k notes centred on the note (fewer at a piece's ends);
- `position`: onset as a share of the piece's first-to-last onset span (0..1);
- `pedal`: the extract stage's sustain-pedal state at the onset (0 when the table has none).

A score (velocity/model/score.py's columns beside the notes) has more to read, in beats (quarter notes):
- `beat_duration`, `beat_dstart`, `beat_dprev`: notated length, gap to the next and from the
  previous onset; `bar_phase`: the onset's place in its bar (0..1), `downbeat` 1 on a bar's first
  beat; `beat_phase`: the onset's place within its beat (0 on the beat); `tempo`: notated bpm;
- the notated dynamics only as levels *relative to the piece*, so a notation program's velocity
  curve (or a flat file) does not matter: `notated_rank` the velocity's percentile in the piece
  (ties share one; a flat piece is all 0.5), `notated_z` its z-score in the piece (0 when flat),
  `notated_change` its z-score minus the mean over the 32 notes centred on it (hairpins, sudden
  changes), `notated_flat` 1 when the piece has one velocity only (no markings at all).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence

import numpy as np
import pandas as pd

from velocity.model.config import ParamsError
from velocity.model.codec import bin_index, piece_bounds

CHORD_GAP = 0.030  # onsets closer than this belong to one chord
NEIGHBOURS = 4  # onset gaps and pitch intervals to the 1st..4th previous and next notes
SHORT_SPANS = (8, 32)
LONG_SPANS = (64, 128, 512)

GBT_FEATURES: tuple[str, ...] = (
    "pitch", "duration", "dstart", "dprev", "log_duration",
    "density_8", "density_32", "mean_pitch_8", "mean_pitch_32", "max_pitch_8", "max_pitch_32",
    "pitch_minus_mean_8", "top_voice", "chord_size", "chord_rank",
    *(f"gap_prev_{k}" for k in range(1, NEIGHBOURS + 1)), *(f"gap_next_{k}" for k in range(1, NEIGHBOURS + 1)),
    *(f"interval_prev_{k}" for k in range(1, NEIGHBOURS + 1)), *(f"interval_next_{k}" for k in range(1, NEIGHBOURS + 1)),
    *(f"{what}_{k}" for k in LONG_SPANS for what in ("density", "mean_pitch", "mean_duration")),
    "density_ratio_8_128", "position", "min_pitch_8", "bottom_voice", "chord_asynchrony", "chord_span",
)  # fmt: skip

# The score's own features (velocity/model/score.py's columns must be in the table).
SCORE_GBT_FEATURES: tuple[str, ...] = (
    "beat_duration", "beat_dstart", "beat_dprev", "bar_phase", "beat_phase", "downbeat", "bar_length", "tempo",
    "notated_velocity", "notated_rank", "notated_z", "notated_change", "notated_flat",
)  # fmt: skip
SCORE_QUANTILE = ("beat_duration", "beat_dstart", "beat_dprev", "bar_phase", "beat_phase", "tempo", "notated_rank", "notated_z", "notated_change")
SCORE_CATEGORY = {"downbeat": 0, "notated_flat": 0}

# Features the Transformer can embed, each quantized into its own small vocabulary. "Quantile"
# features get bin edges learned on train (their count in params.yaml `features:`; equal quantiles
# are merged, so a feature may get fewer bins). "Category" features are small integers from their
# lowest value here, the count clipping the top (chord_size: 8 means 1..7 and 8+): their edges are
# fixed half-integers, so one `bin_index` quantizes both kinds.
QUANTILE = (
    "dstart", "duration", "dprev", "chord_asynchrony", "chord_span", "density_8", "density_128", "position",
    "pitch", "interval_prev_1", "interval_next_1", "max_pitch_32", "pitch_minus_mean_8", "mean_pitch_512",
    *SCORE_QUANTILE,
)  # fmt: skip
CATEGORY = {"chord_size": 1, "chord_rank": 0, "top_voice": 0, "bottom_voice": 0, "pedal": 0, **SCORE_CATEGORY}
EMBEDDED = QUANTILE + tuple(CATEGORY)
KNOWN = set(GBT_FEATURES) | set(SCORE_GBT_FEATURES) | set(EMBEDDED)


def _piece_slices(notes: pd.DataFrame) -> list[slice]:
    if "piece_id" in notes:
        bounds = piece_bounds(notes["piece_id"].to_numpy())
    else:
        bounds = np.array([0, len(notes)])
    return [slice(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _shifted(x: np.ndarray, k: int) -> np.ndarray:
    """x[i - k] (k > 0: previous notes; k < 0: next ones) as float64, NaN beyond the piece."""
    out = np.full(len(x), np.nan)
    if 0 < k < len(x):
        out[k:] = x[:-k]
    elif 0 < -k < len(x):
        out[:k] = x[-k:]
    return out


def _centred_bounds(n: int, span: int) -> tuple[np.ndarray, np.ndarray]:
    """First and last index of the `span` notes centred on each of n notes, cut at the ends."""
    i = np.arange(n)
    return np.maximum(i - span // 2, 0), np.minimum(i + (span - 1) // 2, n - 1)


def _window_extreme(x: np.ndarray, size: int, reduce: Callable[..., np.ndarray]) -> np.ndarray:
    """`reduce` (np.max or np.min) over the `size` values around each one, the ends repeated: scipy's
    maximum_filter1d / minimum_filter1d with mode "nearest" (numpy: importing scipy.ndimage costs
    `velocity predict` a fifth of a second)."""
    if len(x) == 0:
        return x.copy()
    padded = np.pad(x, (size // 2, size - 1 - size // 2), mode="edge")
    return reduce(np.lib.stride_tricks.sliding_window_view(padded, size), axis=1)


def _average_rank(x: np.ndarray) -> np.ndarray:
    """1-based ranks of `x`, ties given the mean of their ranks: scipy.stats.rankdata(x, "average")
    (numpy: importing scipy.stats costs `velocity predict` most of a second)."""
    order = np.argsort(x, kind="stable")
    ordered = x[order]
    new = np.r_[True, ordered[1:] != ordered[:-1]]  # the first of each run of equal values
    dense = np.empty(len(x), dtype=np.int64)
    dense[order] = np.cumsum(new)
    bounds = np.r_[np.flatnonzero(new), len(x)]  # each run's first position, then the end
    return 0.5 * (bounds[dense] + bounds[dense - 1] + 1)


def _centred_mean(x: np.ndarray, span: int) -> np.ndarray:
    lo, hi = _centred_bounds(len(x), span)
    cumsum = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
    return (cumsum[hi + 1] - cumsum[lo]) / (hi - lo + 1)


def _density(start: np.ndarray, span: int) -> np.ndarray:
    """Notes per second over the `span` notes centred on each note (1 ms at least as the span)."""
    lo, hi = _centred_bounds(len(start), span)
    return (hi - lo + 1) / np.maximum(start[hi] - start[lo], 1e-3)


def _chords(start: np.ndarray, pitch: np.ndarray) -> dict[str, np.ndarray]:
    n = len(start)
    new_chord = np.ones(n, dtype=bool)
    new_chord[1:] = np.diff(start) > CHORD_GAP
    chord = np.cumsum(new_chord) - 1  # chord index of each note
    first = np.flatnonzero(new_chord)  # first note of each chord
    size = np.diff(np.append(first, n))
    high = np.maximum.reduceat(pitch, first)
    low = np.minimum.reduceat(pitch, first)
    # Rank from the top: notes of a chord sorted by pitch descending (start order within a chord
    # is by onset, so sort explicitly).
    order = np.lexsort((-pitch, chord))
    rank = np.empty(n, dtype=np.int64)
    rank[order] = np.arange(n) - first[chord[order]]
    return {
        "chord_size": size[chord].astype(np.float64),
        "chord_rank": rank.astype(np.float64),
        "chord_asynchrony": start - start[first[chord]],
        "chord_span": (high - low)[chord].astype(np.float64),
    }


# What a feature is computed from, when only some are asked for (`piece_features(notes, names)`).
REQUIRES = {"pitch_minus_mean_8": ("mean_pitch_8",), "density_ratio_8_128": ("density_8", "density_128"),
            "top_voice": ("chord_rank",), "bottom_voice": ("chord_rank", "chord_size")}  # fmt: skip
CHORD_FEATURES = ("chord_size", "chord_rank", "chord_asynchrony", "chord_span")


def piece_features(notes: pd.DataFrame, names: Collection[str] | None = None) -> dict[str, np.ndarray]:
    """Every feature of one piece's notes (columns pitch, start, duration, dstart[, pedal]); with
    `names`, those and what they are computed from only (a long performance's embedded features
    need a dozen of the sixty arrays: `velocity predict` on 200,000 notes skips 80 MB)."""
    need = None if names is None else set(names).union(*(REQUIRES.get(name, ()) for name in names))

    def wanted(*keys: str) -> bool:
        return need is None or any(key in need for key in keys)

    pitch = notes["pitch"].to_numpy(dtype=np.float64)
    start = notes["start"].to_numpy(dtype=np.float64)
    duration = notes["duration"].to_numpy(dtype=np.float64)
    n = len(pitch)
    f: dict[str, np.ndarray] = {"pitch": pitch, "duration": duration, "dstart": notes["dstart"].to_numpy(dtype=np.float64)}
    dprev = duration.copy()
    dprev[1:] = np.diff(start)
    f["dprev"] = dprev
    if wanted("log_duration"):
        f["log_duration"] = np.log(np.maximum(duration, 1e-4))
    for span in SHORT_SPANS + LONG_SPANS:
        if wanted(f"density_{span}"):
            f[f"density_{span}"] = _density(start, span)
        if wanted(f"mean_pitch_{span}"):
            f[f"mean_pitch_{span}"] = _centred_mean(pitch, span)
        if wanted(f"mean_duration_{span}"):
            f[f"mean_duration_{span}"] = _centred_mean(duration, span)
    for span in SHORT_SPANS:
        if wanted(f"max_pitch_{span}"):
            f[f"max_pitch_{span}"] = _window_extreme(pitch, span, np.max)
    if wanted("min_pitch_8"):
        f["min_pitch_8"] = _window_extreme(pitch, 8, np.min)
    if wanted("pitch_minus_mean_8"):
        f["pitch_minus_mean_8"] = pitch - f["mean_pitch_8"]
    if wanted("density_ratio_8_128"):
        f["density_ratio_8_128"] = f["density_8"] / f["density_128"]
    for k in range(1, NEIGHBOURS + 1):
        if wanted(f"gap_prev_{k}"):
            f[f"gap_prev_{k}"] = start - _shifted(start, k)
        if wanted(f"gap_next_{k}"):
            f[f"gap_next_{k}"] = _shifted(start, -k) - start
        if wanted(f"interval_prev_{k}"):
            f[f"interval_prev_{k}"] = pitch - _shifted(pitch, k)
        if wanted(f"interval_next_{k}"):
            f[f"interval_next_{k}"] = pitch - _shifted(pitch, -k)
    if wanted(*CHORD_FEATURES):
        f.update(_chords(start, pitch))
    if wanted("top_voice"):
        f["top_voice"] = (f["chord_rank"] == 0).astype(np.float64)
    if wanted("bottom_voice"):
        f["bottom_voice"] = (f["chord_rank"] == f["chord_size"] - 1).astype(np.float64)
    span = start[-1] - start[0] if n else 0.0
    f["position"] = (start - start[0]) / span if span > 0 else np.zeros(n)
    f["pedal"] = notes["pedal"].to_numpy(dtype=np.float64) if "pedal" in notes else np.zeros(n)  # sustain down at onset
    if "notated_velocity" in notes:
        f.update(score_features(notes))
    return f


def score_features(notes: pd.DataFrame) -> dict[str, np.ndarray]:
    """The score features of one piece's notes (see the module doc)."""
    beat = notes["beat"].to_numpy(dtype=np.float64)
    beat_duration = notes["beat_duration"].to_numpy(dtype=np.float64)
    bar_position = notes["bar_position"].to_numpy(dtype=np.float64)
    bar_length = notes["bar_length"].to_numpy(dtype=np.float64)
    f: dict[str, np.ndarray] = {"beat_duration": beat_duration, "bar_length": bar_length, "tempo": notes["tempo"].to_numpy(dtype=np.float64)}
    f["beat_dstart"] = np.append(np.diff(beat), beat_duration[-1:])  # as dstart: the last note's own length
    f["beat_dprev"] = np.concatenate([beat_duration[:1], np.diff(beat)])
    f["bar_phase"] = bar_position / np.maximum(bar_length, 1e-9)
    f["downbeat"] = (np.abs(bar_position) < 1e-6).astype(np.float64)
    f["beat_phase"] = np.mod(bar_position, 1.0)
    notated = notes["notated_velocity"].to_numpy(dtype=np.float64)
    flat = unmarked(notated)
    f["notated_velocity"] = notated
    f["notated_flat"] = np.full(len(notated), float(flat))
    f["notated_rank"] = (_average_rank(notated) - 0.5) / len(notated)
    f["notated_z"] = np.zeros(len(notated)) if flat else (notated - notated.mean()) / notated.std()
    # Rounded: a steady passage's change is exactly 0, not float noise that quantile edges would split.
    f["notated_change"] = np.round(f["notated_z"] - _centred_mean(f["notated_z"], 32), 6)
    return f


def note_features(notes: pd.DataFrame, names: Sequence[str]) -> pd.DataFrame:
    """The named features of every note, pieces (by `piece_id`, else one piece) kept apart."""
    unknown = [name for name in names if name not in KNOWN]
    if unknown:
        raise ValueError(f"unknown note feature {unknown[0]!r}: expected one of {sorted(KNOWN)}")
    if not names:
        return pd.DataFrame(index=notes.index)
    score_only = [name for name in names if name in SCORE_GBT_FEATURES]  # every score feature is one of them
    if score_only and "notated_velocity" not in notes:
        raise ValueError(f"note feature {score_only[0]!r} is read from a score, but these notes are a performance's (no score columns)")
    parts = [piece_features(notes.iloc[rows], names) for rows in _piece_slices(notes) if rows.stop > rows.start]
    columns = {name: np.concatenate([p[name] for p in parts]) if parts else np.zeros(0) for name in names}
    return pd.DataFrame(columns, index=notes.index)


def learn_feature_edges(train_notes: pd.DataFrame, counts: dict[str, int], section: str = "features") -> dict[str, list[float]]:
    """Bin edges of each feature in `counts` (name -> bins), in that order, from the train notes;
    `section` is the params.yaml section `counts` came from, for messages."""
    unknown = [name for name in counts if name not in EMBEDDED]
    if unknown:
        raise ParamsError(f"{section}.{unknown[0]}: not an embeddable note feature (expected one of {', '.join(EMBEDDED)})")
    bad = [name for name, n in counts.items() if not isinstance(n, int) or n < 2]
    if bad:
        raise ParamsError(f"{section}.{bad[0]}: the bin count must be an integer >= 2, got {counts[bad[0]]!r}")
    if len(train_notes) == 0 and any(name in QUANTILE for name in counts):
        raise ValueError("cannot learn feature bin edges from an empty train split")
    values = note_features(train_notes, [name for name in counts if name in QUANTILE])
    edges = {}
    for name, n in counts.items():
        if name in CATEGORY:
            edges[name] = [CATEGORY[name] - 0.5 + k for k in range(n + 1)]
        else:
            quantiles = np.quantile(_embeddable(values[name]), np.linspace(0.0, 1.0, n + 1))
            edges[name] = [float(e) for e in np.unique(quantiles)]
            if len(edges[name]) < 2:  # a constant feature: one bin holds everything
                edges[name] = [edges[name][0], edges[name][0] + 1.0]
    return edges


def unmarked(notated_velocity: np.ndarray) -> bool:
    """True for a piece whose notes all have one notated velocity: a score without dynamics markings."""
    return len(np.unique(notated_velocity)) <= 1


# What a score without dynamics markings reads as (one velocity throughout): the notation dropout's
# stand-in for a window's notated dynamics (velocity/model/training.py).
FLAT_NOTATION = {"notated_rank": 0.5, "notated_z": 0.0, "notated_change": 0.0, "notated_flat": 1.0}


def flat_notation_ids(edges: dict[str, list[float]]) -> dict[int, int]:
    """Feature column -> the id a flat score gives it, for the notated features `edges` names."""
    return {column: int(bin_index([FLAT_NOTATION[name]], edges[name])[0]) + 1
            for column, name in enumerate(edges) if name in FLAT_NOTATION}  # fmt: skip


def feature_sizes(edges: dict[str, list[float]]) -> tuple[int, ...]:
    """Ids each feature can take, 0 (pad) included: what the model's feature embeddings need."""
    return tuple(len(e) for e in edges.values())  # bins + 1


def _embeddable(values: pd.Series) -> np.ndarray:
    """A feature's values for binning: a neighbour beyond the piece (NaN, which the tree reads as
    missing) counts as 0, no gap and no interval."""
    return np.nan_to_num(values.to_numpy(dtype=np.float64), nan=0.0)


def feature_ids(notes: pd.DataFrame, edges: dict[str, list[float]]) -> np.ndarray:
    """(n_notes, n_features) int64 ids of the features named by `edges` (in its order): 1 + the
    note's bin, so that 0 stays free for padding."""
    names = list(edges)
    values = note_features(notes, names)
    ids = np.zeros((len(notes), len(names)), dtype=np.int64)
    for j, name in enumerate(names):
        ids[:, j] = bin_index(_embeddable(values[name]), edges[name]) + 1
    return ids
