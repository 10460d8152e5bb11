"""Sharing results through a DVC remote: a teammate pulls what was computed instead of recomputing it."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from conftest import dvc, make_project

GIT_IDENTITY = {"GIT_AUTHOR_NAME": "ci", "GIT_AUTHOR_EMAIL": "ci@example.com", "GIT_COMMITTER_NAME": "ci", "GIT_COMMITTER_EMAIL": "ci@example.com"}


def git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


@pytest.mark.slow
def test_a_fresh_clone_pulls_the_outputs_and_has_nothing_to_rerun(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in GIT_IDENTITY.items():
        monkeypatch.setenv(key, value)
    project = make_project(tmp_path / "project", {"data": {"source": "demo", "demo_pieces": 10}, "extract": {"workers": 1}})
    dvc(project, "repro", "windows")
    remote = tmp_path / "remote"  # a shared folder; `dvc remote add -d shared s3://bucket/path` works the same with dvc-s3
    dvc(project, "remote", "add", "-d", "shared", str(remote))
    git(project, "add", "-A")
    git(project, "commit", "-qm", "pipeline up to windows")
    dvc(project, "push")
    assert any(remote.rglob("*")), "dvc push wrote nothing to the remote"

    teammate = tmp_path / "teammate"
    git(tmp_path, "clone", "-q", str(project), str(teammate))
    assert not (teammate / "data/windows").exists()  # data travels through the remote, not git
    dvc(teammate, "pull", "--with-deps", "windows")  # after a whole `dvc repro`: plain `dvc pull`
    assert (teammate / "data/windows/train_src.npy").is_file()
    assert "up to date" in dvc(teammate, "status", "--with-deps", "windows").stdout
    rerun = dvc(teammate, "repro", "windows").stdout
    assert "Running stage" not in rerun and "didn't change" in rerun
