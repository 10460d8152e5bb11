"""Rendering a score's performance from timing targets (velocity/model/timing.py): the align
stage's targets give a demo performance back, `timing 0` is the score as written, and what comes
out is playable: each key in order, released before it is struck again, pedal events well formed."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from velocity.datasets.demo_corpus import generate_corpus, generate_scores
from velocity.model.timing import TIMING_TARGETS, pedal_events, render_performance
from velocity.stages.align import AlignParams, align
from velocity.stages.extract import extract_notes

TICK_S = 1 / 960  # the demo performances' resolution: 480 ticks per beat at 120 bpm


@pytest.fixture(scope="module")
def aligned(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """A few demo pieces (and their ASAP-only second pianists) extracted and aligned."""
    root = tmp_path_factory.mktemp("rendering")
    raw = generate_corpus(root / "raw", n_pieces=6, seed=0)
    scores = generate_scores(root / "scores", n_pieces=6, seed=0)
    extract_notes(raw, root / "notes", sustain=False, workers=1, scores_dir=scores)
    align(scores, root / "notes", root / "aligned", AlignParams(tolerance=0.2, skipped_beat=0.05), performances_dir=raw)
    return pd.concat([pd.read_parquet(root / "aligned" / f"{split}.parquet") for split in ("train", "validation", "test")], ignore_index=True)


def test_a_demo_performances_targets_on_its_own_score_give_back_its_timing_within_a_tick(aligned):
    checked = 0
    for _, part in aligned.groupby("piece_id", sort=False):
        played = part["velocity"].to_numpy() >= 0
        rendered = render_performance(part["start"].to_numpy(), part["end"].to_numpy(), part["pitch"].to_numpy(), part[list(TIMING_TARGETS)])
        # The rendering starts the first group at its score time times its pace; the pianist after
        # the recording's silence: compare from the first onset on.
        shift = part["performance_start"].to_numpy()[played][0] - rendered.onset[played][0]
        np.testing.assert_allclose(rendered.onset[played] + shift, part["performance_start"].to_numpy()[played], atol=TICK_S)
        np.testing.assert_allclose(rendered.end[played] + shift, part["performance_end"].to_numpy()[played], atol=TICK_S)
        checked += 1
    assert checked >= 6


def test_timing_zero_is_the_score_as_written(aligned):
    part = aligned[aligned["piece_id"] == aligned["piece_id"].iloc[0]]
    start, end = part["start"].to_numpy(), part["end"].to_numpy()
    rendered = render_performance(start, end, part["pitch"].to_numpy(), part[list(TIMING_TARGETS)], timing=0.0)
    np.testing.assert_allclose(rendered.onset, start, atol=1e-9)
    np.testing.assert_allclose(rendered.end - rendered.onset, end - start, atol=1e-9)
    twice = render_performance(start, end, part["pitch"].to_numpy(), part[list(TIMING_TARGETS)], timing=2.0)
    assert np.abs(twice.onset - start).max() > np.abs(render_performance(start, end, part["pitch"].to_numpy(), part[list(TIMING_TARGETS)]).onset - start).max()


def test_keys_stay_playable_whatever_the_targets():
    """Wild deviations and articulations: each key's notes keep their order and are released by the time
    the key is struck again."""
    rng = np.random.default_rng(0)
    n = 400
    start = np.sort(rng.integers(0, 200, n) * 0.125)
    end = start + rng.choice([0.125, 0.25, 0.5, 1.0], n)
    pitch = rng.integers(60, 66, n)  # few keys: many repeats
    targets = pd.DataFrame({"log_pace": rng.normal(0, 0.3, n), "onset_deviation": rng.normal(0, 0.2, n),
                            "articulation": rng.normal(0.5, 1.0, n), "pedal_down": rng.random(n)})  # fmt: skip
    rendered = render_performance(start, end, pitch, targets, timing=2.0)
    for key in np.unique(pitch):
        rows = np.flatnonzero(pitch == key)
        rows = rows[np.lexsort((rows, start[rows]))]
        onset, stop = rendered.onset[rows], rendered.end[rows]
        assert np.all(np.diff(onset) > 0)
        assert np.all(stop[:-1] <= onset[1:])
        assert np.all(stop >= onset)


def test_pedal_events_alternate_and_stop_by_the_last_note():
    onset = np.array([0.0, 0.0, 0.5, 1.0, 1.5, 2.0, 2.5])
    end = onset + 0.4
    group = np.array([0, 0, 1, 2, 3, 4, 5])
    down = np.array([1, 1, 1, 0, 1, 1, 1])
    change = np.array([0, 0, 0, 0, 0, 1, 0], dtype=bool)
    events = pedal_events(onset, end, group, down, change)
    values = [v for _, v in events]
    times = [t for t, _ in events]
    assert values == [127, 0] * (len(values) // 2) and len(values) % 2 == 0
    assert times == sorted(times) and times[-1] <= end.max()
    assert events[:2] == [(0.08, 127), (1.0, 0)]  # pressed after the attack, released at the first group that lets go
    assert (2.0, 0) in events and (2.08, 127) in events  # changed at the downbeat
    assert pedal_events(onset, end, group, np.zeros(len(onset))) == []


def test_pedal_events_keep_time_order_in_fast_passages():
    """Groups closer together than the press's delay (Islamey's runs): a press not due by the next
    group's release or change is not made, so the events stay strictly increasing and alternating."""
    onset = np.arange(40) * 0.03  # a group every 30 ms, the pedal wanted on every other one
    group = np.arange(40)
    events = pedal_events(onset, onset + 0.5, group, np.arange(40) % 2 == 0, np.arange(40) % 5 == 0)
    times, values = [t for t, _ in events], [v for _, v in events]
    assert np.all(np.diff(times) > 0) and values == [127, 0] * (len(values) // 2)
    rng = np.random.default_rng(1)
    for _ in range(20):
        onset = np.sort(rng.random(300) * 10)
        events = pedal_events(onset, onset + 0.2, np.arange(300), rng.random(300) < 0.6, rng.random(300) < 0.2)
        times, values = [t for t, _ in events], [v for _, v in events]
        assert np.all(np.diff(times) > 0) and values == [127, 0] * (len(values) // 2) and times[-1] <= onset.max() + 0.2


def test_the_demo_performances_carry_rubato_chord_spread_articulation_and_pedal(aligned):
    """What the demo run's timing model can learn: each is there, and it follows the score."""
    played = aligned[aligned["velocity"] >= 0]
    pace_spread = played.groupby("piece_id")["log_pace"].std()
    assert (pace_spread > 0.03).all()  # rubato: the pace moves within every performance
    assert played["onset_deviation"].abs().quantile(0.9) > 0.008  # the melody sounds ahead of its chord
    articulation = played.groupby(played["duration"] > played["duration"].median())["articulation"].mean()
    assert abs(articulation.iloc[0] - articulation.iloc[1]) > 0.05  # lengths are not the notated ones, and not uniformly
    pedalled = aligned.groupby("piece_id")["pedal_down"].mean()
    assert (pedalled > 0.2).any() and (pedalled < 0.05).any()  # some pieces use the pedal, some (the Baroque) do not
