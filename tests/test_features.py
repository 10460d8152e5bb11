"""Per-note features (velocity/model/features.py), their embeddings, and the decodings and calibration built on them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import params_section
from velocity.model.codec import N_SPECIALS, PAD, bin_index
from velocity.model.features import GBT_FEATURES, feature_ids, feature_sizes, learn_feature_edges, note_features


def piece(piece_id: str, pitch: list[int], start: list[float], duration: list[float]) -> pd.DataFrame:
    start_arr = np.asarray(start, dtype=float)
    dstart = np.append(np.diff(start_arr), duration[-1])  # the extract stage's rule
    return pd.DataFrame({"piece_id": piece_id, "pitch": pitch, "start": start, "duration": duration, "dstart": dstart})


# Piece a: a chord played top note first (67, then 60 and 64 within 30 ms), a single note, then a
# two-note chord. Piece b: two notes.
NOTES = pd.concat([
    piece("a", [67, 60, 64, 72, 48, 55], [0.000, 0.010, 0.020, 0.500, 1.000, 1.015], [0.4, 0.4, 0.4, 0.3, 0.8, 0.8]),
    piece("b", [50, 52], [0.0, 2.0], [1.5, 0.5]),
], ignore_index=True)  # fmt: skip


def test_chord_size_rank_asynchrony_and_span():
    f = note_features(NOTES, ["chord_size", "chord_rank", "chord_asynchrony", "chord_span", "top_voice", "bottom_voice"])
    assert f["chord_size"].tolist() == [3, 3, 3, 1, 2, 2, 1, 1]
    assert f["chord_rank"].tolist() == [0, 2, 1, 0, 1, 0, 0, 0]  # 0 = the chord's highest pitch
    np.testing.assert_allclose(f["chord_asynchrony"], [0, 0.010, 0.020, 0, 0, 0.015, 0, 0])
    assert f["chord_span"].tolist() == [7, 7, 7, 0, 7, 7, 0, 0]
    assert f["top_voice"].tolist() == [1, 0, 0, 1, 0, 1, 1, 1]
    assert f["bottom_voice"].tolist() == [0, 1, 0, 1, 1, 0, 1, 1]


def test_dprev_at_piece_boundaries_and_neighbours_stay_in_their_piece():
    f = note_features(NOTES, ["dprev", "gap_prev_1", "gap_next_1", "interval_prev_1", "position"])
    # The first note of each piece has no previous note: its own duration, as dstart's last note.
    np.testing.assert_allclose(f["dprev"], [0.4, 0.010, 0.010, 0.480, 0.500, 0.015, 1.5, 2.0])
    assert np.isnan(f["gap_prev_1"][0]) and np.isnan(f["gap_prev_1"][6])  # never looks into piece a
    assert np.isnan(f["gap_next_1"][5]) and np.isnan(f["gap_next_1"][7])
    assert f["interval_prev_1"][7] == 2
    np.testing.assert_allclose(f["position"], [0, 0.01 / 1.015, 0.02 / 1.015, 0.5 / 1.015, 1 / 1.015, 1, 0, 1])


def test_the_tree_reads_46_features_of_every_note():
    f = note_features(NOTES, list(GBT_FEATURES))
    assert f.shape == (len(NOTES), 46)
    neighbours = [c for c in f.columns if c.startswith(("gap_", "interval_"))]
    assert np.isfinite(f.drop(columns=neighbours).to_numpy()).all()  # only missing neighbours are NaN
    assert f["density_8"][6] == pytest.approx(2 / 2.0)  # piece b: 2 notes over 2 s


def test_feature_edges_merge_equal_quantiles_and_categories_are_fixed():
    edges = learn_feature_edges(NOTES, {"chord_asynchrony": 8, "chord_size": 4, "dprev": 3})
    assert list(edges) == ["chord_asynchrony", "chord_size", "dprev"]  # params order
    assert len(edges["chord_asynchrony"]) < 9  # most notes start their chord: equal quantiles merged
    assert edges["chord_size"] == [0.5, 1.5, 2.5, 3.5, 4.5]  # sizes 1, 2, 3 and 4+
    ids = feature_ids(NOTES, edges)
    assert ids.min() >= 1  # 0 is the pad id
    assert ids[:, 1].tolist() == [3, 3, 3, 1, 2, 2, 1, 1]
    assert feature_sizes(edges) == tuple(len(e) for e in edges.values())
    assert (ids.max(axis=0) < np.array(feature_sizes(edges))).all()
    np.testing.assert_array_equal(ids[:, 2] - 1, bin_index(note_features(NOTES, ["dprev"])["dprev"], edges["dprev"]))
    with pytest.raises(ValueError, match="features.loudness"):
        learn_feature_edges(NOTES, {"loudness": 4})
    with pytest.raises(ValueError, match="features.dprev"):
        learn_feature_edges(NOTES, {"dprev": 1})


def test_a_missing_neighbour_embeds_as_no_interval():
    """The tree reads a piece's first note's interval from the previous one as missing (NaN); the
    embedded feature reads it as 0, so the edges are learned over real intervals, not NaN."""
    edges = learn_feature_edges(NOTES, {"interval_prev_1": 4, "pitch": 4})
    assert len(edges["interval_prev_1"]) > 2 and np.isfinite(edges["interval_prev_1"]).all()
    ids = feature_ids(NOTES, edges)
    zero_interval = bin_index([0.0], edges["interval_prev_1"])[0] + 1
    assert ids[0, 0] == ids[6, 0] == zero_interval  # each piece's first note
    assert ids[7, 0] == bin_index([2.0], edges["interval_prev_1"])[0] + 1


def test_no_features_gives_the_seeds_tokens_and_model_exactly():
    from velocity.model.transformer import ModelConfig, build_model
    from velocity.stages.bins import BinsParams, learn_bins
    from velocity.stages.vocab import build_vocab
    from velocity.stages.windows import WindowsParams, make_windows

    notes = NOTES.assign(velocity=np.arange(len(NOTES)) + 40)
    bins = learn_bins(notes, BinsParams(3, 3, 3, fixed_edges=None))
    vocab = build_vocab(bins, velocity_hint=False)
    assert len(vocab.src) == 795
    seed = make_windows(notes, bins, vocab, params_section(WindowsParams, "windows", length=4, step=2))
    rich = make_windows(notes, {**bins, "features": learn_feature_edges(notes, {"dprev": 4, "chord_rank": 3})}, vocab, params_section(WindowsParams, "windows", length=4, step=2))
    np.testing.assert_array_equal(seed.src, rich.src)
    np.testing.assert_array_equal(seed.tgt, rich.tgt)
    assert seed.features.shape == (*seed.src.shape, 0) and rich.features.shape == (*seed.src.shape, 2)
    assert ((rich.features == PAD) == (rich.src == PAD)[..., None]).all()  # padding is padding everywhere

    torch.manual_seed(0)
    seed_shape = dict(layers=2, heads=4, d_model=128, d_ff=512, dropout=0.1, aligned=False, kind="encoder-decoder")
    plain = build_model(ModelConfig(src_vocab=795, tgt_vocab=131, max_len=4, features=(), **seed_shape))
    assert not any("features" in name for name in plain.state_dict())  # the seed's parameters, no more
    with_features = build_model(ModelConfig(src_vocab=795, tgt_vocab=131, max_len=4, features=(5, 4), **seed_shape))
    extra = set(with_features.state_dict()) - set(plain.state_dict())
    assert extra == {"src_embed.features.0.weight", "src_embed.features.1.weight"}


def test_feature_embeddings_change_the_prediction():
    from velocity.model.transformer import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(src_vocab=30, tgt_vocab=131, layers=1, heads=2, d_model=16, d_ff=32, dropout=0.1, max_len=6, aligned=False,
                                    kind="encoder", features=(4,))).eval()
    src = torch.randint(N_SPECIALS, 30, (1, 6))
    a, b = torch.ones(1, 6, 1, dtype=torch.long), torch.full((1, 6, 1), 3)
    assert not torch.allclose(model(src, a), model(src, b))
    with pytest.raises(ValueError, match="1 note features"):
        model(src)


def test_encoder_only_head_overfits_one_batch():
    from velocity.model.transformer import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(src_vocab=40, tgt_vocab=131, layers=2, heads=2, d_model=32, d_ff=64, dropout=0.0, max_len=16, aligned=False,
                                    kind="encoder", features=(6,)))
    src = torch.randint(N_SPECIALS, 40, (4, 16))
    features = torch.randint(1, 6, (4, 16, 1))
    tgt = torch.randint(N_SPECIALS + 20, N_SPECIALS + 110, (4, 16))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(300):
        loss = torch.nn.functional.cross_entropy(model(src, features).flatten(0, 1), tgt.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    predicted = model(src, features).argmax(dim=-1)
    assert (predicted == tgt).float().mean() > 0.95


def test_crps_is_the_absolute_error_of_a_sure_guess():
    from velocity.model.loss import crps

    logits = torch.full((1, 2, 131), -1e4)
    logits[0, 0, N_SPECIALS + 60] = 1e4  # sure of 60
    logits[0, 1, N_SPECIALS + 64] = 1e4  # sure of 64
    target = torch.tensor([[N_SPECIALS + 60, N_SPECIALS + 70]])
    total, count = crps(logits, target)
    assert count == 2 and float(total) == pytest.approx(0 + 6)
    target[0, 1] = PAD
    assert crps(logits, target)[1] == 1


def test_transpose_moves_whole_windows_by_semitones_and_never_off_the_keyboard():
    from velocity.model.training import transpose_batch

    per_pitch = 9  # 3 x 3 bins
    low = N_SPECIALS + 0 * per_pitch + 4  # A0, the lowest key
    src = torch.tensor([[N_SPECIALS + 40 * per_pitch + 1, N_SPECIALS + 41 * per_pitch, PAD]] * 64 + [[low, low, PAD]] * 64)
    batch = (src, src.clone(), torch.zeros(128, 3, 0, dtype=torch.long))
    torch.manual_seed(0)
    moved, tgt, _ = transpose_batch(batch, 3, per_pitch)
    assert torch.equal(tgt, src) and (moved[:, 2] == PAD).all()
    shift = (moved[:, 0] - src[:, 0]) // per_pitch
    assert torch.equal(moved[:, 1] - src[:, 1], shift * per_pitch)  # one shift per window
    assert set(shift[:64].tolist()) == set(range(-3, 4))
    assert (shift[64:] >= 0).all()  # A0 can only go up


def test_averaging_takes_each_notes_median_over_every_window_holding_it():
    """`averaged_medians`, a few windows a batch, equals the median of each note's distribution
    averaged over its windows, computed here all at once; a note alone in one window takes that one's."""
    from velocity.model.pieces import averaged_medians, median_velocity
    from velocity.model.stitching import piece_windows, plan_windows
    from velocity.model.transformer import ModelConfig, build_model, one_pass_logits

    torch.manual_seed(0)
    model = build_model(ModelConfig(src_vocab=30, tgt_vocab=131, layers=1, heads=2, d_model=16, d_ff=32, dropout=0.1, max_len=8, aligned=False,
                                    kind="encoder", features=())).eval()
    n_notes = 21
    src = np.random.default_rng(0).integers(N_SPECIALS, 30, n_notes)
    plan = plan_windows(n_notes, 8, 4)
    rows = plan.window_rows()
    with torch.no_grad():
        probs = one_pass_logits(model, torch.as_tensor(piece_windows(src, plan)))[..., N_SPECIALS:].softmax(dim=-1).double().numpy()
    total, count = np.zeros((n_notes, 128)), np.zeros(n_notes)
    np.add.at(total, rows[rows >= 0], probs[rows >= 0])
    np.add.at(count, rows[rows >= 0], 1)
    assert (count >= 1).all()  # every note in some window
    expected = median_velocity(total / count[:, None])
    assert (expected[:4] == median_velocity(probs[0, :4])).all()  # notes 0..3 lie in window 0 only
    velocity = averaged_medians([model], src, np.zeros((n_notes, 0), dtype=np.int64), rows, np.zeros(len(rows), dtype=np.int64), batch_windows=2)
    np.testing.assert_array_equal(velocity, expected)


def test_an_ensembles_networks_each_read_their_own_windows_and_every_note_hears_each():
    """`predict_pieces`' averaged decoding of a two-network ensemble: network 1's windows start half
    a hop after network 0's, and each note takes the median of its distributions averaged over
    every (network, window) pair holding it, computed here all at once."""
    from velocity.model.pieces import median_velocity, predict_pieces
    from velocity.model.stitching import staggered_windows
    from velocity.model.transformer import Ensemble, ModelConfig, build_model, one_pass_logits

    torch.manual_seed(0)
    cfg = ModelConfig(src_vocab=30, tgt_vocab=131, layers=1, heads=2, d_model=16, d_ff=32, dropout=0.1, max_len=8, aligned=False,
                      kind="encoder", features=())
    networks = [build_model(cfg).eval(), build_model(cfg).eval()]
    n_notes, length, hop = 29, 8, 6
    src = np.random.default_rng(0).integers(N_SPECIALS, 30, n_notes)
    rows, reader = staggered_windows(n_notes, length, hop, members=2)
    assert rows[reader == 0, 0].tolist() == [0, 6, 12, 18, 21]  # every hop, and one ending at the last note
    assert rows[reader == 1, 0].tolist() == [0, 3, 9, 15, 21]  # half a hop later, and the first and last windows
    assert (np.diff(rows[:, 0]) >= 0).all()  # ordered by first note
    total, count = np.zeros((n_notes, 128)), np.zeros(n_notes)
    with torch.no_grad():
        for window, k in zip(rows, reader):
            probs = one_pass_logits(networks[k], torch.as_tensor(src[window])[None])[0, :, N_SPECIALS:].softmax(dim=-1).double().numpy()
            total[window] += probs
            count[window] += 1
    assert (count >= 2).all()  # every note heard by each network
    [velocity] = predict_pieces(Ensemble(networks), [src], length, hop, batch_windows=1, decoding="averaged")
    np.testing.assert_array_equal(velocity, median_velocity(total / count[:, None]))
    short_rows, short_reader = staggered_windows(5, length, hop, members=2)  # shorter than a window: one padded window each
    assert short_rows.tolist() == [[0, 1, 2, 3, 4, -1, -1, -1]] * 2 and short_reader.tolist() == [0, 1]
    with pytest.raises(ValueError, match="hop"):
        staggered_windows(n_notes, length, length + 1, members=2)


def test_a_long_piece_widens_its_averaged_hop_to_stay_within_max_windows():
    """`piece_hop`: a piece short enough keeps the hop; a longer one gets the hop that reads it in
    at most about `max_windows` windows a network (never wider than a window), and `predict_pieces`
    decodes each piece with its own hop."""
    from velocity.model.pieces import piece_hop, predict_pieces
    from velocity.model.transformer import Ensemble, ModelConfig, build_model

    length, hop = 8, 2
    assert piece_hop(40, length, hop, max_windows=None) == piece_hop(40, length, hop, max_windows=20) == hop
    assert piece_hop(41, length, hop, max_windows=20) == 3  # 41 notes every 2 would take 21 windows
    assert piece_hop(10_000, length, hop, max_windows=20) == length
    torch.manual_seed(0)
    cfg = ModelConfig(src_vocab=30, tgt_vocab=131, layers=1, heads=2, d_model=16, d_ff=32, dropout=0.1, max_len=length, aligned=False,
                      kind="encoder", features=())
    ensemble = Ensemble([build_model(cfg).eval(), build_model(cfg).eval()])
    rng = np.random.default_rng(0)
    short, long = rng.integers(N_SPECIALS, 30, 30), rng.integers(N_SPECIALS, 30, 70)
    capped = predict_pieces(ensemble, [short, long], length, hop, batch_windows=4, decoding="averaged", max_windows=20)
    [short_alone] = predict_pieces(ensemble, [short], length, hop, batch_windows=4, decoding="averaged")
    [long_wide] = predict_pieces(ensemble, [long], length, 4, batch_windows=4, decoding="averaged")
    [long_fine] = predict_pieces(ensemble, [long], length, hop, batch_windows=4, decoding="averaged")
    np.testing.assert_array_equal(capped[0], short_alone)
    np.testing.assert_array_equal(capped[1], long_wide)
    assert not np.array_equal(long_wide, long_fine)  # the hop does change what is heard (the check can fail)


def test_calibration_restores_the_spread_it_is_asked_for():
    from velocity.model.calibration import Calibration, fit_calibration

    rng = np.random.default_rng(0)
    piece_id = np.repeat(np.arange(20), 200)
    level = rng.normal(64, 10, 20)[piece_id]
    true = np.clip(level + rng.normal(0, 15, len(piece_id)), 1, 127)
    shrunk = 64 + 0.5 * (true - 64) + rng.normal(0, 3, len(true))  # a flat, MAE-minded predictor
    calibration = fit_calibration(shrunk, true, piece_id, min_std_ratio=0.9)
    stretched = np.concatenate([calibration.apply(shrunk[piece_id == p]) for p in range(20)])
    assert stretched.std() / true.std() >= 0.9 > shrunk.std() / true.std()
    assert calibration.within > 1 and calibration.between >= 1
    assert Calibration().apply(np.array([10.4, 130.0, 0.2])).tolist() == [10, 127, 1]  # identity, rounded and kept in 1..127
