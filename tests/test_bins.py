import numpy as np
import pandas as pd
import pytest
from sklearn.preprocessing import KBinsDiscretizer

from velocity.stages.bins import BinsParams, learn_bins
from velocity.model.codec import bin_index


def train_notes(n: int = 5000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "dstart": rng.exponential(0.2, n),
            "duration": rng.gamma(2.0, 0.15, n),
            "velocity": rng.integers(20, 110, n).astype(np.int16),
        }
    )


def test_edges_are_the_train_quantiles():
    notes = train_notes()
    bins = learn_bins(notes, BinsParams(dstart=3, duration=4, velocity=5, fixed_edges=None))
    for name, k in [("dstart", 3), ("duration", 4), ("velocity", 5)]:
        values = notes[name].to_numpy(dtype=float)
        assert bins[name] == np.percentile(values, np.linspace(0, 100, k + 1)).tolist()
        assert len(bins["share"][name]) == k
        assert sum(bins["share"][name]) == pytest.approx(1.0, abs=1e-5)


def test_bin_index_matches_kbinsdiscretizer_transform():
    notes = train_notes()
    bins = learn_bins(notes, BinsParams(dstart=3, duration=3, velocity=3, fixed_edges=None))
    probe = np.concatenate([notes["dstart"].to_numpy(), [-1.0, 0.0, 1e6], bins["dstart"]])
    kbd = KBinsDiscretizer(n_bins=3, encode="ordinal", strategy="quantile", quantile_method="linear", subsample=None)
    kbd.fit(notes[["dstart"]].to_numpy())
    expected = kbd.transform(probe.reshape(-1, 1))[:, 0].astype(int)
    np.testing.assert_array_equal(bin_index(probe, bins["dstart"]), expected)


def test_quantile_bins_share_notes_about_equally():
    bins = learn_bins(train_notes(30000), BinsParams(dstart=3, duration=3, velocity=3, fixed_edges=None))
    assert bins["share"]["dstart"] == pytest.approx([1 / 3] * 3, abs=0.01)


def test_fixed_edges_override_learning():
    seed_edges = {"dstart": [0.0, 0.048177, 0.5, 100.0], "velocity": [0.0, 57.0, 74.0, 128.0]}
    bins = learn_bins(train_notes(), BinsParams(dstart=5, duration=3, velocity=5, fixed_edges=seed_edges))
    assert bins["dstart"] == seed_edges["dstart"]
    assert bins["velocity"] == seed_edges["velocity"]
    assert len(bins["duration"]) == 4  # still learned
    assert bin_index([56.9, 57.0, 73.9, 74.0], bins["velocity"]).tolist() == [0, 1, 1, 2]


def test_bad_fixed_edges_and_degenerate_features_are_clear_errors():
    notes = train_notes()
    with pytest.raises(ValueError, match="fixed_edges.velocity"):
        learn_bins(notes, BinsParams(3, 3, 3, fixed_edges={"velocity": [0.0, 80.0, 50.0]}))
    with pytest.raises(ValueError, match="unknown feature 'pitch'"):
        learn_bins(notes, BinsParams(3, 3, 3, fixed_edges={"pitch": [0.0, 1.0]}))
    flat = notes.assign(velocity=64)
    with pytest.raises(ValueError, match="bins.velocity"):
        learn_bins(flat, BinsParams(3, 3, 3, fixed_edges=None))


def test_a_corpus_of_one_repeated_pattern_stops_the_stage_with_one_clear_line(tmp_path):
    """The bins stage on degenerate data: exit 1 and one line naming the param to change, no traceback."""
    import subprocess
    import sys
    from pathlib import Path

    import yaml

    root = Path(__file__).resolve().parents[1]
    n = 600
    notes = pd.DataFrame({
        "piece_id": "loop", "pitch": np.tile([60, 64], n // 2).astype(np.int16), "start": np.arange(n) * 0.25,
        "dstart": np.full(n, 0.25), "duration": np.tile([0.2, 0.3, 0.4], n // 3), "velocity": np.tile([50, 70, 90], n // 3).astype(np.int16),
        "pedal": np.zeros(n, dtype=np.int8),
    })  # fmt: skip
    notes.to_parquet(tmp_path / "train.parquet")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"bins": {"dstart": 3, "duration": 3, "velocity": 3, "fixed_edges": None}, "features": {}}))
    proc = subprocess.run(
        [sys.executable, "-m", "velocity.stages.bins", "train.parquet", "bins.json"], cwd=tmp_path, capture_output=True, text=True,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("train.parquet: bins.dstart: only 1 distinct quantile bins exist for 3 requested")
    assert not (tmp_path / "bins.json").exists()
