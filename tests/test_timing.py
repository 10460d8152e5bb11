"""velocity/model/timing.py on synthetic performances with known answers (no data, fast)."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from velocity.model import timing as T


def score(n_groups: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) of a score: onset groups every 0.25-0.75 s of 1-4 notes, lengths 0.1-1 s."""
    rng = np.random.default_rng(seed)
    onsets = np.cumsum(rng.choice([0.25, 0.5, 0.75], n_groups))
    start = np.repeat(onsets, rng.integers(1, 5, n_groups))
    return start, start + rng.choice([0.125, 0.25, 0.5, 1.0], len(start))


def test_onset_groups_share_exact_onsets_in_score_order():
    start = np.array([1.0, 0.0, 1.0, 0.5, 1.0 + 1e-9, 0.5009])  # a tick (~1 ms) apart: another group
    assert T.onset_groups(start).tolist() == [3, 0, 3, 1, 3, 2]


def test_a_constant_tempo_of_1_2x_has_a_flat_tempo_curve_at_log_1_2():
    start, end = score()
    played = 3.0 + 1.2 * start  # 1.2 performance seconds per score second, starting 3 s in
    clock = T.fit_clock(start, played)
    grid = T.tempo_grid(start.min(), start.max())
    assert len(grid) > 20 and np.allclose(np.diff(grid), 0.5)
    np.testing.assert_allclose(T.tempo_curve(clock, grid), np.log(1.2), atol=1e-12)
    # Beyond the outer groups the clock keeps the pace.
    np.testing.assert_allclose(clock(np.array([start.min() - 5, start.max() + 5])), 3.0 + 1.2 * np.array([start.min() - 5, start.max() + 5]))

    performance = T.timing_profile(start, end, played, 3.0 + 1.2 * end)
    written = T.timing_profile(start, end, start, end)
    assert T.tempo_shape_error(performance.tempo, written.tempo) == pytest.approx(0, abs=1e-12)
    assert T.overall_tempo_error(performance.duration, written.duration) == pytest.approx(0.2)
    assert T.overall_tempo_error(written.duration, performance.duration) == pytest.approx(0.2)  # symmetric
    np.testing.assert_allclose(performance.articulation, 0, atol=1e-12)  # as notated, at its tempo


def test_tempo_shape_error_ignores_the_level_and_is_exp_of_the_mean_gap():
    a = np.log([1.0, 1.1, 1.2, 1.1])
    assert T.tempo_shape_error(a + 0.3, a) == pytest.approx(0, abs=1e-12)
    b = a + np.array([0.1, -0.1, 0.1, -0.1])  # mean 0 change: every sample 0.1 off in shape
    assert T.tempo_shape_error(b, a) == pytest.approx(np.exp(0.1) - 1)


def test_the_clock_goes_through_group_medians_and_extrapolates_at_the_outer_4_seconds():
    start = np.array([0.0, 0.0, 0.0, 2.0, 4.0, 6.0, 8.0])
    played = np.array([0.1, 0.0, 0.5, 2.0, 5.0, 7.0, 8.0])  # first group's median 0.1
    clock = T.fit_clock(start, played)
    np.testing.assert_allclose(clock.score, [0, 2, 4, 6, 8])
    np.testing.assert_allclose(clock.performance, [0.1, 2, 5, 7, 8])
    assert clock.pace_before == pytest.approx((5 - 0.1) / 4)
    assert clock.pace_after == pytest.approx((8 - 5) / 4)
    assert clock(-1.0) == pytest.approx(0.1 - (5 - 0.1) / 4)
    assert clock(3.0) == pytest.approx(3.5)
    # An unplayed group is no knot: the clock interpolates across it.
    played[3] = np.nan
    assert T.fit_clock(start, played)(2.0) == pytest.approx(0.1 + (5 - 0.1) / 2)


def test_the_clock_stays_strictly_increasing_when_a_group_is_played_out_of_order():
    start = np.arange(8.0)
    played = np.array([0.0, 1.0, 2.0, 1.5, 4.0, 5.0, 5.0, 7.0])  # group 3 before group 2; 6 ties 5
    clock = T.fit_clock(start, played)
    assert np.all(np.diff(clock.performance) > 0)
    assert len(clock.score) == 6  # the fewest groups left out: one of 2 and 3, one of 5 and 6
    x = np.linspace(-3, 10, 1000)
    assert np.all(np.diff(clock(x)) > 0)
    assert np.isfinite(T.tempo_curve(clock, T.tempo_grid(0.0, 7.0))).all()
    # A single early outlier costs only itself, not every group after it.
    played = np.array([0.0, 6.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    assert T.fit_clock(start, played).score.tolist() == [0, 2, 3, 4, 5, 6, 7]


def test_onset_deviation_is_off_the_group_median_in_groups_of_two_or_more_played_notes():
    played = np.array([1.00, 1.02, 1.05, 2.0, 3.0, np.nan, 4.1, 3.9])
    group = np.array([0, 0, 0, 1, 2, 2, 3, 3])
    deviation = T.onset_deviation(played, group)
    np.testing.assert_allclose(deviation, [-0.02, 0.0, 0.03, np.nan, np.nan, np.nan, 0.1, -0.1], atol=1e-12)


def test_articulation_is_the_log_of_the_performed_over_the_clocked_length():
    start, end = np.array([0.0, 1.0, 2.0, 3.0]), np.array([1.0, 2.0, 2.0, 4.0])
    played = 2 * start  # twice as slow: a notated second lasts two
    clock = T.fit_clock(start, played)
    performed_end = played + np.array([2.0, 1.0, 0.5, np.nan])
    np.testing.assert_allclose(T.articulation(clock, start, end, played, performed_end), [0, np.log(0.5), np.nan, np.nan])


def test_a_performances_own_targets_render_its_timing_back():
    start, end = score(seed=1)
    rng = np.random.default_rng(2)
    group = T.onset_groups(start)
    # A tempo that drifts (slower, then faster), chords spread by up to 30 ms, free articulation,
    # a few notes not played, one group played out of the clock's order.
    warp = 1.0 + 0.3 * np.sin(start / 3)
    played = 2.0 + np.cumsum(np.r_[0, np.diff(start) * warp[1:]]) + rng.uniform(-0.015, 0.015, len(start))
    played_end = played + (end - start) * warp * rng.uniform(0.3, 1.5, len(start))
    played[rng.choice(len(start), 5, replace=False)] = np.nan
    late = np.flatnonzero(group == 10)
    played[late] += 0.8  # after the next group: the clock leaves it out
    played_end[late] += 0.8
    targets = T.timing_targets(start, end, played, played_end)
    assert 10 not in np.searchsorted(np.unique(start), targets.clock.score)

    onset, offset = T.render(targets.clock, start, end, targets.deviation, targets.articulation)
    ok = np.isfinite(played)
    np.testing.assert_allclose(onset[ok], played[ok], rtol=0, atol=1e-9)
    np.testing.assert_allclose(offset[ok], played_end[ok], rtol=0, atol=1e-9)
    # Unplayed notes fall on the clock, for their notated length on it.
    np.testing.assert_allclose(onset[~ok], targets.clock(start[~ok]))
    np.testing.assert_allclose(offset[~ok] - onset[~ok], targets.clock(end[~ok]) - targets.clock(start[~ok]))
    # In groups of 2+ played notes on the clock, the deviation is `onset_deviation`.
    spec = T.onset_deviation(played, group)
    on_clock = np.isfinite(spec) & (group != 10)
    np.testing.assert_allclose(targets.deviation[on_clock], spec[on_clock], atol=1e-12)


def test_a_tempo_curve_integrates_back_to_its_clock():
    grid = T.score_grid(0.0, 60.0, 0.5)
    flat = T.clock_from_tempo(grid, np.full(len(grid), np.log(1.2)), origin=5.0)
    x = np.linspace(-10, 80, 50)
    np.testing.assert_allclose(flat(x), 5.0 + 1.2 * x, atol=1e-9)
    curve = np.log(1.0 + 0.2 * np.sin(grid / 8))  # a phrase-long swell, slower than the window
    back = T.tempo_curve(T.clock_from_tempo(grid, curve), grid)
    # A pace read at the window's centre: within 0.1% inside, 1% at the ends (flat beyond them).
    assert np.max(np.abs(back - curve)[2:-2]) < 1e-3 and np.max(np.abs(back - curve)) < 1e-2
    assert T.tempo_shape_error(back, curve) < 1e-3


def test_a_constant_prediction_correlates_r_0():
    truth = np.random.default_rng(3).normal(size=50)
    assert T.pearson(np.full(50, 0.7), truth) == 0.0
    assert T.pearson(np.full(50, np.log(1.2)) + 1e-16 * np.arange(50), truth) == 0.0  # rounding noise
    assert T.pearson(truth, truth) == pytest.approx(1.0)
    assert T.pearson([1.0, np.nan, 3.0, 2.0], [2.0, 5.0, 6.0, 4.0]) == pytest.approx(1.0)  # NaN pairs left out

    start, end = score(seed=4)
    rng = np.random.default_rng(5)
    played = 1.1 * start + rng.normal(0, 0.01, len(start))
    pianist = T.timing_profile(start, end, played, played + (end - start) * rng.uniform(0.5, 1.2, len(start)))
    metrics = T.compare(T.timing_profile(start, end, start, end), pianist)
    assert metrics["tempo_r"] == metrics["onset_r"] == metrics["articulation_r"] == 0.0
    assert T.compare(pianist, pianist)["tempo_r"] == pytest.approx(1.0)
    assert T.compare(pianist, pianist)["tempo_shape_error"] == 0.0


def test_pedal_down_reads_cc64_on_the_clock_and_scores_accuracy_and_f1():
    times, values = np.array([1.0, 2.0, 4.0, 5.0]), np.array([100, 30, 64, 63])  # down 1-2 and 4-5
    grid = np.arange(0.0, 6.0, 0.5)
    down = T.pedal_down(times, values, T.identity_clock(), grid)
    assert grid[down].tolist() == [1.0, 1.5, 4.0, 4.5]
    # Played twice as slow, the pedal lands at half the score times.
    slow = T.Clock(np.array([0.0, 1.0]), np.array([0.0, 2.0]), 2.0, 2.0)
    assert grid[T.pedal_down(times, values, slow, grid)].tolist() == [0.5, 2.0]
    assert not T.pedal_down(np.zeros(0), np.zeros(0), slow, grid).any()

    predicted = np.array([1, 1, 1, 0, 0, 0, 0, 0], dtype=bool)
    truth = np.array([1, 1, 0, 0, 0, 0, 1, 1], dtype=bool)
    accuracy, f1 = T.pedal_scores(predicted, truth)
    assert accuracy == pytest.approx(5 / 8)
    assert f1 == pytest.approx(2 * 2 / (3 + 4))  # precision 2/3, recall 2/4
    assert T.pedal_scores(np.zeros(8, bool), truth) == (pytest.approx(4 / 8), 0.0)
    assert T.pedal_scores(np.zeros(8, bool), np.zeros(8, bool)) == (1.0, 0.0)  # no "down" to find


def test_mean_metrics_average_per_performance_leaving_out_nan():
    rows = [dict.fromkeys(T.METRICS, 1.0), {**dict.fromkeys(T.METRICS, 0.0), "overall_tempo_error": float("nan")}]
    assert T.mean_metrics(rows) == {**dict.fromkeys(T.METRICS, 0.5), "overall_tempo_error": 1.0}


def _midi(events: list[tuple[int, int]], tpq: int = 480, microseconds: int = 1_000_000) -> bytes:
    """A one-track file at `microseconds` per quarter: a note, then CC64 (tick, value) events."""
    body = bytes([0x00, 0xFF, 0x51, 0x03]) + microseconds.to_bytes(3, "big") + bytes([0x00, 0x90, 60, 64, 0x60, 0x80, 60, 0])
    tick = 0x60
    for at, value in events:
        delta, tick = at - tick, at
        assert 0 <= delta < 128  # a one-byte delta time keeps the writer trivial
        body += bytes([delta, 0xB0, 64, value])
    body += bytes([0x00, 0xFF, 0x2F, 0x00])
    return b"MThd" + struct.pack(">IHHH", 6, 0, 1, tpq) + b"MTrk" + struct.pack(">I", len(body)) + body


def test_sustain_events_reads_cc64_in_seconds_of_the_files_tempo_map(tmp_path):
    path = tmp_path / "pedal.mid"
    path.write_bytes(_midi([(120, 127), (240, 0)]))  # a quarter is a second: ticks / 480 seconds
    times, values = T.sustain_events(path)
    np.testing.assert_allclose(times, [0.25, 0.5])
    assert values.tolist() == [127, 0]


def test_the_onset_blend_is_chosen_by_the_renderings_onset_r_not_absolute_error():
    """A network that spreads chords as the pianist does, at half the size and off by a group-wide
    shift, against a tree that predicts almost nothing: the tree wins on absolute error, the network
    on the onset r the rendering is judged by, and the blend follows the r."""
    import pandas as pd

    from velocity.model.timing_net import ONSET, blend_error, fit_blend, rendered_onset_r

    rng = np.random.default_rng(0)
    start = np.repeat(np.arange(40.0), 3)  # 40 three-note chords, each performance
    spread = rng.normal(0, 0.02, size=len(start))
    notes = pd.DataFrame({
        "piece_id": np.repeat(["a", "b"], len(start)), "start": np.tile(start, 2),
        "performance_start": np.tile(start, 2) + np.tile(spread, 2), "onset_deviation": np.tile(spread, 2), "tempo": 90.0,
    })  # fmt: skip
    shift = np.repeat(rng.normal(0, 0.05, size=80), 3)  # the same for every note of a chord: heard as tempo, not spread
    network = pd.DataFrame({ONSET: 0.5 * notes["onset_deviation"].to_numpy() + shift})
    tree = pd.DataFrame({ONSET: rng.normal(0, 0.001, size=len(notes))})

    assert rendered_onset_r(notes["onset_deviation"].to_numpy(), notes) == pytest.approx(1.0)
    assert rendered_onset_r(network[ONSET].to_numpy(), notes) == pytest.approx(1.0)  # the shift cancels within a chord
    assert np.abs(network[ONSET] - notes["onset_deviation"]).mean() > np.abs(tree[ONSET] - notes["onset_deviation"]).mean()
    assert blend_error(ONSET, network[ONSET].to_numpy(), notes) < blend_error(ONSET, tree[ONSET].to_numpy(), notes)
    others = {"log_pace": 0.0, "articulation": 0.0, "pedal_down": 0.0}
    assert fit_blend(network.assign(**others), tree.assign(**others), notes.assign(**others))[ONSET] > 0


def test_the_tempo_levels_blend_is_chosen_by_the_overall_tempo_error_and_keeps_the_curves_shape():
    """Two performances played 1.5 times slower than written, with a swell. The tree has the swell
    but not the level, the network the level but a noisy swell: the level's weight goes to the
    network whatever the per-note blend, and moving a curve to a level keeps its shape."""
    import pandas as pd

    from velocity.model.timing_net import LEVEL, fit_blend, level_blend_error, with_level

    rng = np.random.default_rng(0)
    groups = 60
    swell = 0.2 * np.sin(np.linspace(0, 2 * np.pi, groups))
    pace = np.log(1.5) + swell
    clock = np.concatenate([[0.0], np.cumsum(np.exp(pace[:-1]) * 0.5)])  # 0.5 score seconds a group
    start, played = np.repeat(np.arange(groups) * 0.5, 2), np.repeat(clock, 2)  # two-note chords struck together
    zeros = {"onset_deviation": 0.0, "articulation": 0.0, "pedal_down": 0.0}
    notes = pd.DataFrame({"piece_id": np.repeat(["a", "b"], len(start)), "start": np.tile(start, 2), "performance_start": np.tile(played, 2),
                          "log_pace": np.tile(np.repeat(pace, 2), 2), "tempo": 90.0, **zeros})  # fmt: skip
    network = pd.DataFrame({"log_pace": np.log(1.5) + rng.normal(0, 0.3, size=len(notes)), **zeros})
    tree = pd.DataFrame({"log_pace": np.tile(np.repeat(swell, 2), 2), **zeros})

    weights = fit_blend(network, tree, notes)
    assert weights[LEVEL] == 1.0
    assert level_blend_error(network, tree, notes, weights["log_pace"], 1.0) < 0.05 < 0.4 < level_blend_error(network, tree, notes, weights["log_pace"], 0.0)

    blended = 0.3 * network["log_pace"].to_numpy() + 0.7 * tree["log_pace"].to_numpy()
    moved = pd.Series(with_level(blended, network["log_pace"].to_numpy(), notes["piece_id"].to_numpy()))
    by_piece = notes["piece_id"]
    np.testing.assert_allclose(moved.groupby(by_piece).mean(), network["log_pace"].groupby(by_piece).mean())
    np.testing.assert_allclose(moved - moved.groupby(by_piece).transform("mean"),
                               blended - pd.Series(blended).groupby(by_piece).transform("mean"), atol=1e-12)  # fmt: skip


def test_a_score_without_a_tempo_of_its_own_gets_the_curve_scale_validation_chose():
    """Two scores with the same swell predicted: the pianist plays the one at 120 throughout (a
    notation default) flat and the one marked 90 with the swell. Validation then scales the curves
    of scores without a tempo of their own to nothing, and a marked score's curve stays as it is."""
    import pandas as pd

    from velocity.model.midi import at_default_tempo
    from velocity.model.timing_net import UNSTATED_SHAPE, fit_blend, with_unstated_scale

    groups = 60
    swell = 0.2 * np.sin(np.linspace(0, 2 * np.pi, groups))
    start = np.repeat(np.arange(groups) * 0.5, 2)  # two-note chords, 0.5 score seconds apart
    flat_clock = np.repeat(np.arange(groups) * 0.5, 2)
    swell_clock = np.repeat(np.concatenate([[0.0], np.cumsum(np.exp(swell[:-1]) * 0.5)]), 2)
    zeros = {"onset_deviation": 0.0, "articulation": 0.0, "pedal_down": 0.0}
    notes = pd.DataFrame({"piece_id": np.repeat(["at120", "marked"], len(start)), "start": np.tile(start, 2),
                          "performance_start": np.concatenate([flat_clock, swell_clock]), "tempo": np.repeat([120.0, 90.0], len(start)),
                          "log_pace": np.concatenate([np.zeros(len(start)), np.repeat(swell, 2)]), **zeros})  # fmt: skip
    predicted = pd.DataFrame({"log_pace": np.tile(np.repeat(swell, 2), 2), **zeros})

    assert at_default_tempo(np.full(5, 120.0)) and not at_default_tempo(np.array([120.0, 90.0]))
    assert fit_blend(predicted, predicted, notes)[UNSTATED_SHAPE] == 0.0
    scaled = with_unstated_scale(predicted["log_pace"].to_numpy(), notes, 0.5)
    at120 = notes["piece_id"].to_numpy() == "at120"
    np.testing.assert_allclose(scaled[at120] - scaled[at120].mean(), 0.5 * (predicted["log_pace"][at120] - predicted["log_pace"][at120].mean()), atol=1e-12)
    np.testing.assert_array_equal(scaled[~at120], predicted["log_pace"][~at120])
    assert fit_blend(predicted, predicted, notes.assign(tempo=90.0))[UNSTATED_SHAPE] == 1.0  # no such score on validation: as predicted
    unplayed = notes.assign(performance_start=np.where(at120, np.nan, notes["performance_start"]))
    assert fit_blend(predicted, predicted, unplayed)[UNSTATED_SHAPE] == 1.0  # nothing to judge by: as predicted


def test_a_tempo_drift_the_pianist_does_not_play_is_taken_out_of_the_curve():
    """A predicted curve with the pianist's bends every 4 score seconds plus a slow drift over the
    whole piece: where the pianist plays no drift, validation scales the slow part to nothing and
    keeps the bends; where they play it too, the curve stays as predicted."""
    import pandas as pd

    from velocity.model.timing_net import SLOW_SHAPE, fit_blend, slow_pace, with_slow_scale

    start = np.arange(240) * 0.25  # one note every quarter of a score second, 60 s
    bends = 0.15 * np.sin(2 * np.pi * start / 4.0)
    drift = 0.3 * np.sin(2 * np.pi * start / 60.0)
    zeros = {"onset_deviation": 0.0, "articulation": 0.0, "pedal_down": 0.0}

    def played(log_pace: np.ndarray) -> np.ndarray:
        return np.concatenate([[0.0], np.cumsum(np.exp(log_pace[:-1]) * 0.25)])

    predicted = pd.DataFrame({"log_pace": bends + drift, **zeros})
    inside = (start >= 4) & (start <= 56)  # 8 s around: two whole bends, nothing slower left
    assert np.abs(slow_pace(bends, pd.DataFrame({"start": start}))[inside]).max() < 0.01
    for truth, scale in ((bends, 0.0), (bends + drift, 1.0)):
        notes = pd.DataFrame({"piece_id": "p", "start": start, "performance_start": played(truth), "tempo": 90.0, "log_pace": truth, **zeros})
        assert fit_blend(predicted, predicted, notes)[SLOW_SHAPE] == scale
    notes = pd.DataFrame({"piece_id": "p", "start": start})
    without_drift = with_slow_scale(predicted["log_pace"].to_numpy(), notes, 0.0)
    assert np.abs(without_drift - bends)[inside].max() < 0.02  # the bends as predicted, the drift gone
    np.testing.assert_array_equal(with_slow_scale(predicted["log_pace"].to_numpy(), notes, 1.0), predicted["log_pace"])


def test_the_slow_part_weighs_each_onset_group_by_the_score_time_it_carries():
    """Chords at uneven gaps in two scores: a span wider than a score gives each note its score's
    time-weighted mean pace (the last group carries the mean gap), whatever the chord's size; scaling
    the slow part keeps each score's mean."""
    import pandas as pd

    from velocity.model.timing_net import slow_pace, with_slow_scale

    rng = np.random.default_rng(0)
    tables, expected = [], []
    for piece in ("a", "b"):
        onsets = np.cumsum(rng.uniform(0.1, 1.0, 12))
        pace = rng.normal(0.0, 0.2, 12)
        size = rng.integers(1, 4, 12)  # notes per chord
        tables.append(pd.DataFrame({"piece_id": piece, "start": np.repeat(onsets, size), "log_pace": np.repeat(pace, size)}))
        carried = np.append(np.diff(onsets), np.diff(onsets).mean())
        expected.append(np.full(size.sum(), np.average(pace, weights=carried)))
    notes = pd.concat(tables, ignore_index=True)
    np.testing.assert_allclose(slow_pace(notes["log_pace"].to_numpy(), notes, span=1000.0), np.concatenate(expected))
    scaled = with_slow_scale(notes["log_pace"].to_numpy(), notes, 0.5)
    np.testing.assert_allclose(pd.Series(scaled).groupby(notes["piece_id"]).mean(), notes.groupby("piece_id")["log_pace"].mean())
