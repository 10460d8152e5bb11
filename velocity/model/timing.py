"""Expressive timing: how a performance bends a score's time, as targets a model can learn, the way
back from targets to note times, and the metrics that score a rendering against a pianist.

Pure numpy/pandas on plain arrays (one entry per score note), so it does not depend on the aligned
table's exact columns. Times on the score side are score seconds (the score MIDI's own tempo map);
on the performance side, performance seconds. A performance note that was not played (no pair) has
a NaN performance onset/end.

Definitions:
- Score onset group: the score notes sharing one score onset (within `ONSET_TOLERANCE`).
- Clock: score time -> performance time. Through the median performed onset of each onset group
  that was played, linear in between, kept strictly increasing (see `fit_clock`); beyond the first
  and last group it goes on at the mean pace of the outer `OUTER_SPAN` score seconds.
- Tempo curve: log((clock(x + 2) - clock(x)) / 2), x every 0.5 score seconds (log of the
  performance seconds per score second: 0 as written, log(1.2) when 1.2x slower).
- Tempo shape error: mean |difference| of two tempo curves, each less its own mean, as exp - 1.
- Overall tempo error: exp(|log(ratio of the two total durations)|) - 1.
- Onset deviation: a note's onset minus the median onset of its group, in groups of 2+ played notes.
- Articulation: log(performed duration / (clock(notated end) - clock(notated start))).
- Pedal: CC64 >= 64 (down), sampled on the performance's clock every 0.25 score seconds.
Metrics compare a prediction with a pianist per performance (`compare`), then average over
performances (`mean_metrics`); a constant series correlates r 0 with anything.
"""

from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from velocity.model.midi import read_midi, ticks_to_seconds

# Score seconds: onsets closer than this are one group. Far below a tick: score MIDIs write a grace
# note or a spread chord one tick (0.6-1 ms) before its beat, and 1 ms would merge only some of them.
ONSET_TOLERANCE = 1e-6
OUTER_SPAN = 4.0  # score seconds whose mean pace the clock keeps beyond its first and last group
TEMPO_WINDOW = 2.0  # score seconds a tempo curve value spans
TEMPO_STEP = 0.5  # score seconds between tempo curve samples
PEDAL_STEP = 0.25  # score seconds between pedal samples
CONSTANT_SPREAD = 1e-9  # a series whose values span no more than this counts as constant (r 0)
PEDAL_DOWN_FROM = 64  # CC64 values are continuous in MAESTRO; >= 64 reads as down (as velocity/model/notes.py)

# What the align stage writes per score note for a renderer to learn (velocity/stages/align.py).
TIMING_TARGETS = ("log_pace", "onset_deviation", "articulation", "pedal_down")
METRICS = ("tempo_r", "tempo_shape_error", "overall_tempo_error", "onset_r", "articulation_r", "pedal_accuracy", "pedal_f1")


def _floats(values: np.ndarray | list[float]) -> np.ndarray:
    return np.asarray(values, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# The clock


def onset_groups(score_start: np.ndarray, tolerance: float = ONSET_TOLERANCE) -> np.ndarray:
    """Group index of each note (0, 1, ... in score order): onsets within `tolerance` of the
    previous distinct onset share a group."""
    start = _floats(score_start)
    if len(start) == 0:
        return np.zeros(0, dtype=np.int64)
    distinct = np.unique(start)
    first_of_group = np.concatenate([[True], np.diff(distinct) > tolerance])
    group_of_distinct = np.cumsum(first_of_group) - 1
    return group_of_distinct[np.searchsorted(distinct, start)]


@dataclass(frozen=True)
class Clock:
    """Score time -> performance time: piecewise linear through knots, straight lines beyond."""

    score: np.ndarray  # knot score times, strictly increasing
    performance: np.ndarray  # knot performance times, strictly increasing
    pace_before: float  # performance seconds per score second before the first knot
    pace_after: float  # ... and after the last one

    def __call__(self, score_time: np.ndarray | float) -> np.ndarray:
        t = _floats(score_time)
        s, p = self.score, self.performance
        mapped = np.interp(t, s, p)
        mapped = np.where(t < s[0], p[0] + (t - s[0]) * self.pace_before, mapped)
        return np.where(t > s[-1], p[-1] + (t - s[-1]) * self.pace_after, mapped)

    @classmethod
    def through(cls, score: np.ndarray, performance: np.ndarray, outer: float = OUTER_SPAN) -> Clock:
        """The clock through strictly increasing knots, extrapolated at the mean pace of the outer
        `outer` score seconds (of the whole span when shorter; as written for a single knot)."""
        s, p = _floats(score), _floats(performance)
        if len(s) == 0:
            raise ValueError("a clock needs at least one knot (no score onset was played)")
        if len(s) == 1:
            return cls(s, p, 1.0, 1.0)
        span = min(outer, s[-1] - s[0])
        before = (np.interp(s[0] + span, s, p) - p[0]) / span
        after = (p[-1] - np.interp(s[-1] - span, s, p)) / span
        return cls(s, p, float(before), float(after))


def _longest_increasing(values: np.ndarray) -> np.ndarray:
    """Indices of a longest strictly increasing subsequence of `values` (patience sorting)."""
    tail_values: list[float] = []  # smallest last value of an increasing run of each length
    tail_index: list[int] = []
    previous = np.full(len(values), -1, dtype=np.int64)
    for i, v in enumerate(values.tolist()):
        k = bisect_left(tail_values, v)
        if k:
            previous[i] = tail_index[k - 1]
        if k == len(tail_values):
            tail_values.append(v)
            tail_index.append(i)
        else:
            tail_values[k], tail_index[k] = v, i
    kept = []
    i = tail_index[-1] if tail_index else -1
    while i >= 0:
        kept.append(i)
        i = previous[i]
    return np.array(kept[::-1], dtype=np.int64)


def fit_clock(score_start: np.ndarray, performance_start: np.ndarray, group: np.ndarray | None = None,
              outer: float = OUTER_SPAN) -> Clock:  # fmt: skip
    """A performance's clock: through (group's score onset, median performed onset of its played
    notes) for each onset group with a played note.

    Monotone: groups played out of order (a median not after an earlier group's, say from a
    misaligned note) are left out, as few as can be: the knots are a longest strictly rising run.
    Strictly, not merely non-decreasing, so every notated length maps to a positive performed
    length (articulation and `render` divide and multiply by it). `group` defaults to
    `onset_groups(score_start)`; groups are ordered by their earliest score onset.
    """
    start, perf = _floats(score_start), _floats(performance_start)
    group = onset_groups(start) if group is None else np.asarray(group)
    played = np.isfinite(perf)
    knots = (pd.DataFrame({"group": group[played], "score": start[played], "performance": perf[played]})
             .groupby("group", sort=False).agg(score=("score", "min"), performance=("performance", "median"))
             .sort_values("score", kind="stable"))  # fmt: skip
    kept = _longest_increasing(knots["performance"].to_numpy())
    return Clock.through(knots["score"].to_numpy()[kept], knots["performance"].to_numpy()[kept], outer)


def identity_clock() -> Clock:
    """The score as written: performance time = score time."""
    return Clock(np.zeros(1), np.zeros(1), 1.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Tempo


def score_grid(start: float, stop: float, step: float) -> np.ndarray:
    """start, start + step, ... up to stop (inclusive within 1e-9); just [start] when stop < start."""
    count = int(np.floor((stop - start) / step + 1e-9)) + 1 if stop >= start else 1
    return start + step * np.arange(count)


def tempo_grid(first_onset: float, last_onset: float, step: float = TEMPO_STEP, window: float = TEMPO_WINDOW) -> np.ndarray:
    """Where a score's tempo curve is sampled: every `step` from its first onset while the window
    still ends by its last onset (at least one sample), so it reads no extrapolated time."""
    return score_grid(first_onset, last_onset - window, step) if last_onset - window >= first_onset else np.array([first_onset])


def tempo_curve(clock: Clock, grid: np.ndarray, window: float = TEMPO_WINDOW) -> np.ndarray:
    """log((clock(x + window) - clock(x)) / window) at each x of `grid`."""
    x = _floats(grid)
    return np.log((clock(x + window) - clock(x)) / window)


def clock_from_tempo(grid: np.ndarray, log_tempo: np.ndarray, origin: float = 0.0, window: float = TEMPO_WINDOW) -> Clock:
    """A clock whose tempo curve is (about) `log_tempo` on `grid`, with clock(grid[0]) = origin.

    A tempo value is a mean pace over its window; read it as the pace at the window's centre,
    linear between centres and constant beyond (trapezoid integration). Exact for a constant tempo,
    and away from the ends for a pace changing linearly; a wobble shorter than the window is
    smoothed away, as the tempo curve cannot see it either.
    """
    x, pace = _floats(grid), np.exp(_floats(log_tempo))
    centre = x + window / 2
    before = centre[0] - x[0]  # the first centre is reached at the first pace
    performance = origin + pace[0] * before + np.concatenate([[0.0], np.cumsum(np.diff(centre) * (pace[1:] + pace[:-1]) / 2)])
    return Clock(centre, performance, float(pace[0]), float(pace[-1]))


def tempo_shape_error(curve: np.ndarray, reference: np.ndarray) -> float:
    """exp(mean |(curve - its mean) - (reference - its mean)|) - 1: a shape miss, tempo level aside."""
    a, b = _floats(curve), _floats(reference)
    return float(np.exp(np.mean(np.abs((a - a.mean()) - (b - b.mean()))))) - 1.0


def overall_tempo_error(duration: float, reference_duration: float) -> float:
    """exp(|log(duration / reference_duration)|) - 1: 0.2 when one takes 20% longer than the other
    (either way round); NaN unless both are positive (a score of a single onset has no length)."""
    if not (duration > 0 and reference_duration > 0):
        return float("nan")
    return float(np.exp(abs(np.log(duration / reference_duration)))) - 1.0


# ---------------------------------------------------------------------------------------------
# Notes


def onset_deviation(performance_start: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Each played note's onset minus its onset group's median played onset, where the group has
    2+ played notes; NaN elsewhere (a lone note has no asynchrony to speak of)."""
    perf = pd.Series(_floats(performance_start))
    by_group = perf.groupby(np.asarray(group))
    median, played = by_group.transform("median"), by_group.transform("count")
    return np.where(played.to_numpy() >= 2, (perf - median).to_numpy(), np.nan)


def articulation(clock: Clock, score_start: np.ndarray, score_end: np.ndarray, performance_start: np.ndarray,
                 performance_end: np.ndarray) -> np.ndarray:  # fmt: skip
    """log(performed duration / the notated duration on the clock); NaN where unplayed or either
    duration is not positive (a zero-length note has no articulation)."""
    notated = clock(score_end) - clock(score_start)
    performed = _floats(performance_end) - _floats(performance_start)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where((notated > 0) & (performed > 0), np.log(performed / notated), np.nan)


@dataclass(frozen=True)
class Targets:
    """What a renderer predicts for one score: its clock and, per score note, where the onset
    lies off the clock (seconds) and the articulation."""

    clock: Clock
    deviation: np.ndarray  # performed onset - clock(score onset); NaN where unplayed
    articulation: np.ndarray  # see `articulation`; NaN where unplayed or undefined


def timing_targets(score_start: np.ndarray, score_end: np.ndarray, performance_start: np.ndarray,
                   performance_end: np.ndarray, group: np.ndarray | None = None) -> Targets:  # fmt: skip
    """A performance's targets on its score; `render` on them gives back its note times.

    `deviation` is measured from the clock, so it equals `onset_deviation` in every group of 2+
    played notes whose median is a clock knot (all but the groups `fit_clock` left out for their
    order); a lone note on a knot has deviation 0.
    """
    start, end = _floats(score_start), _floats(score_end)
    perf_start, perf_end = _floats(performance_start), _floats(performance_end)
    clock = fit_clock(start, perf_start, group)
    return Targets(clock, perf_start - clock(start), articulation(clock, start, end, perf_start, perf_end))


def render(clock: Clock, score_start: np.ndarray, score_end: np.ndarray, deviation: np.ndarray | None = None,
           articulation: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Performed (onset, end) of each score note: onset = clock(start) + deviation, end = onset +
    exp(articulation) * (clock(end) - clock(start)). A NaN or missing deviation/articulation plays
    the note on the clock / for its notated length on the clock."""
    start, end = _floats(score_start), _floats(score_end)
    dev = np.zeros(len(start)) if deviation is None else np.nan_to_num(_floats(deviation), nan=0.0)
    art = np.zeros(len(start)) if articulation is None else np.nan_to_num(_floats(articulation), nan=0.0)
    onset = clock(start) + dev
    return onset, onset + np.exp(art) * (clock(end) - clock(start))


def group_pace(clock: Clock, score_start: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Each note's `log_pace`: log performance seconds per score second from its onset group to the
    next one on `clock` (after the last group, the clock's closing pace). Integrating it group by
    group (`clock_from_pace`) gives the clock back at every onset."""
    start = _floats(score_start)
    onsets = pd.Series(start).groupby(np.asarray(group)).min().sort_values()
    here, following = onsets.to_numpy()[:-1], onsets.to_numpy()[1:]
    pace = np.log((clock(following) - clock(here)) / (following - here))
    per_group = pd.Series(np.append(pace, np.log(clock.pace_after)), index=onsets.index)
    return per_group.loc[np.asarray(group)].to_numpy()


def pace_knots(score_start: np.ndarray, log_pace: np.ndarray, group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each onset group's score onset and its notes' mean `log_pace`, in score order (a group
    without any: 0, as written)."""
    frame = pd.DataFrame({"group": np.asarray(group), "score": _floats(score_start), "log_pace": _floats(log_pace)})
    knots = frame.groupby("group", sort=False).agg(score=("score", "min"), log_pace=("log_pace", "mean")).sort_values("score", kind="stable")
    return knots["score"].to_numpy(), knots["log_pace"].fillna(0.0).to_numpy()


def clock_from_pace(score_start: np.ndarray, log_pace: np.ndarray, group: np.ndarray | None = None) -> Clock:
    """The clock that `group_pace` describes: each onset group's notes' mean `log_pace` carries
    the time on to the next group; the first group sounds at its score time times its pace (the
    silence before it stretched alike). `log_pace` 0 throughout is the score as written."""
    start = _floats(score_start)
    score, log_group_pace = pace_knots(start, log_pace, onset_groups(start) if group is None else group)
    pace = np.exp(log_group_pace)
    performance = score[0] * pace[0] + np.concatenate([[0.0], np.cumsum(np.diff(score) * pace[:-1])])
    return Clock(score, performance, float(pace[0]), float(pace[-1]))


PEDAL_PRESS_S = 0.08  # a pianist presses the pedal just after the attack, so the previous harmony is cleared


def pedal_events(onset: np.ndarray, end: np.ndarray, group: np.ndarray, down: np.ndarray,
                 change: np.ndarray | None = None) -> list[tuple[float, int]]:  # fmt: skip
    """Sustain pedal events (seconds, CC64 value 127 or 0) for a rendering: the pedal is held
    after each onset group whose notes mostly have `down`, pressed `PEDAL_PRESS_S` after the
    group's first onset and released at the next group that does not (a press not yet due by then
    is not made); inside a held stretch it is changed (released and pressed again) at each group
    where `change` is true (say a downbeat). Down and up alternate, starting with down, at strictly
    increasing times, and nothing follows the last note's end."""
    onset, end = _floats(onset), _floats(end)
    group = np.asarray(group)
    frame = pd.DataFrame({"group": group, "onset": onset, "down": np.asarray(down, dtype=float),
                          "change": np.zeros(len(onset)) if change is None else np.asarray(change, dtype=float)})  # fmt: skip
    groups = frame.groupby("group", sort=False).agg(onset=("onset", "min"), down=("down", "mean"), change=("change", "max")).sort_values("onset")
    events: list[tuple[float, int]] = []
    held = False
    last = float(end.max()) if len(end) else 0.0
    for g in groups.itertuples():
        wants = g.down > 0.5
        if held and (not wants or g.change > 0):
            if events[-1][0] >= g.onset:  # the press was not due yet (groups closer than PEDAL_PRESS_S): never made
                events.pop()
            else:
                events.append((float(g.onset), 0))
            held = False
        if wants and not held:
            press = min(float(g.onset) + PEDAL_PRESS_S, last)
            if events and press <= events[-1][0]:  # a release at this very moment: press just after it
                press = events[-1][0] + 1e-3
            if press < last:
                events.append((press, 127))
                held = True
    if held:
        events.append((last, 0))
    return events


MIN_NOTE_S = 0.02  # the shortest note a rendering leaves (a key needs time to sound)
KEY_GAP_S = 0.005  # the least time between two strikes of one key


@dataclass(frozen=True)
class Rendering:
    """A score played: each note's onset and end (seconds), and the sustain pedal events."""

    onset: np.ndarray
    end: np.ndarray
    pedal: list[tuple[float, int]]  # (seconds, 127 down / 0 up), alternating, down first
    clock: Clock  # the tempo alone: where each onset group falls before its notes' deviations


def render_performance(score_start: np.ndarray, score_end: np.ndarray, pitch: np.ndarray, targets: pd.DataFrame,
                       timing: float = 1.0, pedal: bool = True, change: np.ndarray | None = None,
                       stretch: float = 1.0) -> Rendering:  # fmt: skip
    """A performance of a score from per-note `TIMING_TARGETS` (the pedal as a probability):
    the clock from `log_pace`, each onset off it by `onset_deviation`, each length by
    `articulation`; `timing` scales every one of them (0: exactly as written, 1: as predicted, 2:
    twice as far from the notation), and `stretch` multiplies every span of the clock (a tempo the
    player asks for: 2 plays twice as slow). Keys stay playable: the notes of one key keep their
    score order, and a note ends before its key is struck again. The pedal (unless `pedal` is
    False) is held after each group predicted down, changed where `change` (see `pedal_events`)."""
    start, end = _floats(score_start), _floats(score_end)
    group = onset_groups(start)
    clock = clock_from_pace(start, timing * _floats(targets["log_pace"]) + np.log(stretch), group)
    onset, stop = render(clock, start, end, timing * _floats(targets["onset_deviation"]), timing * _floats(targets["articulation"]))
    if len(onset) and onset.min() < 0:  # a chord spread before time 0: everything a little later
        lead = -float(onset.min())
        onset, stop, clock = onset + lead, stop + lead, Clock(clock.score, clock.performance + lead, clock.pace_before, clock.pace_after)
    onset, stop = playable(onset, stop, np.asarray(pitch), start)
    events = pedal_events(onset, stop, group, _floats(targets["pedal_down"]) > 0.5, change) if pedal else []
    return Rendering(onset, stop, events, clock)


def playable(onset: np.ndarray, end: np.ndarray, pitch: np.ndarray, score_start: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Onsets and ends adjusted so that each key's notes keep their score order (an onset at least
    `KEY_GAP_S` after the previous one of its key) and each is released by its key's next onset
    (a MIDI file writes that release first), at least `MIN_NOTE_S` long where the next onset allows."""
    onset, end = onset.copy(), end.copy()
    order = np.lexsort((np.arange(len(pitch)), score_start, pitch))
    for i, j in zip(order[:-1], order[1:]):
        if pitch[i] != pitch[j]:
            continue
        onset[j] = max(onset[j], onset[i] + KEY_GAP_S)
        end[i] = min(end[i], onset[j])
    return onset, np.maximum(end, np.minimum(onset + MIN_NOTE_S, _next_onset_of_key(onset, pitch, order)))


def _next_onset_of_key(onset: np.ndarray, pitch: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Each note's key's next onset (inf for its last)."""
    following = np.full(len(onset), np.inf)
    same = pitch[order][1:] == pitch[order][:-1]
    following[order[:-1][same]] = onset[order[1:][same]]
    return following


# ---------------------------------------------------------------------------------------------
# Pedal


def sustain_events(path: Path | str) -> tuple[np.ndarray, np.ndarray]:
    """A MIDI file's sustain pedal (CC64) events as (seconds in the file's own tempo map, value
    0-127), in time order, through the project's reader; raises MidiError naming the file."""
    midi = read_midi(path)  # its pedal_ticks/values are CC64's, every channel but the drums'
    return ticks_to_seconds(midi.tempo_map, midi.pedal_ticks), midi.pedal_values.astype(np.int16)


def pedal_down(times: np.ndarray, values: np.ndarray, clock: Clock, grid: np.ndarray) -> np.ndarray:
    """Whether the pedal is down (last event at or before the moment >= 64; up before any event) at
    clock(x) for each score time x of `grid`. `times` in performance seconds, sorted."""
    t, v = _floats(times), np.asarray(values)
    if len(t) == 0:
        return np.zeros(len(grid), dtype=bool)
    last = np.searchsorted(t, clock(grid), side="right") - 1
    return (last >= 0) & (v[np.maximum(last, 0)] >= PEDAL_DOWN_FROM)


def pedal_scores(predicted: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(accuracy, F1 of "down") of pedal samples. F1 is 0 when either side never has the pedal down,
    also when neither has (scikit-learn's convention: no "down" found, none to find, no F1 credit;
    accuracy already rewards a pedal-less rendering of a pedal-less performance)."""
    p, t = np.asarray(predicted, dtype=bool), np.asarray(truth, dtype=bool)
    accuracy = float(np.mean(p == t)) if len(t) else float("nan")
    either = p.sum() + t.sum()
    return accuracy, float(2 * np.sum(p & t) / either) if either else 0.0


# ---------------------------------------------------------------------------------------------
# Metrics


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson r over the entries finite in both; 0 when fewer than two or either is constant."""
    x, y = _floats(a), _floats(b)
    both = np.isfinite(x) & np.isfinite(y)
    x, y = x[both], y[both]
    # A spread under 1e-9 (seconds, log ratios) is rounding noise: the score as written, mapped
    # through its own clock, has a tempo curve of +-1e-16, not a shape to correlate with.
    if len(x) < 2 or np.ptp(x) <= CONSTANT_SPREAD or np.ptp(y) <= CONSTANT_SPREAD:
        return 0.0
    x, y = x - x.mean(), y - y.mean()
    denominator = np.sqrt(np.sum(x * x) * np.sum(y * y))
    return float(np.sum(x * y) / denominator)


@dataclass(frozen=True)
class TimingProfile:
    """How one performance (or a rendering) times one score, on grids the score alone sets, so two
    profiles of one score compare entry by entry."""

    tempo: np.ndarray  # the tempo curve on the score's `tempo_grid`
    duration: float  # performance seconds from the score's first onset to its last, on the clock
    deviation: np.ndarray  # `onset_deviation` per score note
    articulation: np.ndarray  # per score note
    pedal: np.ndarray  # bool per `PEDAL_STEP` from the score's first onset to its last notated end


def timing_profile(score_start: np.ndarray, score_end: np.ndarray, performance_start: np.ndarray,
                   performance_end: np.ndarray, pedal_times: np.ndarray | None = None,
                   pedal_values: np.ndarray | None = None, group: np.ndarray | None = None) -> TimingProfile:  # fmt: skip
    """The profile of a performance of a score (arrays per score note; pedal events in performance
    seconds, none = never down). The score as written: performance_* = score_* and the score's pedal."""
    start, end = _floats(score_start), _floats(score_end)
    group = onset_groups(start) if group is None else np.asarray(group)
    clock = fit_clock(start, performance_start, group)
    first, last = float(start.min()), float(start.max())
    return TimingProfile(
        tempo=tempo_curve(clock, tempo_grid(first, last)),
        duration=float(clock(last) - clock(first)),
        deviation=onset_deviation(performance_start, group),
        articulation=articulation(clock, start, end, performance_start, performance_end),
        pedal=pedal_down(np.zeros(0) if pedal_times is None else pedal_times, np.zeros(0) if pedal_values is None else pedal_values,
                         clock, score_grid(first, float(end.max()), PEDAL_STEP)),  # fmt: skip
    )


def compare(predicted: TimingProfile, truth: TimingProfile) -> dict[str, float]:
    """The metrics (`METRICS`) of one prediction against one pianist on the same score."""
    accuracy, f1 = pedal_scores(predicted.pedal, truth.pedal)
    return {
        "tempo_r": pearson(predicted.tempo, truth.tempo),
        "tempo_shape_error": tempo_shape_error(predicted.tempo, truth.tempo),
        "overall_tempo_error": overall_tempo_error(predicted.duration, truth.duration),
        "onset_r": pearson(predicted.deviation, truth.deviation),
        "articulation_r": pearson(predicted.articulation, truth.articulation),
        "pedal_accuracy": accuracy,
        "pedal_f1": f1,
    }


def mean_metrics(rows: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over performances (NaN entries left out)."""
    return {key: float(np.nanmean([row[key] for row in rows])) if rows else float("nan") for key in METRICS}
