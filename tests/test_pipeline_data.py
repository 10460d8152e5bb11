"""End to end: real `dvc repro windows` in throwaway project copies, on the demo corpus and on
real MAESTRO performances."""

import json

import numpy as np
import pandas as pd
import pytest

from conftest import dvc, make_project, set_params

pytestmark = pytest.mark.slow

NOTE_COLUMNS = ["piece_id", "composer", "title", "split", "source", "pitch", "start", "end", "duration", "dstart", "velocity", "pedal"]
DATA_STAGES = {"download", "scores", "extract", "bins", "vocab", "windows"}  # extract also reads the scores' ASAP-only performances


def ran_stages(output: str) -> set[str]:
    """Stages whose command `dvc repro` ran (not the ones it skipped as unchanged)."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def check_data_outputs(project, length=128):
    stats = json.loads((project / "data/windows/stats.json").read_text())
    bins = json.loads((project / "data/bins.json").read_text())
    vocab = json.loads((project / "data/vocab.json").read_text())
    assert (len(vocab["src"]), len(vocab["tgt"])) == (795, 131)

    train = pd.read_parquet(project / "data/notes/train.parquet")
    assert list(train.columns) == NOTE_COLUMNS
    assert train["split"].eq("train").all()
    for name in ("dstart", "duration", "velocity"):
        expected = np.percentile(train[name].to_numpy(dtype=float), [0, 100 / 3, 200 / 3, 100])
        np.testing.assert_allclose(bins[name], expected, rtol=1e-12)

    for split in ("train", "validation", "test"):
        notes = pd.read_parquet(project / f"data/notes/{split}.parquet")
        src = np.load(project / f"data/windows/{split}_src.npy", mmap_mode="r")
        rows = np.load(project / f"data/windows/{split}_rows.npy", mmap_mode="r")
        assert src.shape == rows.shape == (stats[split]["windows"], length)
        assert stats[split]["notes"] == len(notes) > 0
        assert stats[split]["notes_in_windows"] == len(notes)  # tail: last, short: pad cover every note
    return stats


def test_demo_pipeline_reruns_only_what_changed(project):
    first = dvc(project, "repro", "windows")
    assert ran_stages(first.stdout) == DATA_STAGES
    check_data_outputs(project)

    second = dvc(project, "repro", "windows")
    assert ran_stages(second.stdout) == set()
    assert "up to date" in dvc(project, "status", "windows").stdout

    set_params(project, {"bins": {"dstart": 5}})
    third = dvc(project, "repro", "windows")
    assert ran_stages(third.stdout) == {"bins", "vocab", "windows"}
    vocab = json.loads((project / "data/vocab.json").read_text())
    assert len(vocab["src"]) == 88 * 5 * 3 + 3


def test_real_maestro_tiny_archive(tmp_path, tiny_zip):
    project = make_project(tmp_path / "project", {"data": {"source": str(tiny_zip)}})
    dvc(project, "repro", "windows")
    stats = check_data_outputs(project)
    # The tiny archive: 6 train, 2 validation and 2 test performances (see ../shared/data/README.md);
    # the demo scores beside it are not its scores, so extract reads no ASAP-only performance of theirs.
    assert [stats[s]["pieces"] for s in ("train", "validation", "test")] == [6, 2, 2]
    assert sum(stats[s]["notes"] for s in ("train", "validation", "test")) == 14289
    assert "up to date" in dvc(project, "status", "windows").stdout
