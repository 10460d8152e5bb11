"""Stitching overlapping windows back into whole pieces: every note gets exactly one prediction."""

from __future__ import annotations

import numpy as np
import pytest

from velocity.model.stitching import disjoint_windows, plan_windows, stitch


pytestmark = pytest.mark.usefixtures("single_threaded")


def slot_values(plan) -> np.ndarray:
    """Per-window values that encode (window, position), so stitching's choice can be read back."""
    w, l = len(plan.starts), plan.length
    return np.arange(w)[:, None] * 1000 + np.arange(l)[None, :]


@pytest.mark.parametrize("n_notes", [1, 5, 127, 128, 129, 191, 192, 193, 255, 256, 300, 1000, 1001])
def test_every_note_gets_exactly_one_prediction_from_a_window_holding_it(n_notes):
    plan = plan_windows(n_notes, length=128, step=64)
    values = stitch(slot_values(plan), plan)
    assert values.shape == (n_notes,)
    window, pos = values // 1000, values % 1000
    # The chosen slot really holds that note, and no slot is used twice.
    np.testing.assert_array_equal(plan.starts[window] + pos, np.arange(n_notes))
    assert len(set(zip(window.tolist(), pos.tolist()))) == n_notes
    rows = plan.window_rows()
    np.testing.assert_array_equal(rows[window, pos], np.arange(n_notes))


def test_note_takes_the_window_where_it_sits_nearest_the_centre():
    plan = plan_windows(256, length=128, step=64)
    np.testing.assert_array_equal(plan.starts, [0, 64, 128])
    owner = plan.owner_window
    # Window 0 owns notes up to where window 1 has them nearer its centre.
    # Note 95: pos 95 in w0 (distance |190-127|=63), pos 31 in w1 (|62-127|=65) -> w0.
    # Note 96: pos 96 in w0 (65), pos 32 in w1 (63) -> w1.
    assert owner[95] == 0 and owner[96] == 1
    assert owner[159] == 1 and owner[160] == 2
    assert (owner[:96] == 0).all() and (owner[96:160] == 1).all() and (owner[160:] == 2).all()
    # Interior notes never come from the first or last quarter of a window.
    middle = (owner > 0) & (owner < 2)
    assert plan.owner_pos[middle].min() >= 32 and plan.owner_pos[middle].max() <= 95


def test_ties_go_to_the_earlier_window():
    # length 4, step 1: note 2 sits at pos 2 of window 0 and pos 1 of window 1, both 1 from the centre 1.5.
    plan = plan_windows(6, length=4, step=1)
    np.testing.assert_array_equal(plan.starts, [0, 1, 2])
    assert plan.owner_window[2] == 0 and plan.owner_pos[2] == 2
    assert plan.owner_window[3] == 1 and plan.owner_pos[3] == 2


def test_short_piece_is_one_padded_window():
    plan = plan_windows(5, length=128, step=64)
    np.testing.assert_array_equal(plan.starts, [0])
    np.testing.assert_array_equal(plan.owner_window, np.zeros(5))
    np.testing.assert_array_equal(plan.owner_pos, np.arange(5))
    rows = plan.window_rows()
    assert rows.shape == (1, 128)
    np.testing.assert_array_equal(rows[0, :5], np.arange(5))
    assert (rows[0, 5:] == -1).all()


def test_tail_window_ends_at_the_last_note_and_owns_it():
    n = 300  # regular windows start at 0, 64, 128 (ends 255); the tail window starts at 172
    plan = plan_windows(n, length=128, step=64)
    np.testing.assert_array_equal(plan.starts, [0, 64, 128, 172])
    assert plan.window_rows()[-1, -1] == n - 1
    assert plan.owner_window[-1] == 3 and plan.owner_pos[-1] == 127
    # The tail overlaps window 2 by 84 notes; the split between them follows the centre rule.
    tail_notes = np.flatnonzero(plan.owner_window == 3)
    assert tail_notes.min() > 128 and tail_notes.max() == n - 1


def test_empty_piece_and_bad_geometry():
    plan = plan_windows(0, length=8, step=4)
    assert len(plan.starts) == 0 and len(plan.owner_window) == 0
    with pytest.raises(ValueError, match="step"):
        plan_windows(10, length=8, step=9)
    with pytest.raises(ValueError, match="shape"):
        stitch(np.zeros((1, 8)), plan_windows(20, length=8, step=4))


# ---------------------------------------------------------------------------------------------
# Decoding whole pieces: batching and stitching never mix pieces or windows up


@pytest.fixture(scope="module")
def small_model():
    """An untrained but deterministic model: decoding is a pure function of its weights."""
    import torch

    from velocity.model.transformer import ModelConfig, build_model

    torch.manual_seed(0)
    return build_model(ModelConfig(src_vocab=40, tgt_vocab=131, layers=1, heads=2, d_model=16, d_ff=32, dropout=0.1, max_len=16, aligned=False,
                                   kind="encoder-decoder", features=())).eval()


def random_pieces(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(3, 40, size=n) for n in lengths]


def test_batched_pieces_decode_as_each_alone(small_model):
    from velocity.model.pieces import predict_pieces

    pieces = random_pieces([3, 16, 17, 40, 1])
    together = predict_pieces(small_model, pieces, length=16, step=8, batch_windows=3)
    for src, predicted in zip(pieces, together):
        alone = predict_pieces(small_model, [src], length=16, step=8, batch_windows=64)[0]
        assert predicted.shape == (len(src),)
        np.testing.assert_array_equal(predicted, alone)
        assert ((predicted >= 0) & (predicted <= 127)).all()


def test_batches_side_by_side_on_two_threads_give_what_one_thread_gives(small_model):
    """`make test` runs torch on one thread; `velocity predict` decodes its batches side by side, one
    per intra-op thread (velocity.model.runtime.batch_map): the same numbers, in order."""
    import torch

    from velocity.model.pieces import predict_pieces

    pieces = random_pieces([40, 17, 33], seed=1)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = predict_pieces(small_model, pieces, length=16, step=8, batch_windows=2)
        torch.set_num_threads(2)
        two = predict_pieces(small_model, pieces, length=16, step=8, batch_windows=2)
    finally:
        torch.set_num_threads(before)
    for alone, side_by_side in zip(one, two):
        np.testing.assert_array_equal(alone, side_by_side)


def test_each_note_takes_its_owner_windows_greedy_output(small_model):
    import torch

    from velocity.model.pieces import predict_pieces
    from velocity.model.stitching import piece_windows
    from velocity.model.transformer import greedy_decode

    src = random_pieces([37], seed=1)[0]
    plan = plan_windows(len(src), 16, 8)
    windows = piece_windows(src, plan)
    decoded = greedy_decode(small_model, torch.as_tensor(windows)).numpy() - 3  # target id -> velocity
    expected = [decoded[w, p] for w, p in zip(plan.owner_window, plan.owner_pos)]
    np.testing.assert_array_equal(predict_pieces(small_model, [src], 16, 8)[0], expected)


def test_decoding_fewer_steps_gives_the_start_of_full_greedy_decoding(small_model):
    import torch

    from velocity.model.transformer import greedy_decode

    src = torch.as_tensor(np.stack(random_pieces([16] * 5, seed=2)))
    src[-1, 9:] = 0  # a padded window
    full = greedy_decode(small_model, src)
    for steps in (1, 7, 12, 16):
        np.testing.assert_array_equal(greedy_decode(small_model, src, steps).numpy(), full[:, :steps].numpy())


def test_windows_decode_only_as_far_as_their_last_owned_note():
    from velocity.model.stitching import owned_steps

    # Inner windows own up to position 95, so 96 notes; window 2 (notes 128..255) hands notes from
    # 214 on to the tail window (172..299), where they sit nearer the centre; the tail owns its end.
    np.testing.assert_array_equal(owned_steps(plan_windows(300, 128, 64)), [96, 96, 86, 128])
    np.testing.assert_array_equal(owned_steps(plan_windows(5, 128, 64)), [5])  # short piece: its notes only


def test_disjoint_windows_hold_each_note_once_and_skip_only_overlaps():
    """Validation windows: of windows cut every half window over three pieces (one shorter than a
    window), every other one, each note at most once, and only notes of a piece's tail window left out."""
    lengths, length, step = [300, 40, 256], 128, 64
    offsets = np.cumsum([0] + lengths)
    piece_rows = [plan_windows(n, length, step).window_rows() for n in lengths]
    rows = np.concatenate([np.where(r >= 0, r + offset, -1) for r, offset in zip(piece_rows, offsets)])
    kept = disjoint_windows(rows)
    held = rows[kept][rows[kept] >= 0]
    assert len(held) == len(np.unique(held))  # no note twice
    missing = np.setdiff1d(np.arange(offsets[-1]), held)
    assert np.array_equal(missing, np.arange(256, 300))  # the first piece's tail window (172..299) overlaps: its last notes
    assert len(kept) == 2 + 1 + 2  # 0 and 128 of the first piece; the short piece's padded window; 0 and 128 of the third
