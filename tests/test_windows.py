import numpy as np
import pandas as pd
import pytest

from velocity.params import ParamsError
from conftest import params_section
from velocity.model.codec import PAD, id_to_velocity, tokenize
from velocity.stages.vocab import build_vocab
from velocity.model.codec import window_starts
from velocity.stages.windows import WindowsParams, make_windows

BINS = {"dstart": [0, 0.05, 0.5, 9], "duration": [0, 0.15, 0.45, 9], "velocity": [0, 57, 74, 128]}
VOCAB = build_vocab(BINS, velocity_hint=False)


def piece(piece_id: str, n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "piece_id": piece_id,
            "pitch": rng.integers(21, 109, n).astype(np.int16),
            "dstart": rng.exponential(0.2, n),
            "duration": rng.gamma(2.0, 0.15, n),
            "velocity": rng.integers(1, 128, n).astype(np.int16),
        }
    )


def test_window_starts_step_tail_and_short_pieces():
    assert window_starts(256, 128, 64) == [0, 64, 128]
    assert window_starts(300, 128, 64, tail="last") == [0, 64, 128, 172]  # last window ends at note 299
    assert window_starts(300, 128, 64, tail="drop") == [0, 64, 128]
    assert window_starts(128, 128, 64) == [0]
    assert window_starts(50, 128, 64, short="pad") == [0]
    assert window_starts(50, 128, 64, short="drop") == []
    assert window_starts(0, 128, 64) == []


def test_windows_shapes_overlap_and_never_cross_pieces():
    notes = pd.concat([piece("a", 300, 0), piece("b", 50, 1), piece("c", 128, 2)], ignore_index=True)
    w = make_windows(notes, BINS, VOCAB, params_section(WindowsParams, "windows", length=128, step=64))
    assert w.src.shape == w.tgt.shape == w.rows.shape == (4 + 1 + 1, 128)
    assert w.src.dtype == np.int16 and w.rows.dtype == np.int32
    # Consecutive windows of piece a overlap by length - step notes.
    np.testing.assert_array_equal(w.rows[0, 64:], w.rows[1, :64])
    # The tail window ends at a's last note; b's window is padded after its 50 notes.
    assert w.rows[3, -1] == 299
    assert (w.rows[4, :50] == np.arange(300, 350)).all() and (w.rows[4, 50:] == -1).all()
    assert (w.src[4, 50:] == PAD).all() and (w.tgt[4, 50:] == PAD).all()
    for window in w.rows:
        ids = set(notes["piece_id"].to_numpy()[window[window >= 0]])
        assert len(ids) == 1
    # Every note is in some window, and window tokens are the notes' tokens.
    assert set(np.unique(w.rows[w.rows >= 0])) == set(range(len(notes)))
    src, tgt = tokenize(notes, BINS, VOCAB)
    real = w.rows >= 0
    np.testing.assert_array_equal(w.src[real], src[w.rows[real]])
    np.testing.assert_array_equal(id_to_velocity(w.tgt[real]), notes["velocity"].to_numpy()[w.rows[real]])


def test_drop_policies_leave_out_tails_and_short_pieces():
    notes = pd.concat([piece("a", 300, 0), piece("b", 50, 1)], ignore_index=True)
    w = make_windows(notes, BINS, VOCAB, params_section(WindowsParams, "windows", length=128, step=64, tail="drop", short="drop"))
    assert len(w.rows) == 3 and w.rows.max() == 255


def test_bad_window_params_are_named():
    with pytest.raises(ParamsError, match="windows.step"):
        params_section(WindowsParams, "windows", length=128, step=200)
    with pytest.raises(ParamsError, match="windows.tail"):
        params_section(WindowsParams, "windows", tail="wrap")


def test_non_contiguous_pieces_are_refused():
    notes = pd.concat([piece("a", 10, 0), piece("b", 10, 1), piece("a", 10, 2)], ignore_index=True)
    with pytest.raises(ValueError, match="contiguous"):
        make_windows(notes, BINS, VOCAB, params_section(WindowsParams, "windows"))
