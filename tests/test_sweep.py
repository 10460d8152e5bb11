"""`velocity sweep`: a grid of real `dvc exp run`s, one Prefect task each, compared in a table artifact."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import ONE_THREAD, ROOT, SMALL_DEMO, deep_update, make_project

from velocity.pipeline.flows import PipelineError
from velocity.pipeline.sweep import experiment_name, grid_points, parse_grid

# The demo corpus with models so small that the whole pipeline takes seconds per stage.
TINY_PIPELINE: dict[str, Any] = deep_update(
    json.loads(json.dumps(SMALL_DEMO)),
    {
        "windows": {"length": 32, "step": 32},
        "model": {"layers": 1, "heads": 2, "d_model": 16, "d_ff": 32},
        "train": {
            "batch_size": 4, "epochs": 1, "max_steps": 4, "warmup": 2, "eval_every": 4,
            "checkpoint_every": 4, "eval_windows": 4, "device": "cpu", "ensemble": 1,
            "member_processes": 1,  # the score model's two members in turn: spawning a process costs more than they take
        },
        "score_train": {"train": {"max_steps": 4, "ensemble": 2}},  # the score model's ensemble, two members of 4 steps
        "timing_train": {"model": {"layers": 1, "heads": 2, "d_model": 16, "d_ff": 32},
                         "train": {"batch_size": 4, "max_steps": 4, "eval_every": 4, "checkpoint_every": 4, "device": "cpu"}},
        "timing_tree": {"max_iter": 5},
        "evaluate": {"batch_windows": 64, "segments": 1, "segment_notes": 32},
        "gbt": {"max_iter": 20, "max_train_notes": 1_000_000, "seed": 0},  # both trees (gbt, score_gbt): seconds, not a minute
        "performance_rnn": {
            "events": {"window": 32, "step": 32},
            "model": {"hidden_size": 16, "layers": 1},
            "train": {
                "steps": 4, "batch_size": 4, "eval_every": 4, "checkpoint_every": 4,
                "val_windows": 4, "device": "cpu",
            },
            "evaluate": {"device": "cpu"},
        },
    },
)


def tiny_params() -> dict[str, Any]:
    """TINY_PIPELINE limited to the sections params.yaml has (a section nobody reads would be an error)."""
    present = yaml.safe_load((ROOT / "params.yaml").read_text())
    return {name: section for name, section in TINY_PIPELINE.items() if name in present}


GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "velocity tests", "GIT_AUTHOR_EMAIL": "tests@velocity.invalid",
    "GIT_COMMITTER_NAME": "velocity tests", "GIT_COMMITTER_EMAIL": "tests@velocity.invalid",
}


def test_parse_grid_checks_keys_and_values(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("bins:\n  dstart: 3\nmodel:\n  d_model: 128\n")
    grid = parse_grid(["bins.dstart=3,5,7", "model.d_model=64,128"], params)
    assert grid == {"bins.dstart": ["3", "5", "7"], "model.d_model": ["64", "128"]}
    points = grid_points(grid)
    assert len(points) == 6 and points[0] == {"bins.dstart": "3", "model.d_model": "64"}
    assert experiment_name("sweep", points[1]) == "sweep-bins.dstart-3_model.d_model-128"
    assert experiment_name("sweep", {"a.b": "[1, 2]"}) == "sweep-a.b-_1_2"
    with pytest.raises(PipelineError, match="no param 'bins.dstrat' to sweep"):
        parse_grid(["bins.dstrat=3,5"], params)
    with pytest.raises(PipelineError, match="bad grid entry 'bins.dstart'"):
        parse_grid(["bins.dstart"], params)
    with pytest.raises(PipelineError, match="bad grid entry 'bins.dstart=3,'"):
        parse_grid(["bins.dstart=3,"], params)


@pytest.mark.slow
def test_sweep_runs_each_point_as_an_experiment_and_compares_them(
    prefect_harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    from velocity.pipeline.cli import main

    for key, value in {**GIT_IDENTITY, **ONE_THREAD}.items():
        monkeypatch.setenv(key, value)  # DVC commits each experiment; CI may have no git identity
    project = make_project(tmp_path / "project", tiny_params())
    subprocess.run(["git", "add", "-A"], cwd=project, check=True, capture_output=True)
    subprocess.run(["git", "commit", "-qm", "baseline"], cwd=project, check=True)

    assert main(["sweep", "--root", str(project), "--target", "train", "model.d_model=8,16"]) == 0
    out = capsys.readouterr().out
    names = ["sweep-model.d_model-8", "sweep-model.d_model-16"]
    assert all(name in out for name in names)

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["velocity-sweep"])), sort=ArtifactSort.CREATED_DESC
        )
    rows: list[dict[str, Any]] = json.loads(artifacts[0].data)
    assert [row["experiment"] for row in rows] == names
    assert [row["model.d_model"] for row in rows] == [8, 16]
    metric_columns = [column for column in rows[0] if column not in ("experiment", "model.d_model")]
    assert metric_columns, rows  # train's dvclive metrics made it into the table
    assert all(isinstance(rows[i][column], (int, float)) for i in range(2) for column in metric_columns)
    assert rows[0] != rows[1]

    listed = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "list", "--name-only"], cwd=project, capture_output=True, text=True, check=True
    ).stdout.split()
    assert sorted(listed) == sorted(names)
